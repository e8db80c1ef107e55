"""Every pattern builder × every score function equals dense attention under the builder's mask.

* scaled_dot (and dot, as SDPA with scale=1) against ``F.scaled_dot_product_attention(q, k, v,
  attn_mask=graph.to_dense_mask())`` built from the layer's own projections;
* every other score and a bias against the dense formula (``gatattn.reference.dense_reference``);
* ``from_padding_mask`` against ``nn.MultiheadAttention(key_padding_mask=...)``;
* hypothesis-generated arbitrary graphs (duplicate edges, self-loops, isolated targets, unsorted
  edges, bipartite N_s != N_t) against the dense reference with edge multiplicities.

Outputs and the gradients with respect to the inputs and every parameter are compared: fp64
within 1e-10, fp32 within 1e-5.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import gatattn as ga
from gatattn.reference import dense_reference

H, D = 3, 7  # pairwise distinct with every N below (5, 6, 8, 9, 11, 13, 16)
C = H * D
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
SDPA_SCALE = {"scaled_dot": None, "dot": 1.0}  # scores that are SDPA with this scale
SCORES = [
    "scaled_dot",
    "dot",
    "additive",
    "gatv2",
    "cosine",
    "bilinear",
    "neg_distance",
    "scaled_dot+alibi",
    "gatv2+relative_position",
    "rotary",
    "softcap",
    "rotary+relative_position",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _points(n: int, isolated: bool = False) -> Tensor:
    pos = torch.rand(n, 3, generator=torch.Generator().manual_seed(n))  # [n, 3]
    if isolated:
        pos[-1] = 100.0  # far from everything: a target with no incoming edge
    return pos


def _random_mask() -> Tensor:
    mask = torch.rand(11, 11, generator=torch.Generator().manual_seed(5)) < 0.3  # [11, 11]
    mask[4] = False  # an isolated target
    return mask


# name -> () -> graph (bipartite graphs get separate key/value features)
BUILDERS: dict[str, Callable[[], ga.TokenGraph]] = {
    "causal": lambda: ga.causal_graph(lengths=[5, 8]),
    "window": lambda: ga.window_graph(11, 2),
    "dilated_causal": lambda: ga.window_graph(window=2, dilation=2, causal=True, lengths=[6, 9]),
    "global": lambda: ga.global_graph(13, [0, 6], window=1),
    "bigbird": lambda: ga.bigbird_graph(13, block_size=2, random_blocks=1, seed=3),
    "block": lambda: ga.block_graph(lengths=[5, 8], block_size=3),
    "strided": lambda: ga.strided_graph(11, 3),
    "fixed": lambda: ga.fixed_graph(13, 4, 2, causal=False),
    "star": lambda: ga.star_graph(lengths=[6, 5]),
    "sink_window": lambda: ga.sink_window_graph(lengths=[9, 4], num_sinks=2, window=3),
    "knn": lambda: ga.knn_graph(_points(11), 4),
    "radius": lambda: ga.radius_graph(_points(13, isolated=True), 0.5, lengths=[5, 8]),
    "padding": lambda: ga.from_padding_mask(
        torch.tensor([[False] * 5 + [True] * 3, [True] * 8])  # row 2 fully padded: 0 output
    ),
    "bipartite": lambda: ga.bipartite_graph([5, 6], [4, 9]),
    "union": lambda: ga.window_graph(11, 1) | ga.global_graph(11, [5]),
    "from_mask": lambda: ga.from_mask(_random_mask()),
}


def _layer(score: str, dtype: torch.dtype, backend: str = "edge") -> ga.GraphAttention:
    layer = ga.GraphAttention(C, H, score=score, backend=backend).to(dtype)
    with torch.no_grad():  # non-zero biases and generic weights, so every gradient is exercised
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def _inputs(g: ga.TokenGraph, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    x = torch.randn(g.num_dst, C, dtype=dtype, requires_grad=True)  # [N_t, C]
    if g.structure != "bipartite":
        return x, None
    return x, torch.randn(g.num_src, C, dtype=dtype, requires_grad=True)  # [N_s, C]


def _sdpa(
    layer: ga.GraphAttention, x: Tensor, x_src: Tensor | None, g: ga.TokenGraph, scale: float | None
) -> Tensor:
    """torch's SDPA under the graph's mask, on the layer's projections."""
    xs = x if x_src is None else x_src
    q = layer.q_proj(x).view(-1, H, D).transpose(0, 1)  # [H, N_t, D]
    k = layer.k_proj(xs).view(-1, H, D).transpose(0, 1)  # [H, N_s, D]
    v = layer.v_proj(xs).view(-1, H, D).transpose(0, 1)  # [H, N_s, D]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=g.to_dense_mask(), scale=scale)
    return layer.out_proj(out.transpose(0, 1).reshape(-1, C))  # [N_t, C]


