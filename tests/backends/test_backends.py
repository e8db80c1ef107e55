"""Every fast backend equals the edge backend (and so torch's attention) on every pattern builder.

One parametrised matrix: builder graph × score function × backend, each case run in fp64 and fp32
(plus bf16 against an fp64 golden on CUDA), comparing outputs and the gradients of the input and
every parameter. A backend that cannot run a score or graph must refuse it with a ValueError
naming both (that is checked here too); FlexAttention skips without CUDA.

The edge backend itself equals F.scaled_dot_product_attention / nn.MultiheadAttention
(tests/properties/test_equivalence.py), so equality to it is equality to torch.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable

import pytest
import torch

import gatattn as ga
from gatattn.backends import BACKENDS, Problem
from gatattn.backends.block import block_layout
from gatattn.backends.flex import has_duplicates

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def backend_unsupported(
    name: str,
    score: ga.ScoreFunction,
    g: ga.TokenGraph,
    q: torch.Tensor,
    dropout_active: bool = False,
) -> tuple[str, ...]:
    """Why backend ``name`` refuses ``score`` on ``g`` with queries like ``q`` (every reason;
    (): it runs)."""
    p = Problem(q, q, q, g, score, dropout=0.5 if dropout_active else 0.0, training=dropout_active)
    return BACKENDS[name].supports(p)


H, D = 3, 7  # pairwise-distinct with the graph sizes (N = 37, lengths 5, 13, 19 ...)
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _points(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 3, generator=g)  # [N, 3]


def _duplicates() -> ga.TokenGraph:
    """A raw graph with duplicate edges, self-loops, isolated targets and unsorted edges."""
    g = torch.Generator().manual_seed(5)
    src = torch.randint(0, 37, (300,), generator=g)
    dst = torch.randint(0, 30, (300,), generator=g)  # targets 30..36 have no edges
    ei = torch.cat([torch.stack([src, dst]), torch.stack([src[:40], dst[:40]])], 1)  # [2, 340]
    return ga.TokenGraph(ei, 37, 37)


#: name -> builder; bipartite graphs have N_t != N_s (cross-attention).
GRAPHS: dict[str, Callable[[], ga.TokenGraph]] = {
    "complete": lambda: ga.complete_graph(37),
    "complete_batch": lambda: ga.complete_graph(lengths=[5, 13, 19]),
    "complete_no_self_loops": lambda: ga.complete_graph(37, self_loops=False),
    "causal": lambda: ga.causal_graph(37),
    "causal_batch": lambda: ga.causal_graph(lengths=[11, 26]),
    "window": lambda: ga.window_graph(37, 3),
    "window_dilated_causal_batch": lambda: ga.window_graph(
        lengths=[17, 20], window=2, dilation=2, causal=True
    ),
    "global": lambda: ga.global_graph(37, [0, 5], window=2),
    "bigbird": lambda: ga.bigbird_graph(37, block_size=4, seed=0),
    "block": lambda: ga.block_graph(37, 5),
    "strided": lambda: ga.strided_graph(37, 6),
    "fixed": lambda: ga.fixed_graph(37, 6),
    "star": lambda: ga.star_graph(37),
    "knn": lambda: ga.knn_graph(_points(37), 5),
    "radius": lambda: ga.radius_graph(_points(37), 0.45),
    "bipartite": lambda: ga.bipartite_graph(11, 37),
    "bipartite_batch": lambda: ga.bipartite_graph([4, 7], [20, 17]),
    "raw_duplicates": _duplicates,
}
SCORES = [
    "scaled_dot",
    "dot",
    "additive",
    "gatv2",
    "cosine",
    "bilinear",
    "neg_distance",
    "scaled_dot+alibi",
    "dot+relative_position",
]
FAST = ["dense", "block", "flex"]


def _layer(score: str, backend: str, dtype: torch.dtype, head_dim: int) -> ga.GraphAttention:
    torch.manual_seed(1)
    layer = ga.GraphAttention(H * head_dim, H, score=score, backend=backend)
    with torch.no_grad():  # move the scores off their neutral initial values
        for p in layer.score.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer.to(DEVICE, dtype)


def _run(
    layer: ga.GraphAttention, x: torch.Tensor, xs: torch.Tensor | None, g: ga.TokenGraph
) -> list[torch.Tensor]:
    """[out, grad x, (grad x_src), grad of every parameter] of sum(out * fixed weights)."""
    layer.zero_grad()
    x = x.detach().clone().requires_grad_()
    leaves = [x]
    if xs is not None:
        xs = xs.detach().clone().requires_grad_()
        leaves.append(xs)
    out = layer(x, g, x_src=xs)  # [N_t, C]
    w = torch.linspace(-1, 1, out.numel(), device=out.device, dtype=out.dtype).view_as(out)
    (out * w).sum().backward()
    grads = [t.grad for t in leaves] + [p.grad for p in layer.parameters()]
    assert all(gr is not None for gr in grads)
    return [out.detach()] + [gr for gr in grads if gr is not None]


def _max_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest error relative to each reference tensor's scale, over outputs and gradients.

    The scale is floored at 1 % of the largest reference scale: some gradients are exactly 0
    in exact arithmetic (a key bias shifts every score of a row equally), so only rounding
    noise is left to compare there."""
    scales = [float(y.double().abs().max()) for y in b]
    floor = 1e-2 * max(scales)
    return max(
        float((x.double() - y.double()).abs().max()) / max(sc, floor)
        for x, y, sc in zip(a, b, scales)
    )


