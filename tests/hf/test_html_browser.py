"""The HTML view in a real headless browser (Chromium through Selenium).

Skips cleanly without selenium, Chromium or chromedriver (README: "Browser test"), unless
``GATATTN_REQUIRE_BROWSER=1`` (set by ``.ci/run``, which installs them): then it fails. The
browser is the ``driver`` fixture of tests/conftest.py. The page comes
from a converted BERT whose graph is swapped for a window plus [CLS], so the drawn edges are a
strict subset of all token pairs and their count says that the graph is what is drawn.
Set ``GATATTN_SCREENSHOT=<file.png>`` to keep the screenshot.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import gatattn as ga

transformers = pytest.importorskip("transformers")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402


def _graph_fn(lengths: list[int]) -> ga.TokenGraph:
    return ga.window_graph(window=1, lengths=lengths) | ga.global_graph(
        global_tokens=[0], lengths=lengths
    )


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory, hf: SimpleNamespace) -> tuple[Path, Any]:
    conv = ga.convert(hf.build("bert"))
    res = ga.hf.attention_graphs(
        conv, "the cat sat on the mat.", tokenizer=hf.tokenizer(), graph_fn=_graph_fn
    )
    path = tmp_path_factory.mktemp("html") / "view.html"
    ga.plot.attention_html(res.attentions, res.tokens, path=path, title="BERT, window + [CLS]")
    return path, res


def test_chromium_runs_with_the_flags_it_needs(
    driver: Any, chromium_flags: tuple[str, ...]
) -> None:
    """As root in a container without a network: chrome://version shows the command line."""
    driver.get("chrome://version")
    command_line = driver.find_element(By.ID, "command_line").text
    missing = [f for f in chromium_flags if f not in command_line]
    assert not missing, command_line
    assert "--user-data-dir=" in command_line


def _count(d: Any, css: str) -> int:
    return len(d.find_elements(By.CSS_SELECTOR, css))


def test_head_view_draws_the_graph_and_highlights_on_hover(
    driver: Any, page: tuple[Path, Any]
) -> None:
    path, res = page
    driver.get(path.as_uri())
    last = res.attentions[-1]
    n, e = len(res.tokens), last.edge_index.size(1)
    assert n == 9 and e < n * n  # a sparse graph: window + [CLS]
    assert _count(driver, "#head-svg line.edge") == e
    assert _count(driver, "#head-svg text.tok.q") == _count(driver, "#head-svg text.tok.k") == n
    # hover query "sat" (node 3): its in-edges light up, with one value label each
    sat = driver.find_element(By.CSS_SELECTOR, "#head-svg text.tok.q[data-i='3']")
    assert sat.text == "sat"
    ActionChains(driver).move_to_element(sat).perform()
    in_degree = int((last.edge_index[1] == 3).sum())
    assert _count(driver, "#head-svg line.edge.hl") == in_degree == 4  # [CLS], cat, sat, on
    assert _count(driver, "#head-svg text.val") == in_degree
    # hover key [CLS] (node 0): every query attends to it
    cls = driver.find_element(By.CSS_SELECTOR, "#head-svg text.tok.k[data-j='0']")
    ActionChains(driver).move_to_element(cls).perform()
    assert _count(driver, "#head-svg line.edge.hl") == int((last.edge_index[0] == 0).sum()) == n
    shot = Path(os.environ.get("GATATTN_SCREENSHOT", path.with_suffix(".png")))
    ActionChains(driver).move_to_element(sat).perform()
    assert driver.save_screenshot(str(shot)) and shot.read_bytes()[:4] == b"\x89PNG"
    ActionChains(driver).move_by_offset(0, 300).perform()  # leave: nothing stays highlighted
    assert _count(driver, "#head-svg line.edge.hl") == 0


def test_layer_head_and_value_choice(driver: Any, page: tuple[Path, Any]) -> None:
    path, res = page
    driver.get(path.as_uri())
    Select(driver.find_element(By.ID, "layer")).select_by_value("0")
    Select(driver.find_element(By.ID, "head")).select_by_value("1")
    att = res.attentions[0]
    w = att.weights[:, 1]
    lines = driver.find_elements(By.CSS_SELECTOR, "#head-svg line.edge")
    assert len(lines) == att.edge_index.size(1)
    pos = {(s, t): k for k, (s, t) in enumerate(zip(*att.edge_index.tolist()))}
    for line in lines[:12]:  # opacity = Attn_ij / max Attn of the drawn head
        k = pos[(int(line.get_attribute("data-j")), int(line.get_attribute("data-i")))]
        assert abs(float(line.get_attribute("stroke-opacity")) - float(w[k] / w.max())) <= 1e-3
    assert "Layer 0, head 1" in driver.find_element(By.ID, "summary").text
    Select(driver.find_element(By.ID, "which")).select_by_value("score")
    assert "α" in driver.find_element(By.ID, "summary").text
    assert _count(driver, "#head-svg line.edge") == att.edge_index.size(1)


def test_model_view_grid(driver: Any, page: tuple[Path, Any]) -> None:
    path, res = page
    driver.get(path.as_uri())
    driver.find_element(By.ID, "tab-model").click()
    layers, heads = len(res.attentions), res.attentions[0].num_heads
    assert _count(driver, "#model canvas") == layers * heads == 8
    driver.find_element(By.CSS_SELECTOR, "#model canvas[data-layer='1'][data-head='2']").click()
    assert driver.find_element(By.ID, "head-view").is_displayed()
    assert "Layer 1, head 2" in driver.find_element(By.ID, "summary").text
    errors = [m for m in driver.get_log("browser") if m["level"] == "SEVERE"]
    assert not errors, errors
    assert torch.is_tensor(res.attentions[0].weights)
