"""examples/ddp_train.py: DDP over gloo on CPU equals one process on the combined batch."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_ddp_two_ranks_agree_and_equal_single_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    ddp_train = importlib.import_module("ddp_train")
    steps, seed = 3, 0
    # 2 processes over gloo, started by the script as a user runs it, in a fresh interpreter
    # with a time limit. Not forked from this test process: a fork of a process that already
    # runs threads (earlier tests start thread pools) can deadlock in the child, and the join
    # would then wait for ever.
    cmd = [sys.executable, str(EXAMPLES / "ddp_train.py"), "--nproc", "2", "--steps", str(steps)]
    cmd += ["--seed", str(seed), "--out", str(tmp_path)]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert torch.equal(rank0, rank1)  # identical across ranks, bit for bit

    torch.set_num_threads(1)  # as the workers
    model = ddp_train.make_model(seed)
    start = ddp_train.flat_parameters(model)
    ddp_train.train(model, 0, 1, steps, seed, torch.device("cpu"))  # one process, whole batch
    single = ddp_train.flat_parameters(model)
    assert float((rank0 - single).abs().max()) <= 1e-6
    assert float((single - start).abs().max()) > 1e-3  # training did move the parameters


def test_nproc_must_divide_the_batch(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    ddp_train = importlib.import_module("ddp_train")
    with pytest.raises(SystemExit) as err:
        ddp_train.main(["--nproc", "3"])
    assert err.value.code == 2
    assert "--nproc must divide the global batch of 8, got 3" in capsys.readouterr().err