def _inputs(g: ga.TokenGraph, c: int, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(g.num_dst, c, generator=gen, dtype=torch.float64)
    xs = None
    if g.num_src != g.num_dst or g.structure == "bipartite":
        xs = torch.randn(g.num_src, c, generator=gen, dtype=torch.float64).to(DEVICE, dtype)
    return x.to(DEVICE, dtype), xs


#: Graphs the dense backend runs: every graph inside its sequences without repeated edges
#: (tagged ones without reading the edges, the rest by the scatter plan); block and flex run
#: every graph. Scores: dense and flex run dot products only (plus biases), block all but gatv2.
DENSE_GRAPHS = [n for n in GRAPHS if n != "raw_duplicates"]
CASES = (
    [("dense", g, s) for g in DENSE_GRAPHS for s in SCORES[:2] + SCORES[-2:]]
    + [("block", g, s) for g in GRAPHS for s in SCORES if s != "gatv2"]
    + [("flex", g, s) for g in GRAPHS for s in SCORES[:2]]
)
#: Combinations that must be refused with a ValueError naming backend and score.
REFUSED = [
    ("dense", "complete", "additive"),
    ("dense", "raw_duplicates", "scaled_dot"),
    ("dense", "complete", "gatv2"),
    ("block", "window", "gatv2"),
    ("flex", "window", "cosine"),
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("backend", "graph_name", "score"), REFUSED)
def test_forced_backend_refuses(backend: str, graph_name: str, score: str) -> None:
    g = GRAPHS[graph_name]().to(DEVICE)
    layer = _layer(score, backend, torch.float64, D)
    assert backend_unsupported(backend, layer.score, g, torch.empty(0, H, D))  # a reason
    x, xs = _inputs(g, H * D, torch.float64)
    pattern = rf"backend='{backend}' cannot run score '{re.escape(layer.score.name)}' on the"
    with pytest.raises(ValueError, match=pattern):
        layer(x, g, x_src=xs)


@pytest.mark.parametrize(("backend", "graph_name", "score"), CASES)
def test_backend_equals_edge(backend: str, graph_name: str, score: str, within_torch_error) -> None:
    """fp64: equal to the edge backend to 1e-10. fp32: both against the fp64 golden (the edge
    backend in fp64), the fast backend's error within a multiple of the edge backend's own."""
    g = GRAPHS[graph_name]().to(DEVICE)
    head_dim = 16 if backend == "flex" else D  # FlexAttention kernels want D >= 16
    probe = _layer(score, backend, torch.float64, head_dim)
    q_like = torch.empty(0, H, head_dim, device=DEVICE, dtype=torch.float32)
    why = backend_unsupported(backend, probe.score, g, q_like)
    if any("needs CUDA" in w for w in why):
        pytest.skip("; ".join(why))
    assert why == (), why
    dtypes = [torch.float32] if backend == "flex" else [torch.float64, torch.float32]
    for dtype in dtypes:
        fast = _layer(score, backend, dtype, head_dim)
        edge = copy.deepcopy(fast)
        edge.backend = "edge"
        x, xs = _inputs(g, H * head_dim, dtype)
        got, want = _run(fast, x, xs, g), _run(edge, x, xs, g)
        if dtype == torch.float64:
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, atol=TOL[dtype], rtol=TOL[dtype])
        else:
            gold_layer = copy.deepcopy(edge).double()
            gx, gxs = _inputs(g, H * head_dim, torch.float64)
            gold = _run(gold_layer, gx, gxs, g)
            inputs = 1 if xs is None else 2
            for i, (a, b, c) in enumerate(zip(got, want, gold, strict=True)):
                factor = 4.0 if i <= inputs else 64.0  # parameters: sums over every edge
                within_torch_error(a, b, c, factor=factor, what=f"{backend} result {i}")
        if dtype == dtypes[0] and score in ("scaled_dot", "dot+relative_position"):
            # exact per-edge scores and weights although a fast path computed the output
            res = fast(x, g, x_src=xs, return_attention=True)
            ref = edge(x, g, x_src=xs, return_attention=True)
            for a, b in ((res.out, ref.out), (res.scores, ref.scores), (res.weights, ref.weights)):
                torch.testing.assert_close(a, b, atol=TOL[dtype], rtol=TOL[dtype])
            assert res.scores.shape == (g.num_edges, H)
    if DEVICE.type == "cuda":  # bf16: no worse than the edge backend against an fp64 golden
        gold = _run(
            _layer(score, "edge", torch.float64, head_dim),
            *_inputs(g, H * head_dim, torch.float64),
            g,
        )
        x, xs = _inputs(g, H * head_dim, torch.bfloat16)
        got = _run(_layer(score, backend, torch.bfloat16, head_dim), x, xs, g)
        ref = _run(_layer(score, "edge", torch.bfloat16, head_dim), x, xs, g)
        assert _max_err(got, gold) <= max(4 * _max_err(ref, gold), 5e-2)


