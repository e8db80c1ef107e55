"""Every ```python block in README.md and docs/*.md runs (per file, in order, one namespace)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


ALL_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FILES = [p for p in ALL_FILES if _blocks(p)]


def test_most_docs_have_runnable_snippets() -> None:
    assert len(FILES) >= 8, [p.name for p in FILES]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_python_blocks_run(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = _blocks(path)
    monkeypatch.chdir(tmp_path)  # snippets may write files
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{path.name}[block {i}]", "exec"), namespace)


def test_readme_has_two_quick_start_commands() -> None:
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", quick, flags=re.S)[0].strip().splitlines()
    assert [c.split("#")[0].strip() for c in commands] == ["./dev.sh main", "./dev.sh test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./dev.sh test" in ci
