"""Sparse attention graphs at extraction time (gatattn.backends.rows computes the weights a
block of rows at a time, gatattn.inspect.extract keeps the selected pairs of each block): the
kept weights are the full computation's on both paths (grid and edge list), top-k keeps exactly
the k largest per query and head (ties to the earlier edge), the threshold keeps exactly the
weights >= τ, and no block of rows holds more than the budget."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gatattn as ga
from gatattn.backends import Problem, attend, attention_rows
from gatattn.inspect.extract import extract_sparse
from gatattn.inspect.sparse import SparseAttention, sparsify
from gatattn.scores import make_score

pytestmark = pytest.mark.usefixtures("one_thread")

H, D = 3, 7  # pairwise-distinct sizes
SCORE = make_score("scaled_dot", H, D)

GRAPHS = {
    "causal batch": lambda: ga.causal_graph(lengths=[5, 9]),
    "complete batch": lambda: ga.complete_graph(lengths=[6, 4]),
    "complete, no self-loops": lambda: ga.complete_graph(7, self_loops=False),
    "window (CSR)": lambda: ga.window_graph(11, 2),
    "mask": lambda: ga.from_mask(torch.rand(2, 6, 8, generator=_gen()) > 0.4),
    "padding mask": lambda: ga.from_padding_mask(torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]) > 0),
}


PATHS = ("grid", "edges")


def _extract(
    q: torch.Tensor,
    k: torch.Tensor,
    graph: ga.TokenGraph,
    score: ga.ScoreFunction,
    path: str | None = None,
    *,
    heads: list[int] | None = None,
    edge_attr: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    budget: int = ga.backends.ROW_BUDGET,
    **opts: object,
) -> SparseAttention:
    """attention_rows -> extract_sparse; ``path`` forces the edge list (or checks the grid)."""
    rows = attention_rows(
        q, k, graph, score, heads=heads, edge_attr=edge_attr, targets=targets, budget=budget
    )
    if path == "edges":
        rows.path = "edges"  # every layout also lists its edges
    elif path == "grid":
        assert rows.path == "grid", rows.layout.kind
    return extract_sparse(rows, **opts)  # type: ignore[arg-type]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _qk(graph: ga.TokenGraph, kv: int = H, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = _gen(seed)
    q = torch.randn(graph.num_dst, H, D, generator=gen, dtype=torch.float64)  # [N_t, H, D]
    k = torch.randn(graph.num_src, kv, D, generator=gen, dtype=torch.float64)  # [N_s, H_kv, D]
    return q, k


def _full(q: torch.Tensor, k: torch.Tensor, graph: ga.TokenGraph) -> ga.Attention:
    """The unsparsified extraction: every edge's α and Attn [E, H] (the edge backend)."""
    res = attend(Problem(q, k, k, graph, SCORE, need_weights=True), "edge")
    assert res.scores is not None and res.weights is not None
    return ga.Attention(res.out, graph.edge_index, res.scores, res.weights, graph)


def _dense_weights(q: torch.Tensor, k: torch.Tensor, graph: ga.TokenGraph) -> torch.Tensor:
    """Attn [H, N_t, N_s] by the written-out formula softmax(s·q kᵀ, masked to the graph)."""
    mask = graph.to_dense_mask()  # [N_t, N_s]
    logits = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(D)  # [H, N_t, N_s]
    w = torch.softmax(logits.masked_fill(~mask, -math.inf), -1)  # [H, N_t, N_s]
    return torch.nan_to_num(w)  # rows without edges: 0


def _rows(sp: SparseAttention) -> set[tuple[int, int, int]]:
    return set(zip(sp.edge_index[0].tolist(), sp.edge_index[1].tolist(), sp.head.tolist()))


