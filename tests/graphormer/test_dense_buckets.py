"""The dense backend's scatter plan padded per length bucket (backends/dense_buckets.py): the
cut of the sorted lengths, and every bucketed run against the edge backend in fp64 at 1e-10
(outputs, q/k/v gradients and the bias table's), on fixed and Hypothesis-drawn graphs of mixed
sizes. ``BUCKET_CELLS`` (the per-bucket cost) is set low here so that small graphs split.

Sizes are pairwise distinct: H=3, D=5, graphs of 2-9 nodes.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import gatattn as ga
from gatattn.backends import Problem, attend, dense_buckets
from gatattn.backends.dense_buckets import bucket_plan, split_lengths

H, D = 3, 5


@pytest.fixture(autouse=True)
def _cheap_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dense_buckets, "BUCKET_CELLS", 8)


def _graph(
    sizes: list[int], keep: float = 1.0, seed: int = 0
) -> tuple[ga.TokenGraph, torch.Tensor]:
    """Complete graphs of random trees with their hop distances; with keep < 1 a random share
    of those pairs only (targets may lose every edge)."""
    gen = torch.Generator().manual_seed(seed)
    edges, start = [], 0
    for n in sizes:
        child = torch.arange(1, n)
        parent = (torch.rand(n - 1, generator=gen) * child).long()
        e = torch.stack([parent, child]) + start
        edges.append(torch.cat([e, e.flip(0)], 1))
        start += n
    batch = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    ei = torch.cat(edges, 1) if edges else torch.zeros(2, 0, dtype=torch.long)
    g, dist = ga.shortest_path_distances(ei, start, batch=batch, max_distance=3)
    if keep < 1.0:
        kept = torch.rand(g.num_edges, generator=gen) < keep
        g = ga.TokenGraph(g.edge_index[:, kept], start, start, lengths=sizes)
        dist = dist[kept]
    return g, dist


def _score(biases: str = "spatial", seed: int = 3) -> ga.ScoreFunction:
    torch.manual_seed(seed)
    score = ga.make_score("scaled_dot", H, D)
    if biases in ("spatial", "two"):
        score = score + ga.SpatialBias(H, 3)
    if biases == "two":  # no masked_grid: the sum of grids plus the graph's base
        score = score + ga.SpatialBias(H, 4)
    if biases == "edgefeat":  # no grid form: per-edge values scattered per bucket
        score = score + ga.EdgeFeatureBias(5, H)
    with torch.no_grad():
        for p in score.parameters():
            p.normal_()
    return score.double()


def _run(g: ga.TokenGraph, score: ga.ScoreFunction, attr: object, backend: str) -> list:
    score.zero_grad()
    gen = torch.Generator().manual_seed(1)
    q, k, v = (
        torch.randn(n, H, D, generator=gen, dtype=torch.float64).requires_grad_()
        for n in (g.num_dst, g.num_src, g.num_src)
    )
    out = attend(Problem(q, k, v, g, score, edge_attr=attr), backend).out  # type: ignore[arg-type]
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return [out.detach(), q.grad, k.grad, v.grad, *(p.grad.clone() for p in score.parameters())]


def _equal(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=1e-10, rtol=0)


def _cost(groups: list[list[int]], sizes: list[tuple[int, int]], overhead: int) -> int:
    return sum(
        overhead + len(gr) * max(sizes[s][0] for s in gr) * max(sizes[s][1] for s in gr)
        for gr in groups
    )


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 9), min_size=1, max_size=7),
    st.integers(0, 200),
)
def test_split_lengths_is_the_cheapest_cut(lengths: list[int], overhead: int) -> None:
    sizes = [(n, n) for n in lengths]
    groups = split_lengths(sizes, overhead)
    assert sorted(s for gr in groups for s in gr) == list(range(len(sizes)))  # a partition
    order = sorted(range(len(sizes)), key=lambda s: sizes[s])
    best = min(  # every cut of the sorted order into contiguous runs
        _cost([order[a:b] for a, b in itertools.pairwise((0, *cuts, len(order)))], sizes, overhead)
        for r in range(len(order))
        for cuts in itertools.combinations(range(1, len(order)), r)
    )
    assert _cost(groups, sizes, overhead) == best


def test_split_lengths_merges_many_sizes_first() -> None:
    sizes = [(n, n) for n in range(1, 600)]  # more distinct sizes than the cut's units
    groups = split_lengths(sizes, 50)
    assert sorted(s for gr in groups for s in gr) == list(range(len(sizes)))
    assert 1 < len(groups) < 256


@pytest.mark.parametrize("biases", ["spatial", "two", "edgefeat", "none"])
@pytest.mark.parametrize("keep", [1.0, 0.6], ids=["complete", "partial"])
def test_bucketed_dense_equals_edge(biases: str, keep: float) -> None:
    g, dist = _graph([4, 7, 2, 7, 3, 9], keep=keep, seed=1)
    plan = bucket_plan(g)
    assert plan is not None and len(plan.buckets) > 1  # the path under test
    score = _score(biases)
    attr = F.one_hot(dist, 5).double() if biases == "edgefeat" else dist
    _equal(_run(g, score, attr, "dense"), _run(g, score, attr, "edge"))


def test_per_edge_minus_inf_values_in_buckets() -> None:
    # a float per-edge mask with -inf: rows that lose every key are found in the mask
    from gatattn.scores.biases import AttnMaskBias

    g, dist = _graph([3, 6, 4, 6], seed=6)
    mask = torch.where(dist[:, None] >= 2, float("-inf"), 0.25 * dist[:, None].double())
    score = (ga.make_score("scaled_dot", H, D) + AttnMaskBias()).double()
    dense, edge = _run(g, score, mask, "dense"), _run(g, score, mask, "edge")
    _equal(dense, edge)
    assert bucket_plan(g) is not None


def test_a_bucket_of_one_graph_and_empty_rows() -> None:
    g, dist = _graph([2, 8, 5], keep=0.5, seed=4)  # distinct sizes: one graph per bucket
    plan = bucket_plan(g)
    assert plan is not None and [b.count for b in plan.buckets] == [1, 1, 1]
    assert (torch.bincount(g.edge_index[1], minlength=g.num_dst) == 0).any()  # empty rows
    score = _score()
    dense = _run(g, score, dist, "dense")
    _equal(dense, _run(g, score, dist, "edge"))


def test_one_sequence_runs_unbucketed() -> None:
    g, dist = _graph([6])
    assert bucket_plan(g) is None
    score = _score()
    _equal(_run(g, score, dist, "dense"), _run(g, score, dist, "edge"))


def test_a_table_with_minus_inf_in_buckets() -> None:
    # -inf in the table: no masked_grid; the rows that lose every key are found in the mask
    g, dist = _graph([3, 6, 4], seed=5)
    score = _score()
    with torch.no_grad():
        score.parts()[1][0].weight[:, 2] = float("-inf")  # head 2: every distance
    dense, edge = _run(g, score, dist, "dense"), _run(g, score, dist, "edge")
    torch.testing.assert_close(dense[0], edge[0], atol=1e-10, rtol=0)
    assert (dense[0][:, 2] == 0).all()
    for t in dense[1:4]:
        assert torch.isfinite(t).all()


def test_bipartite_buckets_equal_edge() -> None:
    gen = torch.Generator().manual_seed(6)
    q_len, k_len = [3, 6, 2, 5], [4, 2, 7, 5]
    edges, qs, ks = [], 0, 0
    for a, b in zip(q_len, k_len, strict=True):
        pairs = torch.cartesian_prod(torch.arange(b), torch.arange(a)).t()  # [2, b·a]: (j, i)
        keep = torch.rand(pairs.size(1), generator=gen) < 0.7
        edges.append(pairs[:, keep] + torch.tensor([[ks], [qs]]))
        qs, ks = qs + a, ks + b
    g = ga.TokenGraph(
        torch.cat(edges, 1), ks, qs, lengths=q_len, params={"kv_lengths": tuple(k_len)}
    )
    plan = bucket_plan(g)
    assert plan is not None and len(plan.buckets) > 1
    score = _score("none")
    _equal(_run(g, score, None, "dense"), _run(g, score, None, "edge"))


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=6),
    keep=st.sampled_from([1.0, 0.7, 0.3]),
    seed=st.integers(0, 2**16),
    cells=st.sampled_from([0, 8, 60]),
    biases=st.sampled_from(["spatial", "edgefeat", "none"]),
)
def test_random_mixed_sizes_equal_edge(
    sizes: list[int], keep: float, seed: int, cells: int, biases: str
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dense_buckets, "BUCKET_CELLS", cells)
        g, dist = _graph(sizes, keep=keep, seed=seed)
        score = _score(biases, seed=seed % 7)
        attr = F.one_hot(dist, 5).double() if biases == "edgefeat" else dist
        _equal(_run(g, score, attr, "dense"), _run(g, score, attr, "edge"))


def test_auto_picks_dense_for_bucketed_complete_graphs() -> None:
    g, dist = _graph([4, 7, 2, 7, 3, 9], seed=2)
    score = _score()
    layer_auto = ga.GraphAttention(H * D, H, score=score, backend="auto").double()
    x = torch.randn(g.num_dst, H * D, dtype=torch.float64)
    assert "dense" in layer_auto.explain_backend(x, g)
    layer_edge = ga.GraphAttention(H * D, H, score=score, backend="edge").double()
    layer_edge.load_state_dict(layer_auto.state_dict())
    torch.testing.assert_close(
        layer_auto(x, g, edge_attr=dist), layer_edge(x, g, edge_attr=dist), atol=1e-10, rtol=0
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_within_torch_error(dtype: torch.dtype) -> None:
    """fp32 / bf16 bucketed against the fp64 golden, within a small multiple of the error of
    torch's own SDPA (same dtype, same masks, one padded grid) against the same golden."""
    sizes = [4, 7, 2, 7, 3, 9]
    g, dist = _graph(sizes, seed=7)
    score = _score()
    gen = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(g.num_dst, H, D, generator=gen, dtype=torch.float64) for _ in "qkv")
    gold = attend(Problem(q, k, v, g, score, edge_attr=dist), "edge").out
    low = score.to(dtype)
    ours = attend(Problem(q.to(dtype), k.to(dtype), v.to(dtype), g, low, edge_attr=dist), "dense")
    # torch: per graph, SDPA in ``dtype`` with the bias gathered from the same table
    table = score.parts()[1][0].weight.detach()  # [5, H]
    ref, start, bias_at = [], 0, {}
    src, dst = g.edge_index
    for e in range(g.num_edges):
        bias_at[(int(dst[e]), int(src[e]))] = table[int(dist[e])]  # [H]
    for n in sizes:
        nodes = range(start, start + n)
        m = torch.stack([torch.stack([bias_at[(i, j)] for j in nodes], -1) for i in nodes], 1)
        sl = slice(start, start + n)
        qh, kh, vh = (t[sl].to(dtype).transpose(0, 1) for t in (q, k, v))  # [H, n, D]
        o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=m.to(dtype), scale=D**-0.5)
        ref.append(o.transpose(0, 1))
        start += n
    torch_err = (torch.cat(ref).double() - gold).abs().max()
    our_err = (ours.out.double() - gold).abs().max()
    assert our_err <= 4 * torch_err + 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runs_the_single_grid() -> None:
    g, dist = _graph([4, 7, 2, 7, 3, 9], seed=2)
    g = g.to("cuda")
    score = _score().to("cuda")
    q, k, v = (torch.randn(g.num_dst, H, D, dtype=torch.float64, device="cuda") for _ in "qkv")
    p = Problem(q, k, v, g, score, edge_attr=dist.to("cuda"))
    assert dense_buckets.run_buckets(p, D**-0.5, 0.0) is None  # BUCKET_CELLS is a CPU cost
    torch.testing.assert_close(attend(p, "dense").out, attend(p, "edge").out, atol=1e-10, rtol=0)
