"""examples/ddp_train.py: DDP over gloo on CPU equals one process on the combined batch."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_ddp_two_ranks_agree_and_equal_single_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))  # spawned workers import the example by name
    ddp_train = importlib.import_module("ddp_train")
    steps, seed = 3, 0
    # 2 processes over gloo; fork (not spawn) so the workers need not re-import torch and PyG
    ddp_train.spawn(2, steps=steps, seed=seed, out_dir=str(tmp_path), start_method="fork")
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