def _expected(w: torch.Tensor, graph: ga.TokenGraph, k: int | None, tau: float | None) -> set:
    """(j, i, h) kept by the rule, by a plain loop: per target and head, the edges sorted by
    weight (descending, stable: ties keep the target's edge order), those >= τ, the first k."""
    src, dst = graph.edge_index.tolist()
    out = set()
    for h in range(w.size(0)):
        for i in range(graph.num_dst):
            edges = [j for j, t in zip(src, dst, strict=True) if t == i]
            edges = [j for j in edges if tau is None or float(w[h, i, j]) >= tau]
            edges.sort(key=lambda j: -float(w[h, i, j]))  # stable: ties keep the edge order
            out |= {(j, i, h) for j in edges[: k if k is not None else len(edges)]}
    return out


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", sorted(GRAPHS))
@pytest.mark.parametrize(
    "opts", [{"top_k": 2}, {"threshold": 0.2}, {"top_k": 3, "threshold": 0.1}, {}]
)
def test_kept_edges_and_weights_equal_the_full_computation(
    name: str, opts: dict, path: str
) -> None:
    graph = GRAPHS[name]()
    q, k = _qk(graph)
    sp = _extract(q, k, graph, SCORE, path, budget=40, **opts)  # many blocks of rows
    dense = _dense_weights(q, k, graph)  # [H, N_t, N_s]
    assert _rows(sp) == _expected(dense, graph, opts.get("top_k"), opts.get("threshold"))
    src, dst = sp.edge_index
    torch.testing.assert_close(sp.weights, dense[sp.head, dst, src], rtol=0, atol=1e-14)
    full = _full(q, k, graph)  # the unsparsified extraction, on the same graph
    ref = sparsify(full, **opts)
    assert torch.equal(sp.edge_index, ref.edge_index) and torch.equal(sp.head, ref.head)
    torch.testing.assert_close(sp.weights, ref.weights, rtol=0, atol=1e-14)
    torch.testing.assert_close(sp.scores, ref.scores, rtol=0, atol=1e-14)
    alpha = torch.einsum("ehd,ehd->eh", q[dst], k[src]) / math.sqrt(D)  # [K, H]
    torch.testing.assert_close(
        sp.scores, alpha.gather(1, sp.head[:, None])[:, 0], atol=1e-14, rtol=0
    )


@pytest.mark.parametrize("path", PATHS)
def test_no_block_holds_more_than_the_budget_and_no_edges_are_made(path: str) -> None:
    """A causal graph of 60 tokens in blocks of <= 64·H·D values: never its [E, H] weights at
    once, and its edge_index is never built (the rows come from the structure)."""
    graph = ga.causal_graph(60)
    q, k = _qk(graph)
    budget = 64 * H * D
    rows = attention_rows(q, k, graph, SCORE, budget=budget)
    rows.path = path
    blocks = list(rows)
    assert graph._edge_index is None  # the deferred edges were never made
    if path == "grid":  # [H, R, W] over the keys of the rows
        assert all(b.edge is not None and b.scores.shape[1:] == b.edge.shape for b in blocks)
        assert max(b.scores.numel() for b in blocks) <= budget
        assert sum(int(b.edge.sum()) for b in blocks if b.edge is not None) == graph.num_edges
    else:  # the gathered q_i, k_j [e, H, D]
        assert max(b.scores.size(0) * H * D for b in blocks) <= budget
        assert sum(b.scores.size(0) for b in blocks) == graph.num_edges
    assert len(blocks) > 1 and [b.rows.start for b in blocks] == sorted(
        b.rows.start for b in blocks
    )
    sp = _extract(q, k, graph, SCORE, path, top_k=4, budget=budget)
    assert sp.num_edges == H * sum(min(i + 1, 4) for i in range(60))


@pytest.mark.parametrize("path", PATHS)
def test_ties_keep_the_earlier_keys(path: str) -> None:
    """q = 0: every score is 0 and every row is uniform; top-2 keeps keys 0 and 1 of each row."""
    graph = ga.causal_graph(6)
    q, k = torch.zeros(6, H, D, dtype=torch.float64), torch.randn(6, H, D, dtype=torch.float64)
    sp = _extract(q, k, graph, SCORE, path, top_k=2)
    want = {(j, i, h) for h in range(H) for i in range(6) for j in range(min(i + 1, 2))}
    assert _rows(sp) == want
    assert torch.equal(sp.weights, 1.0 / (sp.edge_index[1] + 1).double())  # the model's 1/(i+1)


@pytest.mark.parametrize("path", PATHS)
def test_threshold_edges_zero_and_one(path: str) -> None:
    graph = ga.causal_graph(5)
    q, k = _qk(graph)
    assert _extract(q, k, graph, SCORE, path, threshold=0).num_edges == graph.num_edges * H
    one = _extract(q, k, graph, SCORE, path, threshold=1)  # only token 0's own edge has Attn = 1
    assert _rows(one) == {(0, 0, h) for h in range(H)}
    assert torch.equal(one.weights, torch.ones(H, dtype=torch.float64))


