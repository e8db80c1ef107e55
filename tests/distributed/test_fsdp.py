"""FSDP2 (``fully_shard``) on gloo: examples/fsdp_train.py equals one process, and resumes.

One run of the example in a fresh interpreter with a time limit (as tests/test_ddp.py; a fork of
the pytest process can deadlock): 2 processes, 20 Adam steps in fp64, for a stack of
GraphTransformerBlocks and a stack of GraphormerLayers (both activation-checkpointed), a ga.convert-ed
nn.TransformerEncoder and a ga.convert-ed BERT. At step 10 the sharded model and optimizer state
are saved with torch.distributed.checkpoint; a fresh model with other weights loads them and
trains steps 10-19 again.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
STEPS, SAVE_AT = 20, 10
# fp64. The losses are sums of the same terms in another order; the parameters went through
# 20 Adam steps, whose m / sqrt(v) turns rounding differences of small gradients into larger
# parameter differences (seen: 3e-11 at parameter scale 1).
LOSS_TOL, PARAM_TOL = 1e-12, 1e-9


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fsdp_train", ROOT / "examples" / "fsdp_train.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fsdp_train"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("fsdp")
    cmd = [sys.executable, "examples/fsdp_train.py", "--nproc", "2", "--steps", str(STEPS)]
    cmd += ["--save-at", str(SAVE_AT), "--checkpoint", "--out", str(out), "--start-method", "fork"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=400, cwd=ROOT, env=env,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    mod = _example()
    return {k: torch.load(out / f"{k}.pt", weights_only=True) for k in mod.MODELS}


@pytest.mark.parametrize("kind", ["blocks", "graphormer", "encoder", "bert"])
def test_two_processes_equal_one_process(runs: dict[str, Any], kind: str) -> None:
    mod = _example()
    torch.set_num_threads(1)  # as the workers
    losses, params = mod.single_process(kind, STEPS, 0)
    got = runs[kind]
    assert len(got["losses"]) == STEPS
    assert max(abs(a - b) for a, b in zip(got["losses"], losses)) <= LOSS_TOL
    assert losses[-1] < 0.8 * losses[0]  # it trained
    assert list(got["params"]) == list(params)  # every parameter, same names, same order
    start = {n: p.detach() for n, p in mod.make_model(kind, 0).named_parameters()}
    for name, p in params.items():
        assert got["params"][name].shape == p.shape, name
        assert float((got["params"][name] - p).abs().max()) <= PARAM_TOL, name
    moved = max(float((p - start[n]).abs().max()) for n, p in params.items())
    assert moved > 0.05  # the comparison is not vacuous


@pytest.mark.parametrize("kind", ["blocks", "graphormer", "encoder", "bert"])
def test_resume_from_sharded_checkpoint_repeats_the_losses(runs: dict[str, Any], kind: str) -> None:
    got = runs[kind]
    after = got["losses"][SAVE_AT:]
    assert len(got["resumed"]) == STEPS - SAVE_AT
    # the same steps from the same state: the same numbers, to the last bit in practice
    assert max(abs(a - b) for a, b in zip(got["resumed"], after)) <= LOSS_TOL


def test_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:
        _example().main(["--nproc", "3"])
    assert err.value.code == 2
    assert "need --nproc dividing 4 and 0 < --save-at < --steps, got 3, 10, 20" in (
        capsys.readouterr().err
    )


def test_unknown_model() -> None:
    with pytest.raises(ValueError, match="model must be one of"):
        _example().make_model("lstm", 0)
