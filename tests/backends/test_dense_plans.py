"""The dense backend's three plans (backends/dense.py; docs/math.md, eq. 5) equal the edge backend.

    out = softmax(s · Q Kᵀ + M) V,   M = Σ biases on edges, −∞ elsewhere

- "mask":    graphs from ``from_mask`` [B, L_q, L_k] / ``from_padding_mask``: SDPA gets the mask
             and the edges are never made;
- "scatter": any graph inside its sequences without repeated edges, and any ScoreBias (its
             per-edge values scattered into M);
- targets with no edge, or whose every edge has bias −∞, give 0 as on the edge backend.

Every comparison is in fp64 against the edge backend (the literal formula), forward and the
gradients of q, k, v and of the bias parameters; the mask plan is also compared with torch's own
F.scaled_dot_product_attention.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import gatattn as ga
from gatattn.backends import BACKENDS, Problem, attend, select_backend
from gatattn.backends.dense import DenseBackend, dense_keys
from gatattn.scores import AttnMaskBias

pytestmark = pytest.mark.usefixtures("one_thread")

H, D = 3, 5
DENSE = BACKENDS["dense"]
assert isinstance(DENSE, DenseBackend)


def _qkv(n_t: int, n_s: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(n_t, H, D), (n_s, H, D), (n_s, H, D)]
    return [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]


def _both(
    g: ga.TokenGraph, score: ga.ScoreFunction, edge_attr: object = None, seed: int = 0
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """[out, grad q, grad k, grad v, grads of score params] on the dense and edge backends."""
    results = []
    for backend in ("dense", "edge"):
        score.zero_grad()
        q, k, v = _qkv(g.num_dst, g.num_src, seed)
        p = Problem(q, k, v, g, score, edge_attr=edge_attr)  # type: ignore[arg-type]
        out = attend(p, backend).out  # [N_t, H, D]
        w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        (out * w).sum().backward()
        extra = [t.grad.clone() for t in score.parameters() if t.grad is not None]
        results.append([out.detach(), q.grad, k.grad, v.grad, *extra])
    return results[0], results[1]


def _assert_equal(a: list[torch.Tensor], b: list[torch.Tensor], tol: float = 1e-10) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x is not None and y is not None
        assert torch.allclose(x, y, atol=tol, rtol=tol), float((x - y).abs().max())


def _plan(g: ga.TokenGraph, score: ga.ScoreFunction) -> str | None:
    q = torch.empty(0, H, D, dtype=torch.float64)
    return DENSE.plan(Problem(q, q, q, g, score))[0]


def test_batched_mask_runs_sdpa_without_making_edges() -> None:
    gen = torch.Generator().manual_seed(3)
    mask = torch.rand(4, 7, 6, generator=gen) < 0.6  # [B, L_q, L_k]
    mask[1, 2] = False  # a query with no key: output 0
    g = ga.from_mask(mask)
    score = ga.make_score("scaled_dot", H, D)
    assert g.structure == "masked" and g.lengths == (7,) * 4 and (g.num_dst, g.num_src) == (28, 24)
    assert _plan(g, score) == "mask"
    q, k, v = _qkv(g.num_dst, g.num_src)
    out = attend(Problem(q, k, v, g, score), "dense").out  # [28, H, D]
    assert g._edge_index is None  # the dense backend never made the edges
    # torch's own attention with the same mask; the empty row is 0 in the graph view
    ref = F.scaled_dot_product_attention(
        q.view(4, 7, H, D).transpose(1, 2),
        k.view(4, 6, H, D).transpose(1, 2),
        v.view(4, 6, H, D).transpose(1, 2),
        attn_mask=mask[:, None] | ~mask.any(-1, keepdim=True)[:, None],
    ).transpose(1, 2)  # [B, L_q, H, D]
    ref = ref.masked_fill(~mask.any(-1)[..., None, None], 0.0).reshape(28, H, D)
    assert torch.allclose(out, ref, atol=1e-12)
    assert torch.equal(out[1 * 7 + 2], torch.zeros(H, D, dtype=torch.float64))
    # the edges, once made, are the mask's: sorted by target then source
    expected = torch.block_diag(*mask.unbind(0))  # [28, 24]
    assert torch.equal(g.to_dense_mask(), expected) and g.num_edges == int(mask.sum())
    _assert_equal(*_both(g, score))


def test_from_mask_copies_the_mask_and_an_edit_withdraws_it() -> None:
    mask = torch.ones(2, 3, 3, dtype=torch.bool).tril()
    g = ga.from_mask(mask)
    mask.fill_(True)  # the caller's tensor: the graph keeps its own copy
    assert torch.equal(g.dense_mask(), torch.ones(2, 3, 3, dtype=torch.bool).tril())
    g.edge_index[0, 0] = 1  # an in-place edit of the (made) edges: the mask no longer holds
    assert g.dense_mask() is None
    score = ga.make_score("scaled_dot", H, D)
    assert _plan(g, score) == "scatter"  # the checked edges, not the stale mask
    _assert_equal(*_both(g, score))


def test_an_expanded_key_mask_stays_compact() -> None:
    keys = torch.tensor([[True, True, False], [True, False, False]])  # [B, L_k]
    g = ga.from_mask(keys[:, None, :].expand(2, 4, 3))  # every query row the same
    assert g.dense_mask(compact=True).shape == (2, 1, 3) and g.dense_mask().shape == (2, 4, 3)
    assert g.num_edges == 4 * 3 and (g.num_dst, g.num_src) == (8, 6)
    full = ga.from_mask(keys[:, None, :].expand(2, 4, 3).clone())
    assert torch.equal(g.edge_index, full.edge_index)
    _assert_equal(*_both(g, ga.make_score("scaled_dot", H, D)))


def test_padding_mask_graph_equals_multihead_attention() -> None:
    pad = torch.tensor([[False, False, True, True], [False] * 4, [True] * 4])  # [B, L]
    g = ga.from_padding_mask(pad)
    assert _plan(g, ga.make_score("scaled_dot", H, D)) == "mask"
    # kept as [B, 1, L_k] (SDPA broadcasts it over queries), read as [B, L_q, L_k]
    assert g.dense_mask(compact=True).shape == (3, 1, 4) and g.dense_mask().shape == (3, 4, 4)
    assert g.num_edges == 4 * (2 + 4) and g._edge_index is None
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(H * D, H, batch_first=True, dtype=torch.float64).eval()
    layer = ga.GraphAttention.from_torch(mha).eval()
    x = torch.randn(3, 4, H * D, dtype=torch.float64)
    ref, _ = mha(x, x, x, key_padding_mask=pad, need_weights=False)
    out = layer(x.reshape(12, H * D), g).view(3, 4, H * D)
    # rows 0 and 1 as torch; the fully padded row 2 attends to nothing: 0 in the graph view
    assert torch.allclose(out[:2], ref[:2], atol=1e-12)
    assert torch.equal(out[2], torch.zeros(4, H * D, dtype=torch.float64))


@pytest.mark.parametrize(
    "build",
    [
        lambda: ga.window_graph(lengths=[9, 4, 12], window=2),
        lambda: ga.bigbird_graph(23, block_size=3, seed=1),
        lambda: ga.knn_graph(torch.randn(17, 2, generator=torch.Generator().manual_seed(0)), 4),
        lambda: ga.bipartite_graph([4, 7], [6, 3]),
        lambda: ga.TokenGraph(torch.tensor([[0, 1, 2, 4], [1, 1, 0, 3]]), 6, 6, lengths=[3, 3]),
    ],
    ids=["window_batch", "bigbird", "knn", "bipartite_batch", "raw_with_empty_rows"],
)
@pytest.mark.parametrize("score_name", ["scaled_dot", "dot+relative_position", "scaled_dot+alibi"])
def test_scatter_plan_equals_edge(build, score_name: str) -> None:
    g = build()
    torch.manual_seed(2)
    score = ga.make_score(score_name, H, D).double()
    with torch.no_grad():
        for t in score.parameters():
            t.add_(0.5 * torch.randn_like(t))
    assert _plan(g, score) in ("scatter", "tagged")
    _assert_equal(*_both(g, score))


def test_edge_feature_bias_runs_dense_on_a_complete_batch() -> None:
    """A per-edge bias (no dense form) on a batch of complete graphs: scattered into M."""
    g = ga.complete_graph(lengths=[5, 2, 7])
    torch.manual_seed(4)
    score = (ga.make_score("scaled_dot", H, D) + ga.EdgeFeatureBias(4, H)).double()
    attr = torch.randn(g.num_edges, 4, dtype=torch.float64)
    assert score.parts()[1][0].kind == "per_edge" and _plan(g, score) == "scatter"
    dense, edge = _both(g, score, attr)
    assert len(dense) == 4 + len(list(score.parameters()))
    _assert_equal(dense, edge)
    q = torch.empty(0, H, D, dtype=torch.float64)
    name, why = select_backend("auto", Problem(q, q, q, g, score, edge_attr=attr))
    assert name == "dense", why


@pytest.mark.parametrize(
    "g",
    [ga.complete_graph(lengths=[4, 4]), ga.bipartite_graph([3, 3], [5, 5]), ga.complete_graph(6)],
    ids=["complete_equal_lengths", "bipartite_batch", "complete"],
)
def test_per_edge_bias_in_grid_order(g: ga.TokenGraph) -> None:
    """Edge e of these graphs is grid cell e: the bias values are the mask, no scatter. A
    per-head −∞ on a whole row still gives 0 there."""
    assert dense_keys(g).tolist() == list(range(g.num_edges))
    gen = torch.Generator().manual_seed(5)
    bias = torch.randn(g.num_edges, H, generator=gen, dtype=torch.float64)
    bias[g.edge_index[1] == 2, 1] = float("-inf")
    score = ga.make_score("scaled_dot", H, D) + AttnMaskBias()
    assert _plan(g, score) == "scatter"
    _assert_equal(*_both(g, score, {"attn_mask": bias}))
    _assert_equal(*_both(g, score, {"attn_mask": bias[:, :1].clamp_min(-1e3)}))


def test_rows_whose_every_edge_is_minus_inf_give_zero() -> None:
    """A per-head −∞ bias on every edge of a row: weight 0 on the edge backend, so 0 here
    (SDPA alone gives NaN there, and NaN gradients)."""
    g = ga.complete_graph(lengths=[3, 4])
    bias = torch.zeros(g.num_edges, H, dtype=torch.float64)
    dst = g.edge_index[1]
    bias[dst == 1, 0] = float("-inf")  # target 1, head 0: every edge masked
    bias[dst == 5, 2] = float("-inf")  # target 5, head 2
    bias[(dst == 4) & (g.edge_index[0] == 3), 1] = float("-inf")  # one edge only
    score = ga.make_score("scaled_dot", H, D) + AttnMaskBias()
    assert _plan(g, score) == "scatter"
    dense, edge = _both(g, score, {"attn_mask": bias})
    _assert_equal(dense, edge)
    assert torch.equal(dense[0][1, 0], torch.zeros(D, dtype=torch.float64))
    assert all(torch.isfinite(t).all() for t in dense)


@pytest.mark.parametrize(
    "g",
    [
        ga.causal_graph(lengths=[1, 4]),
        ga.complete_graph(lengths=[1, 3], self_loops=False),
    ],
    ids=["causal", "complete_no_self_loops"],
)
def test_tagged_rows_without_edges_give_zero(g: ga.TokenGraph) -> None:
    if g.structure == "causal":  # drop the self-loops: target 0 of each sequence has no edge
        ei = g.edge_index[:, g.edge_index[0] != g.edge_index[1]]
        g = ga.TokenGraph(ei, g.num_src, g.num_dst, lengths=g.lengths)
    score = ga.make_score("scaled_dot", H, D)
    assert _plan(g, score) is not None
    dense, edge = _both(g, score)
    _assert_equal(dense, edge)
    assert torch.equal(dense[0][0], torch.zeros(H, D, dtype=torch.float64))


def test_deferred_builders_make_the_same_edges() -> None:
    for g in (
        ga.complete_graph(lengths=[2, 3]),
        ga.causal_graph(4),
        ga.complete_graph(3, self_loops=False),
    ):
        assert g._edge_index is None
        count = g.num_edges  # known without making the edges
        assert g._edge_index is None
        dense = g.to_dense_mask()
        assert g.num_edges == count == int(dense.sum())
        assert g.trusted_structure() == g.structure
    causal = ga.causal_graph(lengths=[2, 3])
    assert causal.edge_index.tolist() == [[0, 0, 1, 2, 2, 3, 2, 3, 4], [0, 1, 1, 2, 3, 3, 4, 4, 4]]
    complete = ga.complete_graph(lengths=[2, 1])
    assert complete.edge_index.tolist() == [[0, 1, 0, 1, 2], [0, 0, 1, 1, 2]]


def test_dense_refuses_what_sdpa_cannot_do() -> None:
    score = ga.make_score("scaled_dot", H, D)
    doubled = ga.TokenGraph(torch.tensor([[0, 0, 1], [1, 1, 0]]), 2, 2)
    assert dense_keys(doubled) == "the graph has duplicate edges (SDPA would count them once)"
    crossing = ga.TokenGraph(torch.tensor([[0], [2]]), 4, 4, lengths=[2, 2])
    assert dense_keys(crossing) == "an edge joins two sequences of the batch"
    q = torch.empty(0, H, D)
    why = DENSE.supports(
        Problem(q, q, q, ga.TokenGraph(torch.tensor([[0, 3], [0, 4]]), 4, 5, lengths=[2, 3]), score)
    )
    assert any("queries come in 2 sequences but keys in 1" in w for w in why), why
    with pytest.raises(
        ValueError, match="dense backend cannot run score 'scaled_dot': .*duplicate"
    ):
        DENSE.run(Problem(q, q, q, doubled, score))


@st.composite
def _graphs(draw: st.DrawFn) -> tuple[ga.TokenGraph, torch.Tensor]:
    """A random graph inside random sequences (no repeated edge) and a per-edge bias [E, H]."""
    lengths = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4))
    seed = draw(st.integers(0, 2**31 - 1))
    p = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    gen = torch.Generator().manual_seed(seed)
    blocks = [torch.rand(m, m, generator=gen) < p for m in lengths]
    mask = torch.block_diag(*blocks)  # [N, N]
    dst, src = mask.nonzero(as_tuple=True)
    perm = torch.randperm(src.numel(), generator=gen)  # any edge order
    g = ga.TokenGraph(torch.stack([src, dst])[:, perm], len(mask), len(mask), lengths=lengths)
    bias = torch.randn(g.num_edges, H, generator=gen, dtype=torch.float64)
    bias[torch.rand(g.num_edges, H, generator=gen) < 0.2] = float("-inf")
    return g, bias


@settings(max_examples=40, deadline=None)
@given(case=_graphs())
def test_random_graphs_with_random_biases_equal_edge(
    case: tuple[ga.TokenGraph, torch.Tensor],
) -> None:
    g, bias = case
    score = ga.make_score("scaled_dot", H, D) + AttnMaskBias()
    _assert_equal(*_both(g, score, {"attn_mask": bias}))
    _assert_equal(*_both(g, ga.make_score("dot", H, D)))