@pytest.mark.parametrize("path", PATHS)
def test_weights_are_not_renormalised_unless_asked(path: str) -> None:
    graph = ga.complete_graph(lengths=[6, 5])
    q, k = _qk(graph)
    plain = _extract(q, k, graph, SCORE, path, top_k=2)
    norm = _extract(q, k, graph, SCORE, path, top_k=2, renormalize=True)
    assert torch.equal(plain.edge_index, norm.edge_index) and torch.equal(plain.scores, norm.scores)
    assert plain.metadata()["renormalized"] is False and norm.metadata()["renormalized"] is True
    group = plain.edge_index[1] * H + plain.head  # [K] one group per (target, head)
    sums = torch.zeros(11 * H, dtype=torch.float64).index_add_(0, group, plain.weights)
    assert float(sums.max()) < 1.0  # two of 5-6 edges: the model's weights sum to less than 1
    torch.testing.assert_close(norm.weights, plain.weights / sums[group], rtol=0, atol=1e-15)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kv", [1, 3])
def test_grouped_query_heads_share_their_keys(kv: int, path: str) -> None:
    """H = 6 query heads on kv key heads: head h reads key head h // (6 / kv), as the model."""
    graph = ga.causal_graph(lengths=[4, 7])
    gen = _gen(3)
    q = torch.randn(11, 6, D, generator=gen, dtype=torch.float64)  # [N, H, D]
    k = torch.randn(11, kv, D, generator=gen, dtype=torch.float64)  # [N, H_kv, D]
    score = make_score("scaled_dot", 6, D)
    sp = _extract(q, k, graph, score, path, top_k=3, heads=[0, 4, 5])
    assert sp.num_kv_heads == kv and sp.group_size == 6 // kv
    assert torch.equal(sp.kv_head, sp.head // (6 // kv))
    assert set(sp.head.tolist()) == {0, 4, 5} and sp.heads == (0, 4, 5)
    k_full = k.repeat_interleave(6 // kv, dim=1)  # [N, H, D]
    mask = graph.to_dense_mask()
    logits = torch.einsum("ihd,jhd->hij", q, k_full) / math.sqrt(D)  # [H, N, N]
    dense = torch.softmax(logits.masked_fill(~mask, -math.inf), -1)
    src, dst = sp.edge_index
    torch.testing.assert_close(sp.weights, dense[sp.head, dst, src], rtol=0, atol=1e-14)
    meta = sp.metadata()
    assert meta["num_kv_heads"] == kv and meta["kv_head_of"] == " ".join(
        str(h // (6 // kv)) for h in (0, 4, 5)
    )


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 9),
    edges=st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), max_size=40),
    top_k=st.one_of(st.none(), st.integers(1, 4)),
    tau=st.one_of(st.none(), st.floats(0, 1)),
)
def test_random_graphs_with_duplicates_and_empty_rows(
    n: int, edges: list[tuple[int, int]], top_k: int | None, tau: float | None
) -> None:
    pairs = [(j % n, i % n) for j, i in edges]
    ei = torch.tensor(pairs, dtype=torch.long).view(-1, 2).t()  # [2, E], unsorted, repeats
    graph = ga.TokenGraph(ei, n, n)
    q, k = _qk(graph, seed=n)
    ref = sparsify(_full(q, k, graph), top_k=top_k, threshold=tau)
    for path in (None, "edges"):  # grid when the rows are sorted bands without repeats
        sp = _extract(q, k, graph, SCORE, path, top_k=top_k, threshold=tau, budget=8 * H)
        assert torch.equal(sp.edge_index, ref.edge_index) and torch.equal(sp.head, ref.head)
        torch.testing.assert_close(sp.weights, ref.weights, rtol=0, atol=1e-14)
    per = torch.bincount(sp.edge_index[1] * H + sp.head, minlength=n * H)  # kept per (i, h)
    deg = torch.bincount(ei[1], minlength=n).repeat_interleave(H) if ei.numel() else per * 0
    if top_k is not None:
        assert bool((per <= top_k).all())
    if tau is None and top_k is not None:
        assert torch.equal(per, deg.clamp(max=top_k))


