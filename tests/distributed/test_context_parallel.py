"""Window graphs sharded by sequence (gatattn.distributed) equal one process, forward and backward.

Every distributed run starts in a fresh interpreter with a time limit (as tests/test_ddp.py):
examples/context_parallel.py with 2 processes, and tests/distributed/cp_cases.py with 4 (the
same L = 65,536 problem, small uneven cases, a subgroup, and the errors). One process on the
whole sequence is the reference: the same module on ``ga.window_graph`` / ``ga.bigbird_graph``.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import gatattn as ga

ROOT = Path(__file__).resolve().parents[2]
L, W = 65536, 128
TOL = 1e-10  # fp64; the tiles of a shard start at other offsets, so sums run in another order


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = mod
    spec.loader.exec_module(mod)
    return mod


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def _reference(module: torch.nn.Module, graph: ga.TokenGraph, x: torch.Tensor, r: torch.Tensor):
    """One process: the module on the whole sequence; outputs and gradients of Σ <y, r>."""
    x = x.clone().requires_grad_(True)
    y = module(x, graph)  # [L, C]
    (y * r).sum().backward()
    grads = torch.cat([p.grad.reshape(-1) for p in module.parameters() if p.grad is not None])
    return {"y": y.detach(), "x_grad": x.grad, "param_grad": grads}


@cache
def _big_reference() -> dict[str, torch.Tensor]:
    example = _load(ROOT / "examples" / "context_parallel.py")
    torch.set_num_threads(1)  # as the workers
    x, r = example.make_inputs(L, 0)
    return _reference(example.make_block(0), ga.window_graph(L, W, max_edges=None), x, r)


def _assert_equal_to_one_process(ranks: list[dict[str, Any]], ref: dict[str, torch.Tensor]) -> None:
    assert ranks[0]["start"] == 0 and ranks[-1]["stop"] == ref["y"].shape[0]
    assert all(a["stop"] == b["start"] for a, b in itertools.pairwise(ranks))  # rows tile [0, L)
    y = torch.cat([o["y"] for o in ranks])  # [L, C]
    x_grad = torch.cat([o["x_grad"] for o in ranks])  # [L, C]
    param_grad = torch.stack([o["param_grad"] for o in ranks]).sum(0)  # each rank's share
    for name, got in (("y", y), ("x_grad", x_grad), ("param_grad", param_grad)):
        err = float((got - ref[name]).abs().max())
        assert err <= TOL * max(1.0, float(ref[name].abs().max())), (name, err)
    assert float(ref["x_grad"].abs().max()) > 0.1  # the gradients are not trivially zero


def test_two_processes_example_equals_one_process(tmp_path: Path) -> None:
    args = ["examples/context_parallel.py", "--nproc", "2", "--length", str(L), "--window", str(W)]
    done = _run([*args, "--out", str(tmp_path), "--start-method", "fork"])
    assert "forward+backward" in done.stdout
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    _assert_equal_to_one_process(ranks, _big_reference())
    # each rank sends its neighbour w rows of C fp64 values, forward and backward
    for o in ranks:
        assert o["bytes_sent"] == {"forward": W * 6 * 8, "backward": W * 6 * 8}
    assert [o["halo"] for o in ranks] == [(0, W), (W, 0)]


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("cp_cases")
    _run(["tests/distributed/cp_cases.py", str(out)])
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(4)]


def test_four_processes_equal_one_process(cases: list[dict[str, Any]]) -> None:
    ranks = [c["window_65536"] for c in cases]
    _assert_equal_to_one_process(ranks, _big_reference())
    row = 6 * 8  # C fp64 values
    sent = [o["bytes_sent"]["forward"] for o in ranks]
    assert sent == [W * row, 2 * W * row, 2 * W * row, W * row]  # interior ranks: both sides
    assert [o["bytes_sent"]["backward"] for o in ranks] == sent


@pytest.mark.parametrize(
    "name", ["window_dilated_uneven", "causal_window_999", "block_banded", "window_subgroup"]
)
def test_small_cases_equal_one_process(cases: list[dict[str, Any]], name: str) -> None:
    mod = _load(ROOT / "tests" / "distributed" / "cp_cases.py")
    graph, sizes, group = mod.CASES[name]
    ranks = [c[name] for c in cases if name in c]
    assert len(ranks) == (4 if group is None else len(group))
    if sizes is not None:
        assert [o["stop"] - o["start"] for o in ranks] == sizes
    x, r = mod.make_inputs(graph.length, 0)
    ref = _reference(mod.make_layer(0), graph.graph(), x, r)
    _assert_equal_to_one_process(ranks, ref)


ERRORS = {
    "mismatch": "ValueError: every rank must describe the same graph and sizes; rank 0 has "
    "window(L=100, w=3, d=1) with sizes even but rank 1 has causal_window(L=100, w=3, d=1)",
    "too_wide": "ValueError: window(L=100, w=30, d=1): rank 0 needs a right halo of 30 tokens, "
    "more than the 25 tokens of rank 1; the window is wider than a shard",
    "sizes_sum": "ValueError: the shard sizes [10, 10, 10, 10] sum to 40, not to the graph's "
    "length 100",
    "sizes_count": "ValueError: sizes has 2 entries, one per rank is needed (world size 4)",
    "not_banded": "TypeError: graph must be a BandedGraph, got TokenGraph",
    "rows": "ValueError: halo_exchange: x must have this rank's 25 rows, got (7, 6)",
    "not_tensor": "TypeError: ShardedSequence: GraphAttention returned Attention, a Tensor",
    "crop": "ValueError: crop: expected",
    "shard": "ValueError: shard: x must have the sequence's 100 rows, got (25, 6)",
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_errors_raise_on_every_rank(cases: list[dict[str, Any]], name: str) -> None:
    for rank, c in enumerate(cases):
        assert c["errors"][name].startswith(ERRORS[name]), (rank, c["errors"][name])
