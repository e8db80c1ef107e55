"""The documentation site (mkdocs.yml, docs/): every public name has a reference entry, and it renders.

The reference names objects only through ``gatattn.<name>`` (the modules inside the package may
move), so an entry is checked against ``gatattn.__all__``, and the built HTML must carry an anchor
for each name.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

import gatattn

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"
DIRECTIVE = re.compile(r"^::: ([\w.]+)\s*$", flags=re.M)
PUBLIC = sorted(set(gatattn.__all__) - {"__version__"})

_spec = importlib.util.spec_from_file_location("docs_math_hook", DOCS / "hooks" / "math.py")
assert _spec is not None and _spec.loader is not None
_math_hook = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_math_hook)
math_to_arithmatex, on_post_page = _math_hook.math_to_arithmatex, _math_hook.on_post_page


def _directives() -> dict[str, list[str]]:
    """Identifier -> the reference pages that render it."""
    found: dict[str, list[str]] = {}
    for page in sorted(REFERENCE.glob("*.md")):
        for ident in DIRECTIVE.findall(page.read_text()):
            found.setdefault(ident, []).append(page.name)
    return found


def _nav_files(nav: object) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [f for item in nav for f in _nav_files(item)]
    if isinstance(nav, dict):
        return [f for value in nav.values() for f in _nav_files(value)]
    return []


def test_every_public_name_has_exactly_one_reference_entry() -> None:
    found = _directives()
    missing = [n for n in PUBLIC if f"gatattn.{n}" not in found]
    assert missing == [], (
        f"names in gatattn.__all__ without a '::: gatattn.<name>' entry: {missing}"
    )
    twice = {k: v for k, v in found.items() if len(v) > 1}
    assert twice == {}, twice


def test_reference_uses_only_top_level_paths() -> None:
    # `::: gatattn.layer.GraphAttention` would break when the module moves; only gatattn.<name>.
    bad = [ident for ident in _directives() if ident.removeprefix("gatattn.") not in PUBLIC]
    assert bad == [], f"reference entries that are not gatattn.<name in __all__>: {bad}"


def test_version_is_described() -> None:
    text = (REFERENCE / "index.md").read_text()
    assert "`gatattn.__version__`" in text
    assert f'"{gatattn.__version__}"' in text


def test_every_page_is_in_the_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_files(config["nav"])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages
    assert nav[0] == "index.md"
    assert config["plugins"][0] == "search"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once with ``mkdocs build --strict`` (no warning either)."""
    site = tmp_path_factory.mktemp("site") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    return site


def test_strict_build_renders_every_name_and_the_shapes_sections(site: Path) -> None:
    html = {p: p.read_text() for p in (site / "reference").rglob("index.html")}
    ids = {i for text in html.values() for i in re.findall(r'id="(gatattn\.[\w.]+)"', text)}
    assert {f"gatattn.{n}" for n in PUBLIC} <= ids
    # Members of classes and modules are rendered too (not only the headings).
    assert {"gatattn.GraphAttention.forward", "gatattn.TokenGraph.to_dense_mask"} <= ids
    assert {"gatattn.plot.heatmap", "gatattn.analysis.pagerank", "gatattn.pretrained.minilm"} <= ids

    layers = (site / "reference" / "layers" / "index.html").read_text()
    # "Shapes:" is not a standard Google section: it must come out as its own titled block,
    # not as the literal text "Shapes:" inside a paragraph.
    assert re.search(r'<details class="shapes"[^>]*>\s*<summary>Shapes</summary>', layers)
    assert "edge_index [2, E]" in layers
    all_html = "".join(html.values())
    assert "Shapes:" not in re.sub(r"<[^>]+>", "", all_html)

    index = (site / "index.html").read_text()
    for png in (
        "index_complete_graph.png",
        "demo_attention_before.png",
        "demo_attention_after.png",
    ):
        assert f'src="img/{png}"' in index
        assert (site / "img" / png).stat().st_size > 10_000
    patterns = (site / "patterns" / "index.html").read_text()
    gallery = sorted((Path(__file__).parents[1] / "docs" / "img").glob("patterns_*.png"))
    assert len(gallery) >= 15  # one picture per builder, sink_window included
    assert len(re.findall(r'src="\.\./img/patterns_\w+\.png"', patterns)) == len(gallery)
    assert (site / "search" / "search_index.json").stat().st_size > 10_000