def test_head_attention_is_a_one_head_attention_for_networkx() -> None:
    graph = ga.causal_graph(lengths=[4, 3])
    q, k = _qk(graph)
    sp = _extract(q, k, graph, SCORE, top_k=2, heads=[1, 2])
    att = sp.head_attention(2)
    assert att.num_heads == 1 and att.out.shape == (7, 0)
    G = ga.to_networkx(att)
    rows = sp.head == 2
    assert G.number_of_edges() == int(rows.sum())
    j, i = sp.edge_index[:, rows][:, 0].tolist()
    assert G.edges[j, i]["weight"] == float(sp.weights[rows][0])
    for bad in (0, 3, True, "1"):
        with pytest.raises(ValueError, match=r"one of the extracted heads \[1, 2\]"):
            sp.head_attention(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"top_k": 0}, "top_k must be a positive int"),
        ({"top_k": -2}, "top_k must be a positive int"),
        ({"top_k": True}, "top_k must be a positive int"),
        ({"top_k": 1.5}, "top_k must be a positive int"),
        ({"threshold": -0.1}, r"threshold must be a number in \[0, 1\]"),
        ({"threshold": 1.01}, r"threshold must be a number in \[0, 1\]"),
        ({"threshold": math.nan}, r"threshold must be a number in \[0, 1\]"),
        ({"threshold": "0.5"}, r"threshold must be a number in \[0, 1\]"),
        ({"heads": []}, r"heads must be distinct head indices in 0..2"),
        ({"heads": [3]}, r"heads must be distinct head indices in 0..2 .*got \[3\]"),
        ({"heads": [-1]}, r"heads must be distinct head indices"),
        ({"heads": [1, 1]}, r"heads must be distinct head indices"),
        ({"heads": [True]}, r"heads must be distinct head indices"),
    ],
)
def test_bad_options_are_refused(opts: dict, match: str) -> None:
    graph = ga.causal_graph(4)
    q, k = _qk(graph)
    with pytest.raises(ValueError, match=match):
        _extract(q, k, graph, SCORE, **opts)  # heads: attention_rows; the rest: extract_sparse
    with pytest.raises(ValueError, match=match):
        sparsify(_full(q, k, graph), **opts)


def test_key_heads_must_divide_the_query_heads() -> None:
    graph = ga.causal_graph(4)
    q, _ = _qk(graph)
    with pytest.raises(ValueError, match="num_kv_heads must be a positive int dividing the 3"):
        attention_rows(q, torch.zeros(4, 2, D, dtype=torch.float64), graph, SCORE)
    full = _full(q, q, graph)
    for bad in (2, 0, True):
        with pytest.raises(ValueError, match=rf"dividing the 3 heads, got {bad!r}"):
            sparsify(full, top_k=1, num_kv_heads=bad)


@pytest.mark.parametrize("path", PATHS)
def test_per_edge_inputs_follow_their_edges(path: str) -> None:
    """A score reading edge_attr (Graphormer's spatial bias, one distance per edge) on a
    complete graph: the rows come from the edge ids, so each edge gets its own input."""
    graph = ga.complete_graph(lengths=[5, 4])
    q, k = _qk(graph)
    score = make_score("scaled_dot", H, D) + ga.SpatialBias(H, max_distance=4).double()
    with torch.no_grad():
        score.biases_list()[0].weight.normal_()
    dist = torch.randint(0, 6, (graph.num_edges,), generator=_gen(5))  # [E]
    res = attend(Problem(q, k, k, graph, score, edge_attr=dist, need_weights=True), "edge")
    full = ga.Attention(res.out, graph.edge_index, res.scores, res.weights, graph)
    sp = _extract(q, k, graph, score, path, top_k=2, edge_attr=dist, budget=60 * H)
    ref = sparsify(full, top_k=2)
    assert torch.equal(sp.edge_index, ref.edge_index) and torch.equal(sp.head, ref.head)
    torch.testing.assert_close(sp.weights, ref.weights, rtol=0, atol=1e-14)


def _check_equal_to_full(sp: SparseAttention, full: ga.Attention, **opts: object) -> None:
    ref = sparsify(full, **opts)  # type: ignore[arg-type]
    assert torch.equal(sp.edge_index, ref.edge_index) and torch.equal(sp.head, ref.head)
    torch.testing.assert_close(sp.weights, ref.weights, rtol=0, atol=1e-14)
    torch.testing.assert_close(sp.scores, ref.scores, rtol=0, atol=1e-14)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("top_k", [1, 2, 3, 4, 5])