def _assert_same(
    layer: nn.Module, inputs: list[Tensor], ours: Tensor, ref: Tensor, tol: float
) -> None:
    """Outputs and the gradients w.r.t. ``inputs`` and every parameter agree within ``tol``."""
    assert torch.isfinite(ours).all()
    assert (ours - ref).abs().max().item() <= tol
    wrt = [*inputs, *layer.parameters()]
    cot = torch.randn_like(ours)  # [N_t, C]
    g1 = torch.autograd.grad(ours, wrt, cot, retain_graph=True, allow_unused=True)
    g2 = torch.autograd.grad(ref, wrt, cot, allow_unused=True)
    for a, b in zip(g1, g2, strict=True):
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert torch.isfinite(a).all()
            assert (a - b).abs().max().item() <= tol


def _reference(
    layer: ga.GraphAttention, x: Tensor, x_src: Tensor | None, g: ga.TokenGraph, score: str
) -> Tensor:
    """torch's SDPA where the score is s·<q, k>, else the plain dense formula in torch ops."""
    if score in SDPA_SCALE:
        return _sdpa(layer, x, x_src, g, SDPA_SCALE[score])
    return dense_reference(layer, x, g, x_src=x_src).out


def _check(
    build: Callable[[], ga.TokenGraph],
    score: str,
    dtype: torch.dtype,
    backend: str = "edge",
    within: Callable[..., None] | None = None,
) -> None:
    """Forward and gradients equal torch's: in fp64 within TOL; in fp32 within a multiple of
    torch's own error against the fp64 golden (``within``: the within_torch_error fixture)."""
    g = build()
    layer = _layer(score, dtype, backend)
    x, x_src = _inputs(g, dtype)
    ours = layer(x, g, x_src=x_src)  # [N_t, C]
    ref = _reference(layer, x, x_src, g, score)
    inputs = [x] if x_src is None else [x, x_src]
    if dtype == torch.float64:
        _assert_same(layer, inputs, ours, ref, TOL[dtype])
        return
    assert within is not None
    gold_layer = copy.deepcopy(layer).double()
    gold_inputs = [t.detach().double().requires_grad_() for t in inputs]
    gx, gs = gold_inputs[0], (gold_inputs[1] if x_src is not None else None)
    gold = _reference(gold_layer, gx, gs, g, score)
    cot = torch.randn_like(ours)  # [N_t, C]
    wrt = [*inputs, *layer.parameters()]
    g_ours = torch.autograd.grad(ours, wrt, cot, retain_graph=True, allow_unused=True)
    g_ref = torch.autograd.grad(ref, wrt, cot, allow_unused=True)
    gold_wrt = [*gold_inputs, *gold_layer.parameters()]
    g_gold = torch.autograd.grad(gold, gold_wrt, cot.double(), allow_unused=True)
    within(ours, ref, gold, what="out")
    for i, (a, b, c) in enumerate(zip(g_ours, g_ref, g_gold, strict=True)):
        assert (a is None) == (b is None) == (c is None)
        if a is not None and b is not None and c is not None:
            # a parameter's gradient sums over every edge, with cancellation (softmax gradients
            # sum to 0 per row), in another order than torch's dense sum: a larger multiple
            # (measured: up to 54x, e.g. additive on radius, 6.3e-7 vs 1.2e-8, over 6 seeds)
            factor = 4.0 if i < len(inputs) else 64.0
            within(a, b, c, factor=factor, what=f"gradient {i}")


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("builder", list(BUILDERS))
def test_builder_equals_dense_fp64(builder: str, score: str) -> None:
    _check(BUILDERS[builder], score, torch.float64)


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("builder", list(BUILDERS))
def test_builder_equals_dense_fp32(builder: str, score: str, within_torch_error) -> None:
    """fp32: gatattn's error against the fp64 golden is within a small multiple of torch's own
    (a fixed 1e-5 failed on another CPU at 1.14e-5 for fixed-cosine)."""
    _check(BUILDERS[builder], score, torch.float32, within=within_torch_error)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "builder", ["causal", "window", "bigbird", "block", "padding", "bipartite"]
)
def test_auto_backend_equals_sdpa(builder: str, dtype: torch.dtype, within_torch_error) -> None:
    """The backend that dispatch picks from the structure tag (dense for causal) equals SDPA."""
    _check(BUILDERS[builder], "scaled_dot", dtype, backend="auto", within=within_torch_error)


