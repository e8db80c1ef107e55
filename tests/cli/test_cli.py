"""The ``gatattn`` entry point (gatattn/cli/__init__.py): ``--version``, dispatch, and progress
bars that are drawn only on a terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import gatattn as ga
from gatattn.cli import COMMANDS, main, progress_bar
from gatattn.cli import bench as bench_cli
from gatattn.cli.demo import train_demo


def _on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"gatattn {ga.__version__}\n"
    proc = subprocess.run(
        [sys.executable, "-m", "gatattn", "--version"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout == f"gatattn {ga.__version__}\n"


def test_every_command_has_its_own_module() -> None:
    assert list(COMMANDS) == ["verify", "patterns", "export", "demo", "bench"]
    assert all(module == f"gatattn.cli.{name}" for name, (module, _) in COMMANDS.items())


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2 and "required: COMMAND" in capsys.readouterr().err


def test_progress_bar_only_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert list(progress_bar(range(3), desc="counting")) == [0, 1, 2]
    assert capsys.readouterr().err == ""  # a pipe (pytest's capture): plain text, no bar
    _on_a_terminal(monkeypatch)
    assert list(progress_bar(range(3), desc="counting")) == [0, 1, 2]
    assert "counting" in capsys.readouterr().err
    assert list(progress_bar(range(3), desc="counting", enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""  # --no-progress


def test_demo_bar_only_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    train_demo(steps=2, out_dir=tmp_path, progress=True, draw=False)
    assert capsys.readouterr().err == ""
    _on_a_terminal(monkeypatch)
    train_demo(steps=2, out_dir=tmp_path, progress=True, draw=False)
    err = capsys.readouterr().err
    assert "learning W_q, W_k, W_v" in err and "loss=" in err
    assert main(["demo", "--steps", "1", "--no-progress", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""


def test_bench_bar_only_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "--quick", "--cases", "P1", "--n1", "8", "--channels", "6", "--heads", "2"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "| P1 complete N=8 |" in out and err == ""
    _on_a_terminal(monkeypatch)
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "| P1 complete N=8 |" in out and "P1 timed rounds" in err
    assert bench_cli.load_harness() is not None