def test_ties_across_the_kth_weight_keep_the_lower_keys(top_k: int, path: str) -> None:
    """Keys 1, 3 and 5 are equal, so every query weighs them equally: wherever they straddle
    the k-th largest weight, the lower keys are kept (the rule, by a plain loop)."""
    graph = ga.complete_graph(6)
    q, k = _qk(graph, seed=7)
    k[3] = k[1]
    k[5] = k[1]
    sp = _extract(q, k, graph, SCORE, path, top_k=top_k)
    assert _rows(sp) == _expected(_dense_weights(q, k, graph), graph, top_k, None)
    _check_equal_to_full(sp, _full(q, k, graph), top_k=top_k)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "opts", [{"top_k": 2}, {"threshold": 0.0}, {"top_k": 3, "renormalize": True}]
)
def test_minus_infinity_scores_are_edges_of_weight_zero(opts: dict, path: str) -> None:
    """A per-edge bias of −∞ (a float mask on the edges): those edges weigh 0 and still count
    as edges, and a query whose every score is −∞ gets weights 0, never NaN, as on the edge
    backend."""
    from gatattn.interop.masks import AttnMaskBias

    graph = ga.complete_graph(lengths=[4, 5])
    q, k = _qk(graph)
    bias = torch.zeros(graph.num_edges, H, dtype=torch.float64)  # [E, H]
    src, dst = graph.edge_index
    bias[(src + dst) % 3 == 0] = -math.inf
    bias[dst == 6] = -math.inf  # every edge into token 6
    score = make_score("scaled_dot", H, D) + AttnMaskBias()
    attr = {"attn_mask": bias}
    res = attend(Problem(q, k, k, graph, score, edge_attr=attr, need_weights=True), "edge")
    assert res.weights is not None and not bool(res.weights.isnan().any())
    full = ga.Attention(res.out, graph.edge_index, res.scores, res.weights, graph)
    sp = _extract(q, k, graph, score, path, edge_attr=attr, budget=6 * H, **opts)  # type: ignore[arg-type]
    _check_equal_to_full(sp, full, **opts)
    row6 = sp.edge_index[1] == 6
    assert bool(row6.any()) and bool((sp.weights[row6] == 0).all())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bias", ["alibi", "relative_position"])
def test_position_biases_by_their_dense_form(bias: str, path: str) -> None:
    """ALiBi / T5-style buckets on a causal batch: the grid adds their dense form over the
    positions of each sequence; equal to the edge backend's per-edge formula."""
    graph = ga.causal_graph(lengths=[7, 5])
    q, k = _qk(graph)
    score = make_score(f"scaled_dot+{bias}", H, D).double()
    with torch.no_grad():
        for p in score.parameters():
            p.normal_(generator=_gen(2))
    rows = attention_rows(q, k, graph, score, budget=9 * H)
    assert rows.path == "grid" and rows.layout.kind == "intervals"
    res = attend(Problem(q, k, k, graph, score, need_weights=True), "edge")
    full = ga.Attention(res.out, graph.edge_index, res.scores, res.weights, graph)
    _check_equal_to_full(_extract(q, k, graph, score, path, top_k=3, budget=9 * H), full, top_k=3)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ["additive", "bilinear", "cosine", "softcap"])
def test_scores_with_per_head_parameters_and_some_heads(name: str, path: str) -> None:
    """Scores other than s·<q, k> (parameters per head) give the same kept pairs for a subset
    of the heads: the grid computes every head's dense form and keeps the chosen ones."""
    graph = ga.complete_graph(lengths=[5, 6])
    q, k = _qk(graph)
    score = make_score(name, H, D).double()
    with torch.no_grad():
        for p in score.parameters():
            p.add_(torch.randn(p.shape, generator=_gen(4), dtype=p.dtype) * 0.3)
    res = attend(Problem(q, k, k, graph, score, need_weights=True), "edge")
    full = ga.Attention(res.out, graph.edge_index, res.scores, res.weights, graph)
    sp = _extract(q, k, graph, score, path, heads=[0, 2], top_k=2, budget=7 * H)
    _check_equal_to_full(sp, full, top_k=2, heads=[0, 2])


