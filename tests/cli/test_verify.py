"""``gatattn verify``: the main job's table, exit codes, and argument errors (gatattn/cli/verify.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from gatattn.cli import main, verify


def test_quick_matrix_passes_and_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "max abs err" in out and "tolerance" in out
    lines = [line for line in out.splitlines() if line.endswith(("pass", "FAIL"))]
    assert len(lines) >= 30 and all(line.endswith("pass") for line in lines)
    assert any("sdpa" in line for line in lines) and any("mha+padding" in line for line in lines)
    assert "cases passed" in out
    errors = [float(line.split()[-3]) for line in lines]
    assert any(e > 0 for e in errors)  # fp32 cases cannot be bit-exact: errors are measured


def test_a_failure_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(verify.TOLERANCE, torch.float32, 0.0)  # fp32 errors are > 0: must fail
    assert main(["verify", "--quick"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_bad_arguments_exit_2_without_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gatattn", "verify", "--no-such-flag"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "gatattn", "frobnicate"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "invalid choice: 'frobnicate'" in proc.stderr