LARGER: dict[str, Callable[[], ga.TokenGraph]] = {  # E >= 4096: dispatch may pick a fast backend
    "window": lambda: ga.window_graph(window=8, lengths=[200, 301]),
    "bigbird": lambda: ga.bigbird_graph(lengths=[150, 111], block_size=16, seed=1),
    "block": lambda: ga.block_graph(300, 32),
    "strided": lambda: ga.strided_graph(300, 12),
    "global": lambda: ga.global_graph(400, [0, 7], window=6),
    "sink_window": lambda: ga.sink_window_graph(lengths=[250, 173], num_sinks=4, window=16),
}


@pytest.mark.parametrize("score", ["scaled_dot", "scaled_dot+alibi"])
@pytest.mark.parametrize("builder", list(LARGER))
def test_auto_backend_on_larger_graphs_fp64(builder: str, score: str) -> None:
    """Graphs big enough for the block-sparse backend (which reads the tags) equal SDPA / the
    dense formula in fp64. (fp32 is left to the small cases: parameter gradients summed over
    hundreds of tokens exceed an absolute 1e-5 bound in any fp32 implementation, SDPA's too.)"""
    _check(LARGER[builder], score, torch.float64, backend="auto")


@pytest.mark.parametrize(
    "options",
    [{"num_kv_heads": 1}, {"sinks": True}, {"num_kv_heads": 1, "sinks": True, "score": "rotary"}],
    ids=["mqa", "sinks", "mqa+sinks+rotary"],
)
@pytest.mark.parametrize("backend", ["edge", "auto"])
@pytest.mark.parametrize("builder", list(BUILDERS))
def test_builder_with_layer_options_equals_dense_fp64(
    builder: str, backend: str, options: dict
) -> None:
    """Grouped keys/values and attention sinks on every builder: the dense formula (keys and
    values repeated per query head, the sink in every softmax), outputs and gradients."""
    g = BUILDERS[builder]()
    layer = ga.GraphAttention(C, H, backend=backend, **options).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, x_src = _inputs(g, torch.float64)
    ours = layer(x, g, x_src=x_src)
    ref = dense_reference(layer, x, g, x_src=x_src).out
    _assert_same(layer, [x] if x_src is None else [x, x_src], ours, ref, TOL[torch.float64])


def test_padding_mask_graph_equals_multihead_attention() -> None:
    """from_padding_mask gives nn.MultiheadAttention(key_padding_mask=...) on the flat batch."""
    B, L = 3, 5
    mha = nn.MultiheadAttention(C, H, batch_first=True, dtype=torch.float64)
    layer = ga.GraphAttention.from_torch(mha, backend="edge")
    pad = torch.tensor(
        [[False] * 5, [False, False, True, True, True], [True, False, True, False, False]]
    )
    x = torch.randn(B, L, C, dtype=torch.float64, requires_grad=True)
    ref = mha(x, x, x, key_padding_mask=pad, need_weights=False)[0].reshape(B * L, C)
    ours = layer(x.reshape(B * L, C), ga.from_padding_mask(pad))
    assert (ours - ref).abs().max().item() <= 1e-10
    cot = torch.randn_like(ours)
    (gx_ref,) = torch.autograd.grad(ref, [x], cot, retain_graph=True)
    (gx,) = torch.autograd.grad(ours, [x], cot)
    assert (gx - gx_ref).abs().max().item() <= 1e-10


