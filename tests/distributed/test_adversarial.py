"""Hostile cases for gatattn.distributed (issue 24), against written-out formulas.

- ``BandedGraph``: the neighbourhoods of its docstring's equations, built here as dense masks,
  equal ``graph()``; for every slice [a, b) of small sequences the halo covers every source
  that the slice's targets read, and ``local_graph(a, b)`` restricted to them is the whole
  mask's rows, shifted;
- ``shard_sizes`` equals ``torch.tensor_split``; ``plan_shards`` takes shards no wider than the
  window when the halo still comes from one neighbour, refuses a second hop, and takes numpy
  integers (the house rule of docs/math.md);
- the arithmetic of docs/distributed.md, recomputed;
- one fresh interpreter runs world sizes 1 and 3 (tests/distributed/adversarial_cases.py):
  uneven shards, a shard of 2 rows beside a window of 3, a rank holding one row, a dilated
  window, a block band and numpy sizes, compared in fp64 with the dense formula
  softmax(QKᵀ/√D + M) V written out here (outputs, x gradients, and the parameter gradients
  summed over the ranks); the halo gradients therefore reach their owners.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import gatattn as ga
import gatattn.distributed as gd

ROOT = Path(__file__).resolve().parents[2]
C, H = 6, 2  # as in adversarial_cases.py


def band_mask(g: gd.BandedGraph) -> torch.Tensor:
    """N(i) of BandedGraph's equations as a dense [L, L] mask (True: i attends to j)."""
    i = torch.arange(g.length)[:, None]
    j = torch.arange(g.length)[None, :]
    if g.kind == "block_banded":
        return (i // g.block_size - j // g.block_size).abs() <= (g.window_blocks - 1) // 2
    d, reach = g.dilation, g.window * g.dilation
    near = ((i - j) % d == 0) & ((i - j).abs() <= reach)
    return near & (i >= j) if g.kind == "causal_window" else near


BANDS = [
    gd.BandedGraph("window", 11, window=w, dilation=d) for w in (0, 1, 3) for d in (1, 2, 4)
] + [
    gd.BandedGraph("causal_window", 10, window=w, dilation=d) for w in (0, 2) for d in (1, 3)
] + [
    gd.BandedGraph("block_banded", 13, block_size=s, window_blocks=W) for s in (1, 3, 4)
    for W in (1, 3, 5)
]  # fmt: skip


@pytest.mark.parametrize("band", BANDS, ids=lambda b: b.describe())
def test_banded_graph_is_its_equation_and_every_slice_is_exact(band: gd.BandedGraph) -> None:
    mask = band_mask(band)  # [L, L]
    assert torch.equal(band.graph().to_dense_mask(), mask)
    L = band.length
    for a in range(L):
        for b in range(a + 1, L + 1):
            hl, hr = band.halo(a, b)
            read = mask[a:b].any(0).nonzero().flatten()  # every source of the slice's targets
            assert read.min() >= a - hl and read.max() < b + hr, (a, b, hl, hr)
            local = band.local_graph(a, b)
            assert local.num_dst == local.num_src == b - a + hl + hr
            assert torch.equal(local.to_dense_mask()[hl : hl + b - a], mask[a:b, a - hl : b + hr])


@pytest.mark.parametrize("L", [1, 2, 7, 30])
def test_shard_sizes_equal_tensor_split(L: int) -> None:
    for P in range(1, L + 1):
        assert gd.shard_sizes(L, P) == [len(t) for t in torch.arange(L).tensor_split(P)]


def test_numpy_integers_count_as_integers() -> None:
    # docs/math.md: "numpy integers count as integers"; they come out as Python ints
    band = gd.BandedGraph("window", np.int64(20), window=np.int32(3), dilation=np.int64(1))
    assert band == gd.BandedGraph("window", 20, window=3) and type(band.length) is int
    assert gd.shard_sizes(np.int64(10), np.int64(3)) == [4, 3, 3]
    assert band.halo(np.int64(5), np.int64(9)) == (3, 3)
    plans = gd.plan_shards(band, np.array([10, 10]))
    assert plans[1] == (10, 20, 3, 0) and all(type(v) is int for v in plans[1])
    for bad in ([10.0, 10], [True, 19], [torch.tensor(10), 10]):
        with pytest.raises(ValueError, match="sizes\\[0\\] must be a positive int"):
            gd.plan_shards(band, bad)
    with pytest.raises(ValueError, match="length must be an int >= 1, got True"):
        gd.BandedGraph("window", True, window=1)


def test_plan_shards_one_hop_is_enough_and_two_are_refused() -> None:
    window = gd.BandedGraph("window", 20, window=3)
    # shards of 2 rows at the ends: the halo into them is clipped to the sequence, one hop
    assert [p.halo for p in gd.plan_shards(window, [2, 8, 8, 2])] == [
        (0, 3), (2, 3), (3, 2), (3, 0)
    ]  # fmt: skip
    with pytest.raises(ValueError, match="rank 0 needs a right halo of 3 tokens, more than the 2"):
        gd.plan_shards(window, [8, 2, 10])
    causal = gd.BandedGraph("causal_window", 20, window=5)
    assert [p.halo for p in gd.plan_shards(causal, [10, 5, 5])] == [(0, 0), (5, 0), (5, 0)]
    with pytest.raises(ValueError, match="rank 2 needs a left halo of 2 tokens"):
        gd.plan_shards(causal, [1, 1, 18])


def test_distributed_doc_arithmetic() -> None:
    """The numbers of docs/distributed.md, recomputed from their formulas."""
    # the measured table: halo (h_l + h_r)·C·8 and ring (P − 1)·n·2C·8 for L = 65,536, C = 6
    L, C6, w = 65536, 6, 128
    assert 2 * w * C6 * 8 == 12288 and w * C6 * 8 == 6144
    for P, ring in ((2, 3_145_728), (4, 4_718_592)):
        assert (P - 1) * (L // P) * 2 * C6 * 8 == ring
    assert (3_145_728 / 6144, 4_718_592 / 6144, 4_718_592 / 12288) == (512, 768, 384)
    assert 2 * w / 32768 == pytest.approx(0.0078, abs=1e-4)  # "0.8 % at n = 32,768"
    assert L // 2 + w == 32896  # "32,896 rows against 65,536"
    # at scale: L = 2^20, P = 64, n = 16,384, w = 128, C = 4096, C_kv = 1024, bf16
    n, C, C_kv, P = 2**20 // 64, 4096, 1024, 64
    assert 2 * w * C * 2 == 2 * 2**20  # 2 MiB
    assert (P - 1) * n * 2 * C_kv * 2 == pytest.approx(4 * 2**30, rel=0.02)  # "4 GiB"
    assert (P - 1) * n * 2 * C_kv / (2 * w * C) == pytest.approx(2000, rel=0.01)
    assert (P - 1) * n * 2 * C / (2 * w * C) == 8064
    assert 24 * n * C**2 == pytest.approx(6.6e12, rel=0.01)
    assert 4 * n * (2 * w + 1) * C == pytest.approx(69e9, rel=0.01)
    assert (n + 2 * w) * (2 * w + 1) == pytest.approx(4.3e6, rel=0.01)
    assert 2**20 * 257 == pytest.approx(270e6, rel=0.01)
    assert 2 * 8 * 2**20 * 257 == pytest.approx(4.3e9, rel=0.01)  # "4.3 GB as int64"
    # activation checkpointing: 4 block inputs of 4096 x 128 fp32 = 8 MiB; the savings
    assert 4 * 4096 * 128 * 4 == 8 * 2**20
    saved = [1 - after / before for before, after in ((292, 188), (213, 148), (154, 103))]
    assert all(0.30 <= s <= 0.36 for s in saved)


# ------------------------------------------------------------------ processes
def reference(band: gd.BandedGraph) -> dict[str, Any]:
    """One fp64 process, no gatattn attention: y = W_o softmax(QKᵀ/√D + M) V + b_o on the whole
    sequence, with the layer's weights, and the gradients of sum(y ⊙ r)."""
    torch.manual_seed(0)
    layer = ga.GraphAttention(C, H).double()  # adversarial_cases.make_layer(0): same draws
    gen = torch.Generator().manual_seed(band.length)
    x = torch.randn(band.length, C, generator=gen, dtype=torch.float64).requires_grad_(True)
    r = torch.randn(band.length, C, generator=gen, dtype=torch.float64)
    params = dict(layer.named_parameters())
    D = C // H
    qkv = x @ params["in_proj_weight"].T + params["in_proj_bias"]  # [L, 3C]
    q, k, v = (t.view(-1, H, D).transpose(0, 1) for t in qkv.split(C, dim=1))  # [H, L, D]
    logits = q @ k.transpose(1, 2) / math.sqrt(D)  # [H, L, L]
    logits = logits.masked_fill(~band_mask(band), -math.inf)
    out = (logits.softmax(-1) @ v).transpose(0, 1).reshape(-1, C)  # [L, C]
    y = out @ params["out_proj.weight"].T + params["out_proj.bias"]  # [L, C]
    names = list(params)
    grads = torch.autograd.grad((y * r).sum(), [x, *params.values()])
    return {"y": y.detach(), "x_grad": grads[0], "param_grad": dict(zip(names, grads[1:]))}


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("adversarial")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "tests/distributed/adversarial_cases.py", "1,3", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return {
        P: [torch.load(out / f"world{P}" / f"rank{r}.pt", weights_only=False) for r in range(P)]
        for P in (1, 3)
    }


CASES = ["window_uneven", "window_tiny_edge_shard", "causal_one_row", "dilated", "block_banded",
         "numpy_sizes"]  # fmt: skip
BAND = {
    "window_uneven": gd.BandedGraph("window", 17, window=3),
    "window_tiny_edge_shard": gd.BandedGraph("window", 15, window=3),
    "causal_one_row": gd.BandedGraph("causal_window", 12, window=1),
    "dilated": gd.BandedGraph("window", 31, window=2, dilation=3),
    "block_banded": gd.BandedGraph("block_banded", 26, block_size=4, window_blocks=3),
    "numpy_sizes": gd.BandedGraph("window", 13, window=2),
}


@pytest.mark.parametrize("P", [1, 3])
@pytest.mark.parametrize("name", CASES)
def test_sharded_layer_equals_the_written_out_formula(
    worlds: dict[int, list[dict[str, Any]]], P: int, name: str
) -> None:
    ranks = [res[name] for res in worlds[P]]
    ref = reference(BAND[name])
    assert [(r["start"], r["stop"]) for r in ranks] == [
        (a, b) for a, b in zip([0, *np.cumsum([r["stop"] - r["start"] for r in ranks])[:-1]],
                               np.cumsum([r["stop"] - r["start"] for r in ranks]))
    ]  # fmt: skip
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), ref["y"], rtol=0, atol=1e-12)
    torch.testing.assert_close(
        torch.cat([r["x_grad"] for r in ranks]), ref["x_grad"], rtol=0, atol=1e-12
    )  # the halo rows' gradients reached the ranks that own them
    for pname, want in ref["param_grad"].items():
        got = sum(r["param_grad"][pname] for r in ranks)  # each rank holds its rows' share
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    if P == 1:
        assert ranks[0]["halo"] == (0, 0)
        assert ranks[0]["bytes_sent"] == {"forward": 0, "backward": 0}
    for r, res in enumerate(ranks):  # forward: the rows the neighbours read; backward: the halo
        sent_rows = (ranks[r - 1]["halo"][1] if r else 0) + (
            ranks[r + 1]["halo"][0] if r + 1 < P else 0
        )
        assert res["bytes_sent"] == {
            "forward": sent_rows * C * 8,
            "backward": sum(res["halo"]) * C * 8,
        }