def test_block_layout_counts_duplicate_edges() -> None:
    g = _duplicates()
    for size in (16, 32):
        lay = block_layout(g, size)
        dense = torch.zeros(lay.num_row_blocks * size, lay.num_col_blocks * size, dtype=torch.long)
        for b in range(lay.num_blocks):
            r, c = int(lay.rows[b]), int(lay.cols[b])
            dense[r * size : (r + 1) * size, c * size : (c + 1) * size] = lay.counts[b].long()
        assert torch.equal(dense[: g.num_dst, : g.num_src], g.edge_counts())
        assert int(lay.counts.sum()) == g.num_edges  # multiplicities add up to E
    assert has_duplicates(g) and not has_duplicates(ga.window_graph(37, 3))


def test_block_generic_path_equals_slab_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """scaled_dot on a banded graph takes the SDPA slab path; with the slab path switched off
    (MAX_SLAB_PADDING = 0) the generic tile softmax must give the same outputs and gradients."""
    import gatattn.backends.block as block
    import gatattn.backends.slabs as slabs

    monkeypatch.setattr(block, "BLOCK_SIZES", (16,))  # 16x16 tiles: the slab path applies
    g = ga.TokenGraph(_duplicates().edge_index, 37, 37)  # fresh object: no cached slabs
    layer = _layer("scaled_dot", "block", torch.float64, D)
    x, _ = _inputs(g, H * D, torch.float64)
    assert block._slabs_of(block.block_layout(g)) is not None
    slab = _run(layer, x, None, g)
    monkeypatch.setattr(slabs, "MAX_SLAB_PADDING", 0.0)
    g2 = ga.TokenGraph(g.edge_index, 37, 37)
    assert block._slabs_of(block.block_layout(g2)) is None
    for a, b in zip(_run(layer, x, None, g2), slab):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_block_layout_of_empty_graph_raises() -> None:
    g = ga.TokenGraph(torch.zeros(2, 0, dtype=torch.long), 5, 5)
    with pytest.raises(ValueError, match=r"no edges \(E=0\)"):
        block_layout(g)
    with pytest.raises(ValueError, match="backend='block' cannot run score 'scaled_dot'"):
        ga.GraphAttention(21, 3, backend="block")(torch.randn(5, 21), g)


