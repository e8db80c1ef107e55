"""The wheel works outside the repository.

Builds the sdist and the wheel, checks what the wheel holds, installs it into a fresh virtual
environment (torch first, as dev.sh does: ``GATATTN_TORCH``, default the CPU build
``torch==2.13.0``), and from a directory outside the checkout runs ``gatattn verify`` and the
README's "Use" snippet against the installed package.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH_SPEC = os.environ.get("GATATTN_TORCH", "torch==2.13.0")

pytestmark = pytest.mark.slow


def _version() -> str:
    text = (ROOT / "gatattn" / "_version.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, flags=re.M)
    assert match, text
    return match.group(1)


def _readme_use_snippet() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Use\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, blocks
    return blocks[0]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_wheel_installs_and_runs_outside_the_repository(tmp_path: Path) -> None:
    version = _version()
    # Nothing of the checkout may leak into the fresh environment.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["MPLBACKEND"] = "Agg"
    env["PYTHONNOUSERSITE"] = "1"

    # 1. sdist and wheel (the wheel is built from the sdist, so the sdist is complete too).
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], ROOT, env, 900)
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    assert [w.name for w in wheels] == [f"gatattn-{version}-py3-none-any.whl"]
    assert [s.name for s in sdists] == [f"gatattn-{version}.tar.gz"]
    wheel = wheels[0]

    # 2. The wheel holds the package and its metadata, nothing else.
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(f"gatattn-{version}.dist-info/METADATA").decode()
        entry_points = zf.read(f"gatattn-{version}.dist-info/entry_points.txt").decode()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"gatattn", f"gatattn-{version}.dist-info"}, tops
    assert "gatattn/py.typed" in names and "gatattn/_version.py" in names
    assert "gatattn/__init__.py" in names
    assert not [n for n in names if n.endswith((".png", ".md", ".ipynb")) or "/tests/" in n]
    assert not [n for n in names if "benchmarks" in n or "examples" in n or "/docs/" in n]
    assert re.search(rf"^Version: {re.escape(version)}$", metadata, flags=re.M)
    assert "Classifier: Typing :: Typed" in metadata
    assert "Requires-Python: >=3.10" in metadata
    assert "License-Expression: MIT" in metadata  # and the licence text itself goes along
    assert f"gatattn-{version}.dist-info/licenses/LICENSE" in names
    assert "gatattn = gatattn." in entry_points

    # 3. A fresh virtual environment: torch first (the CPU build), then the wheel with its deps.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env, 300)
    py = venv / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _run([*pip, TORCH_SPEC], tmp_path, env, 1800)
    _run([*pip, str(wheel)], tmp_path, env, 1800)

    # 4. From a directory outside the checkout, the installed package is the one imported.
    away = tmp_path / "elsewhere"
    away.mkdir()
    assert ROOT not in away.parents
    probe = (
        "import importlib.metadata as md, pathlib, gatattn\n"
        "print(pathlib.Path(gatattn.__file__).resolve())\n"
        "print(gatattn.__version__)\n"
        "print(md.version('gatattn'))\n"
        "print((pathlib.Path(gatattn.__file__).parent / 'py.typed').is_file())\n"
    )
    where, got_version, meta_version, typed = _run([str(py), "-c", probe], away, env, 300).split()
    assert Path(where).is_relative_to(venv.resolve()), where
    assert not Path(where).is_relative_to(ROOT), where
    assert got_version == meta_version == version
    assert typed == "True"

    # 5. The console script knows its version; then the main job: the equivalence table, exit 0.
    out = _run([str(venv / "bin" / "gatattn"), "--version"], away, env, 300)
    assert out.strip() == f"gatattn {version}", out
    out = _run([str(venv / "bin" / "gatattn"), "verify"], away, env, 1800)
    match = re.search(r"(\d+)/(\d+) cases passed", out)
    assert match and match.group(1) == match.group(2) and int(match.group(2)) > 0, out[-2000:]

    # 6. The README's "Use" snippet, as a user would paste it.
    out = _run([str(py), "-c", _readme_use_snippet()], away, env, 300)
    assert out.split("\n")[0] == "torch.Size([36, 4]) torch.Size([36, 4])", out