def test_fully_masked_rows_are_zero_like_sdpa() -> None:
    """A fully padded row: SDPA gives 0 for an all-False mask row, and so does gatattn.
    (nn.MultiheadAttention gives NaN for such a row, so it is compared with SDPA only.)"""
    g = BUILDERS["padding"]()
    layer = _layer("scaled_dot", torch.float64)
    x, _ = _inputs(g, torch.float64)
    q = layer.q_proj(x).view(-1, H, D).transpose(0, 1)  # [H, N, D]
    k = layer.k_proj(x).view(-1, H, D).transpose(0, 1)
    v = layer.v_proj(x).view(-1, H, D).transpose(0, 1)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=g.to_dense_mask())  # [H, N, D]
    ours = layer(x, g, return_attention=True)
    assert torch.equal(sdpa[:, 8:], torch.zeros_like(sdpa[:, 8:]))
    assert torch.equal(ours.out[8:], layer.out_proj.bias.expand(8, C))  # attention part is 0


# ---------------------------------------------------------------- arbitrary graphs (hypothesis)
@st.composite
def arbitrary_graphs(draw: st.DrawFn) -> tuple[ga.TokenGraph, bool]:
    """Graphs with duplicate edges, self-loops, isolated targets, unsorted edges, N_s != N_t."""
    bipartite = draw(st.booleans())
    n_t = draw(st.integers(1, 9))
    n_s = draw(st.integers(1, 9)) if bipartite else n_t
    pairs = draw(st.lists(st.tuples(st.integers(0, n_s - 1), st.integers(0, n_t - 1)), max_size=30))
    if pairs:  # duplicate some edges on purpose, and self-loops when N_s = N_t
        pairs += draw(st.lists(st.sampled_from(pairs), max_size=6))
    if not bipartite:
        pairs += [(i, i) for i in draw(st.lists(st.integers(0, n_t - 1), max_size=3))]
    pairs = draw(st.permutations(pairs))  # unsorted
    edge_index = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2).T.contiguous()  # [2, E]
    return ga.TokenGraph(edge_index, n_s, n_t), bipartite


@given(
    case=arbitrary_graphs(),
    score=st.sampled_from(SCORES),
    seed=st.integers(0, 2**16),
)
def test_arbitrary_graph_equals_dense_reference(
    case: tuple[ga.TokenGraph, bool], score: str, seed: int
) -> None:
    g, bipartite = case
    torch.manual_seed(seed)
    layer = _layer(score, torch.float64, backend="edge")
    x = torch.randn(g.num_dst, C, dtype=torch.float64, requires_grad=True)  # [N_t, C]
    x_src = (
        torch.randn(g.num_src, C, dtype=torch.float64, requires_grad=True) if bipartite else None
    )
    res = layer(x, g, x_src=x_src, return_attention=True)
    ref = dense_reference(layer, x, g, x_src=x_src)
    assert res.scores.shape == res.weights.shape == (g.num_edges, H)
    if g.num_edges:  # per-edge α and Attn, duplicates included, in the graph's edge order
        assert (res.scores - ref.scores).abs().max().item() <= 1e-10
        assert (res.weights - ref.weights).abs().max().item() <= 1e-10
    # the weights of each target's incoming edges (multiplicities included) sum to 1, or 0 if none
    sums = torch.zeros(g.num_dst, H, dtype=torch.float64).index_add_(
        0, g.edge_index[1], res.weights
    )
    has_edges = (g.in_degree() > 0).to(torch.float64)[:, None].expand(-1, H)
    assert (sums - has_edges).abs().max().item() <= 1e-10
    _assert_same(layer, [x] if x_src is None else [x, x_src], res.out, ref.out, 1e-10)