def test_exchange_of_any_shape_and_dtype(worlds: dict[int, list[dict[str, Any]]]) -> None:
    ids = torch.arange(11)
    wide = torch.arange(11 * 8, dtype=torch.float32).view(11, 8)
    for P, ranks in worlds.items():
        plans = gd.plan_shards(gd.BandedGraph("window", 11, window=2), gd.shard_sizes(11, P))
        for plan, res in zip(plans, ranks):
            lo, hi = plan.start - plan.halo_left, plan.stop + plan.halo_right
            ex = res["exchange"]
            assert torch.equal(ex["ids"], ids[lo:hi])
            assert torch.equal(ex["cube"], wide.view(11, 2, 4)[lo:hi])
            assert torch.equal(ex["strided"], wide[lo:hi, ::2])  # a non-contiguous input


def test_every_rank_refuses_together(worlds: dict[int, list[dict[str, Any]]]) -> None:
    for P, ranks in worlds.items():
        errors = [res["errors"] for res in ranks]
        assert all(e == errors[0] for e in errors)  # the same message on every rank
        assert errors[0]["float_sizes"].startswith("ValueError: sizes[0] must be a positive int")
        if P == 3:
            assert (
                "rank 0 needs a right halo of 4 tokens, more than the 3 tokens of rank 1"
                in errors[0]["too_wide"]
            )