def test_readme_and_changelog_links_point_to_files() -> None:
    # README.md is read on the repository page, outside the site: its relative links must resolve.
    for name in ("README.md", "CHANGELOG.md"):
        text = (ROOT / name).read_text()
        targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
        local = [t for t in targets if not t.startswith(("http://", "https://"))]
        assert all((ROOT / t).is_file() for t in local), [
            t for t in local if not (ROOT / t).is_file()
        ]
        if name == "README.md":
            assert "docs/reference/index.md" in local and "CHANGELOG.md" in local


# ------------------------------------------------------------------ maths
def _section(html: str, ident: str) -> str:
    """The HTML of one object's entry, from its heading to the next object of its level."""
    start = html.index(f'id="{ident}"')
    end = html.find('<div class="doc doc-object doc-class">', start)
    return html[start : end if end > 0 else len(html)]


def test_docstring_maths_is_marked_for_katex_and_no_directive_is_left(site: Path) -> None:
    layers = (site / "reference" / "layers" / "index.html").read_text()
    entry = _section(layers, "gatattn.GraphAttention")
    blocks = re.findall(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', entry, flags=re.S)
    assert any(r"\mathrm{out}_i" in b and r"\sum_{j \in N(i)}" in b for b in blocks), entry[:3000]
    pages = {p: p.read_text() for p in site.rglob("*.html")}
    assert not [p for p, text in pages.items() if ".. math::" in text]
    assert sum(text.count('class="arithmatex"') for text in pages.values()) >= 30
    # KaTeX is served from the site itself: the page loads it, every font its CSS names is there
    for asset in ("katex/katex.min.js", "katex/contrib/auto-render.min.js", "katex-init.js"):
        assert f'src="../../assets/{asset}"' in layers and (site / "assets" / asset).is_file()
    css = (site / "assets" / "katex" / "katex.min.css").read_text()
    fonts = re.findall(r"url\(([^)]+)\)", css)
    assert len(fonts) == 20 and all((site / "assets" / "katex" / f).is_file() for f in fonts)
    assert "MIT" in (site / "assets" / "katex" / "LICENSE").read_text()


def test_katex_renders_the_maths_in_a_browser(site: Path, driver: Any) -> None:
    """Offline, from file://: every marked block becomes KaTeX markup, none is an error."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get((site / "reference" / "layers" / "index.html").as_uri())
    wait = WebDriverWait(driver, 20)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".arithmatex .katex-display"))
    marked = driver.find_elements(By.CSS_SELECTOR, "div.arithmatex")
    shown = driver.find_elements(By.CSS_SELECTOR, "div.arithmatex .katex-display")
    assert len(marked) == len(shown) >= 3
    assert not driver.find_elements(By.CSS_SELECTOR, ".katex-error")
    entry = driver.find_element(By.ID, "gatattn.GraphAttention").find_element(By.XPATH, "..")
    tex = [
        a.get_attribute("textContent")
        for a in entry.find_elements(By.CSS_SELECTOR, ".katex annotation")
    ]
    assert any(r"\mathrm{out}_i" in t for t in tex), tex
    # nothing of KaTeX failed to load (the theme's web fonts and search index may, offline)
    log = driver.get_log("browser")
    errors = [e for e in log if e["level"] == "SEVERE" and "katex" in e["message"].lower()]
    assert not errors, errors


def test_math_directives_become_arithmatex_blocks() -> None:
    text = (
        "Scaled dot.\n\n.. math:: \\alpha_{ij} = q_i k_j\nwhich is it.\n\n"
        "Then:\n\n  .. math::\n      a = b\n\n      c = d\n\n  Args after."
    )
    assert math_to_arithmatex(text) == (
        "Scaled dot.\n\n$$\n\\alpha_{ij} = q_i k_j\n$$\n\nwhich is it.\n\n"
        "Then:\n\n  $$\n  a = b\n\n  c = d\n  $$\n\n  Args after."
    )


def test_a_page_with_a_directive_left_fails_the_build() -> None:
    from mkdocs.exceptions import PluginError

    page = SimpleNamespace(file=SimpleNamespace(src_uri="reference/layers.md"))
    ok = "<p>x</p><pre><code>.. math:: shown as code</code></pre>"
    assert on_post_page(ok, page, None) == ok
    with pytest.raises(PluginError, match=r"reference/layers.md: unrendered .*\.\. math::"):
        on_post_page("<p>.. math:: a = b</p>", page, None)
