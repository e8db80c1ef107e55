"""The documentation site (mkdocs.yml, docs/): every public name has a reference entry, and it renders.

The reference names objects only through ``gatattn.<name>`` (the modules inside the package may
move), so an entry is checked against ``gatattn.__all__``, and the built HTML must carry an anchor
for each name.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

import gatattn

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"
DIRECTIVE = re.compile(r"^::: ([\w.]+)\s*$", flags=re.M)
PUBLIC = sorted(set(gatattn.__all__) - {"__version__"})


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


def test_strict_build_renders_every_name_and_the_shapes_sections(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr

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
    assert len(re.findall(r'src="\.\./img/patterns_\w+\.png"', patterns)) == 14
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