@pytest.mark.parametrize("path", PATHS)
def test_cross_attention_rows_and_targets(path: str) -> None:
    """A bipartite batch (queries of sequence b read the keys of sequence b), only some targets,
    and a mask graph with a query that may attend to nothing: equal to the full computation
    restricted to those targets, and no pair of any other target."""
    graph = ga.bipartite_graph([3, 4], [5, 2])
    q, k = _qk(graph)
    targets = torch.tensor([True, False, True, True, False, True, True])
    sp = _extract(q, k, graph, SCORE, path, targets=targets, top_k=2, budget=4 * H)
    ref = sparsify(_full(q, k, graph), top_k=2)
    on = targets[ref.edge_index[1]]  # [K] pairs of the chosen targets
    assert torch.equal(sp.edge_index, ref.edge_index[:, on]) and torch.equal(sp.head, ref.head[on])
    torch.testing.assert_close(sp.weights, ref.weights[on], rtol=0, atol=1e-14)
    mask = torch.rand(2, 5, 6, generator=_gen(9)) > 0.5
    mask[0, 2] = False  # query 2 of sequence 0 has no key
    masked = ga.from_mask(mask)
    q, k = _qk(masked)
    sp = _extract(q, k, masked, SCORE, path, top_k=2, budget=5 * H)
    assert not bool((sp.edge_index[1] == 2).any())
    _check_equal_to_full(sp, _full(q, k, masked), top_k=2)


def test_rows_over_far_apart_keys_take_the_edge_list() -> None:
    """Each query reads keys 0 and N - 1 only: a grid of its rows would be almost all
    non-edges, so the edges are listed (and the result is the same)."""
    n = 40
    dst = torch.arange(n).repeat_interleave(2)
    src = torch.tensor([0, n - 1]).repeat(n)
    graph = ga.TokenGraph(torch.stack([src, dst]), n, n)
    q, k = _qk(graph)
    rows = attention_rows(q, k, graph, SCORE)
    assert rows.layout.kind == "scatter" and rows.path == "edges"
    _check_equal_to_full(extract_sparse(rows, top_k=1), _full(q, k, graph), top_k=1)


@pytest.mark.parametrize("budget", [0, -3, 2.5, True])
def test_a_bad_budget_is_refused(budget: object) -> None:
    graph = ga.causal_graph(4)
    q, k = _qk(graph)
    with pytest.raises(ValueError, match="budget must be a positive int"):
        attention_rows(q, k, graph, SCORE, budget=budget)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("positions", [False, True])
def test_rotary_positions_and_attention_sinks(positions: bool, path: str) -> None:
    """Rotary (its node transform runs once per node, then s·<q, k>), optionally at given
    float positions, with sink logits in each softmax: equal to the edge backend, and the kept
    weights of a query sum to less than 1 even when all its edges are kept."""
    graph = ga.causal_graph(lengths=[6, 5])
    q, k = _qk(graph, seed=3)
    score = make_score("rotary", H, D).double()
    sinks = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)  # [H]
    pos = None
    if positions:
        p = torch.rand(graph.num_dst, generator=_gen(6), dtype=torch.float64) * 9  # [N]
        pos = (p, p)
    call = Problem(q, k, k, graph, score, need_weights=True, positions=pos, sinks=sinks)
    res = attend(call, "edge")
    full = ga.Attention(res.out, graph.edge_index, res.scores, res.weights, graph)
    rows = attention_rows(q, k, graph, score, positions=pos, sinks=sinks, budget=7 * H)
    assert rows.path == "grid"
    rows.path = path
    for opts in ({"top_k": 2}, {"threshold": 0.0}):
        sp = extract_sparse(rows, **opts)  # type: ignore[arg-type]
        _check_equal_to_full(sp, full, **opts)
    group = sp.edge_index[1] * H + sp.head  # [K] all edges kept: per (target, head)
    sums = torch.zeros(graph.num_dst * H, dtype=torch.float64).index_add_(0, group, sp.weights)
    assert float(sums.max()) < 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_weights_within_torchs_own_error(
    dtype: torch.dtype, within_torch_error: Callable[..., None]
) -> None:
    """fp32 / bf16 inputs on the grid: the kept weights' error against the fp64 golden is
    bounded by torch's own (softmax of the masked logits in that dtype), on the pairs kept."""
    graph = ga.causal_graph(lengths=[30, 40])
    q, k = _qk(graph, seed=11)  # fp64 golden inputs
    sp = _extract(q.to(dtype), k.to(dtype), graph, SCORE, "grid", top_k=4)
    assert sp.weights.dtype == dtype and bool(torch.isfinite(sp.weights).all())
    src, dst = sp.edge_index
    gold = _dense_weights(q, k, graph)[sp.head, dst, src]  # [K] fp64
    mask = graph.to_dense_mask()
    logits = torch.einsum("ihd,jhd->hij", q.to(dtype), k.to(dtype)) / math.sqrt(D)
    theirs = torch.softmax(logits.masked_fill(~mask, -math.inf), -1)[sp.head, dst, src]
    within_torch_error(sp.weights, theirs, gold, what=f"kept weights, {dtype}")