def test_backends_say_why_they_refuse_a_score() -> None:
    g = ga.complete_graph(5)
    q = torch.randn(5, H, D)
    p = Problem(q, q, q, g, ga.make_score("gatv2", H, D))
    expected = {
        "dense": "score 'gatv2' is not s·<q_i, k_j> (it declares no sdpa_scale)",
        "flex": "score 'gatv2' is not s·<q_i, k_j> (it declares no sdpa_scale)",
        "block": "score 'gatv2' has a pairwise dense form (pairwise_dense)",
    }
    for name, text in expected.items():
        why = BACKENDS[name].supports(p)
        assert any(w.startswith(text) for w in why), why
    assert BACKENDS["edge"].supports(p) == ()
    with pytest.raises(
        ValueError, match="backend='dense' cannot run score 'gatv2' on the complete"
    ):
        ga.backends.attend(p, "dense")


@pytest.mark.parametrize("backend", ["dense", "block"])
def test_attention_dropout_in_training_only(backend: str) -> None:
    g = ga.complete_graph(lengths=[9, 13]) if backend == "dense" else ga.window_graph(22, 4)
    layer = ga.GraphAttention(21, 3, dropout=0.4, backend=backend).double()
    x = torch.randn(22, 21, dtype=torch.float64)
    y_eval = layer.eval()(x, g)
    edge = copy.deepcopy(layer)
    edge.backend = "edge"
    torch.testing.assert_close(y_eval, edge(x, g), atol=1e-10, rtol=0)
    y_train = layer.train()(x, g)
    assert torch.isfinite(y_train).all() and not torch.allclose(y_train, y_eval)


# torch-internal: dynamo instantiates autograd.Function classes while tracing them (ops.py only
# calls ``.apply``), and torch 2.13 warns about that instantiation.
@pytest.mark.filterwarnings(
    "ignore:<class 'torch.autograd.function.Function'> should not be instantiated:DeprecationWarning"
)
def test_edge_path_compiles_without_graph_breaks() -> None:
    layer = ga.GraphAttention(21, 3, backend="edge")
    g, x = ga.window_graph(37, 3), torch.randn(37, 21)
    explained = torch._dynamo.explain(layer)(x, g)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = compiled(x1, g), layer(x2, g)
    y1.sum().backward()
    y2.sum().backward()
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.gpu
def test_flex_refuses_duplicates_and_dropout_on_cuda() -> None:
    q = torch.randn(37, H, 16, device="cuda")
    score = ga.make_score("scaled_dot", H, 16)
    why = backend_unsupported("flex", score, _duplicates().to("cuda"), q)
    assert any("duplicate edges" in w for w in why), why
    why = backend_unsupported(
        "flex", score, ga.window_graph(37, 3).to("cuda"), q, dropout_active=True
    )
    assert any("dropout" in w for w in why), why
