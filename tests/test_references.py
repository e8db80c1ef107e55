"""Every repository path named in a docstring, a comment or a docs page exists.

Read with ``ast`` and ``tokenize`` (nothing is imported): the docstrings and comments of every
Python file under gatattn/, tests/, examples/, benchmarks/ and docs/, and every Markdown page
(docs/, README.md, benchmarks/README.md; not CHANGELOG.md, whose history names files that have
since moved). Two kinds of names are checked:

- a path from the repository root, ``gatattn/...``, ``tests/...``, ``docs/...``, ``examples/...``
  or ``benchmarks/...`` (a file or a folder; a ``*`` pattern must match something);
- a bare file name, ``ops.py`` or ``math.md``, outside Markdown code blocks. A ``.py`` name
  resolves in the folder of the file that names it or a folder above, anywhere in the package
  (``ops.py`` is gatattn/kernels/ops.py), or next to a path named in the same file
  (``tests/interop/test_mha.py``, ``test_bias_kv.py``). A ``.md`` name resolves next to the file,
  at the root or in docs/. A bare name that is the last part of a path named in the same file
  (``test/nn/test_multihead_attention.py``, torch's) stands for that path.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP = ("gatattn", "tests", "docs", "examples", "benchmarks")
SKIP = {"CHANGELOG.md"}

REPO_PATH = re.compile(r"(?<![\w./-])((?:gatattn|tests|docs|examples|benchmarks)/[\w./*-]*[\w*/])")
ANY_PATH = re.compile(r"[\w.-]+(?:/[\w.*-]+)+")
BARE = re.compile(r"(?<![\w./-])([A-Za-z_][\w-]*\.(?:py|md))(?![\w/])")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def sources(root: Path) -> Iterator[Path]:
    """The Python files and Markdown pages whose text is checked."""
    yield from (p for p in root.glob("*.md") if p.name not in SKIP)
    for top in TOP:
        for path in sorted((root / top).rglob("*")):
            if path.suffix in (".py", ".md") and "__pycache__" not in path.parts:
                yield path


def prose(path: Path) -> str:
    """A Markdown page, or the docstrings and comments of a Python file, one block per line."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        return text
    parts = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                parts.append(doc)
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            parts.append(tok.string)
    return "\n".join(parts)


def _exists(root: Path, name: str) -> bool:
    return any(root.glob(name)) if "*" in name else (root / name).exists()


def broken_references(root: Path) -> list[str]:
    """``"<file>: <name>"`` for every path or bare file name that names nothing in ``root``."""
    package_files = {p.name for p in (root / "gatattn").rglob("*.py")}
    broken = []
    for path in sources(root):
        text = prose(path)
        where = path.relative_to(root).as_posix()
        named = [m.group(1).rstrip(".") for m in REPO_PATH.finditer(text)]
        broken += [f"{where}: {name}" for name in named if not _exists(root, name)]
        tails = {p.rstrip(".").rsplit("/", 1)[-1] for p in ANY_PATH.findall(text)}
        near = {(root / p).parent for p in named} | {path.parent, *path.parents}
        bare_text = FENCE.sub("", text) if path.suffix == ".md" else text
        for m in BARE.finditer(bare_text):
            name = m.group(1)
            if name in tails:
                continue  # the last part of a path named in full (checked above if it is ours)
            if name.endswith(".py"):
                ok = name in package_files or any((d / name).exists() for d in near)
            else:
                ok = any((d / name).exists() for d in (path.parent, root, root / "docs"))
            if not ok:
                broken.append(f"{where}: {name}")
    return broken


def test_every_named_path_exists() -> None:
    broken = broken_references(ROOT)
    assert not broken, "references to files that do not exist:\n" + "\n".join(broken)


def test_the_check_finds_planted_broken_references(tmp_path: Path) -> None:
    """The same check on a tiny fake repository: each kind of broken name is found, and each
    kind of good one is accepted."""
    (tmp_path / "gatattn" / "kernels").mkdir(parents=True)
    (tmp_path / "tests" / "kernels").mkdir(parents=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / "gatattn" / "kernels" / "ops.py").write_text('"""Edge kernels."""\n')
    (tmp_path / "docs" / "math.md").write_text("# Maths\n")
    (tmp_path / "gatattn" / "graph.py").write_text(
        '"""TokenGraph (DESIGN.md, "Conventions"; docs/math.md)."""\n'
        "# see docs/missing.md and ops.py\n"
        "def f() -> None:\n"
        '    """Tested in tests/test_equivalence.py and tests/kernels/."""\n'
        '    s = "gatattn/not_a_comment.py"  # code strings are not prose\n'
    )
    (tmp_path / "tests" / "kernels" / "test_ops.py").write_text(
        '"""The kernels (gatattn/ops.py; gatattn/kernels/ops.py; old layer.py).\n\n'
        "One test per behaviour of torch's test/nn/test_multihead_attention.py.\n"
        '"""\n'
        "# ---- test_multihead_attention.py\n"
    )
    (tmp_path / "README.md").write_text(
        "See `docs/math.md`, `gatattn/kernels/*.py`, `gatattn/nope/*.py` and `math.md`.\n"
        "```bash\npython run.py --out result.md\n```\n"
    )
    (tmp_path / "CHANGELOG.md").write_text("- moved gatattn/layer.py\n")
    assert sorted(broken_references(tmp_path)) == [
        "README.md: gatattn/nope/*.py",
        "gatattn/graph.py: DESIGN.md",
        "gatattn/graph.py: docs/missing.md",
        "gatattn/graph.py: tests/test_equivalence.py",
        "tests/kernels/test_ops.py: gatattn/ops.py",
        "tests/kernels/test_ops.py: layer.py",
    ]
