"""Hostile cases for the backend registry and dispatch (issue 20), against written-out formulas.

Every answer is compared with ``reference`` below: softmax over the in-edges of each target,
written out on a dense [H, N_t, N_s] grid in fp64, each edge counted as often as it occurs, rows
without edges 0 (docs/math.md, eqs. 0-3). Nothing here uses gatattn's own attention code.

- a zoo of graphs (degenerate, bipartite, from masks, edges that cross the sequences of a
  batch, lying tags, duplicates, unsorted) x every backend x two scores, outputs and gradients;
- fp32 / bf16 / fp16 within a small multiple of torch's own SDPA error against the fp64 golden;
- the flex BlockMask built from tiles, run by FlexAttention on CPU (inference), vs the formula;
- the dispatch cache: the same graph with another score, dtype, head size, training mode or
  registry (registered, popped, replaced, reordered) never gives a stale answer;
- what user code gets wrong: a backend returning the wrong shape, dtype or type, ``supports``
  returning a str or None, a score that still lists ``backends``;
- scores that declare unusual ``sdpa_scale`` values; explain and refusals list every backend.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gatattn as ga
from gatattn.backends import BACKENDS, attend, decide
from gatattn.backends.flex import block_mask_for, flex_forward

C, H = 21, 3  # D = 7
D = C // H
RUNNERS = ("edge", "dense", "block", "auto")


def counts(g: ga.TokenGraph) -> torch.Tensor:
    """Edge multiplicities [N_t, N_s] (a duplicate edge counts twice)."""
    c = torch.zeros(g.num_dst, g.num_src, dtype=torch.float64)
    ei = g.edge_index
    c.index_put_((ei[1], ei[0]), torch.ones(ei.size(1), dtype=torch.float64), accumulate=True)
    return c


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, c: torch.Tensor, scale: float
) -> torch.Tensor:
    """out_i = Σ_j c_ij e^{s q_i·k_j} v_j / Σ_j c_ij e^{s q_i·k_j}; 0 where row i has no edge.
    q [N_t, H, D], k and v [N_s, H, D], c [N_t, N_s] -> [N_t, H, D]."""
    if k.size(0) == 0:
        return torch.zeros_like(q)
    s = torch.einsum("ihd,jhd->hij", q, k) * scale  # [H, N_t, N_s]
    s = s.masked_fill(c[None] == 0, -math.inf)
    m = s.amax(-1, keepdim=True).nan_to_num(0.0, neginf=0.0)  # [H, N_t, 1]
    p = c[None] * (s - m).exp()
    den = p.sum(-1, keepdim=True)
    w = p / den.where(den > 0, torch.ones_like(den))  # [H, N_t, N_s]
    return torch.einsum("hij,jhd->ihd", w, v)


def reference(
    layer: ga.GraphAttention,
    x: torch.Tensor,
    g: ga.TokenGraph,
    x_src: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """The layer's formula in fp64 from its own parameters (differentiable in them)."""
    prm = {n: p.double() for n, p in layer.named_parameters()}
    W, b = prm["in_proj_weight"], prm["in_proj_bias"]
    xs = (x if x_src is None else x_src).double()
    q = (x.double() @ W[:C].T + b[:C]).view(-1, H, D)
    k = (xs @ W[C : 2 * C].T + b[C : 2 * C]).view(-1, H, D)
    v = (xs @ W[2 * C :].T + b[2 * C :]).view(-1, H, D)
    out = attention(q, k, v, counts(g), 1 / math.sqrt(D) if scale is None else scale)
    return out.reshape(-1, C) @ prm["out_proj.weight"].T + prm["out_proj.bias"]


def raw(src: list[int], dst: list[int], n_src: int, n_dst: int, **kw: object) -> ga.TokenGraph:
    return ga.TokenGraph(torch.tensor([src, dst]), n_src, n_dst, **kw)  # type: ignore[arg-type]


def random_graph(n_dst: int, n_src: int, e: int, seed: int) -> ga.TokenGraph:
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n_src, (e,), generator=gen)
    return ga.TokenGraph(torch.stack([src, torch.randint(0, n_dst, (e,), generator=gen)]),
                         n_src, n_dst)  # fmt: skip


def _mask3d() -> torch.Tensor:
    m = torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(1)) > 0.5
    m[0, 2] = False  # a query row with no key
    return m


GRAPHS: dict[str, Callable[[], ga.TokenGraph]] = {
    "complete": lambda: ga.complete_graph(5),
    "complete_batch": lambda: ga.complete_graph(lengths=[2, 5, 3]),
    "complete_no_self_len1": lambda: ga.complete_graph(lengths=[1, 4], self_loops=False),
    "causal_batch": lambda: ga.causal_graph(lengths=[3, 1, 6]),
    "window": lambda: ga.window_graph(40, 3),
    "window_dilated_causal": lambda: ga.window_graph(lengths=[20, 13], window=2, dilation=3,
                                                     causal=True),
    "bigbird": lambda: ga.bigbird_graph(48, block_size=4, seed=1),
    "block_batch": lambda: ga.block_graph(lengths=[7, 9], block_size=3),
    "strided": lambda: ga.strided_graph(23, 4),
    "global": lambda: ga.global_graph(17, [0, 16], window=1),
    "star": lambda: ga.star_graph(lengths=[5, 2]),
    "sink_window": lambda: ga.sink_window_graph(lengths=[10, 6], num_sinks=2, window=3),
    "knn": lambda: ga.knn_graph(torch.rand(30, 2, generator=torch.Generator().manual_seed(2)), 4),
    "random_duplicates": lambda: random_graph(11, 11, 60, 0),
    "random_bipartite": lambda: random_graph(7, 13, 30, 1),
    "mask_2d": lambda: ga.from_mask(torch.rand(9, 9, generator=torch.Generator().manual_seed(3)) > 0.6),
    "mask_3d_empty_row": lambda: ga.from_mask(_mask3d()),
    "mask_bipartite": lambda: ga.from_mask(torch.rand(4, 11, generator=torch.Generator().manual_seed(4)) > 0.3),
    "padding": lambda: ga.from_padding_mask(torch.tensor([[False, False, True], [False, True, True]])),
    "bipartite": lambda: ga.bipartite_graph(4, 9),
    "bipartite_batch": lambda: ga.bipartite_graph([2, 3], [4, 1]),
    "crosses_rows": lambda: raw([0, 5, 1, 4], [4, 0, 1, 2], 6, 6, lengths=[3, 3]),
    "lying_complete": lambda: raw([0, 1, 2], [0, 0, 2], 3, 3, structure="complete"),
    "lying_causal_batch": lambda: raw([0, 1, 0, 2], [0, 1, 1, 2], 3, 3, structure="causal",
                                      lengths=[2, 1]),
    "unsorted": lambda: raw([3, 0, 2, 1, 0], [0, 3, 1, 1, 0], 4, 4),
    "one_node": lambda: ga.complete_graph(1),
    "no_edges": lambda: ga.TokenGraph(torch.zeros(2, 0, dtype=torch.long), 4, 4),
    "isolated_tail": lambda: raw([0, 1], [0, 0], 5, 5),
    "zero_nodes": lambda: ga.TokenGraph(torch.zeros(2, 0, dtype=torch.long), 0, 0),
}  # fmt: skip

#: (graph, backend) -> the reason a forced backend must give; every other pair must run.
REFUSED = {
    ("random_duplicates", "dense"): "duplicate edges",
    ("crosses_rows", "dense"): "joins two sequences",
    ("no_edges", "block"): "no edges",
    ("zero_nodes", "block"): "no edges",
    ("zero_nodes", "dense"): "no nodes",
}


def _inputs(g: ga.TokenGraph, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    x = torch.randn(g.num_dst, C, dtype=dtype, requires_grad=True)  # [N_t, C]
    if g.num_src == g.num_dst and "kv_lengths" not in g.params:
        return (x,)
    return x, torch.randn(g.num_src, C, dtype=dtype, requires_grad=True)  # [N_s, C]


def _call(layer: ga.GraphAttention, g: ga.TokenGraph, xs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return layer(xs[0], g, x_src=xs[1]) if len(xs) == 2 else layer(xs[0], g)


# ------------------------------------------------------------------ fp64, every backend
@pytest.mark.parametrize(
    ("backend", "score"), [*((b, "scaled_dot") for b in RUNNERS), ("dense", "dot")]
)
@pytest.mark.parametrize("name", list(GRAPHS))
def test_every_graph_on_every_backend_equals_the_formula(
    name: str, backend: str, score: str
) -> None:
    g = GRAPHS[name]()
    layer = ga.GraphAttention(C, H, score=score, backend=backend).double()
    xs = _inputs(g)
    if (name, backend) in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[name, backend]) as err:
            _call(layer, g, xs)
        assert "every backend, as forced:" in str(err.value)
        assert all(f"  {b}: " in str(err.value) for b in BACKENDS)
        return
    y = _call(layer, g, xs)  # [N_t, C]
    want = reference(layer, xs[0], g, xs[1] if len(xs) == 2 else None,
                     None if score == "scaled_dot" else 1.0)  # fmt: skip
    assert y.shape == want.shape and torch.isfinite(y).all()
    torch.testing.assert_close(y, want, rtol=0, atol=1e-12)
    if y.numel():
        gy = torch.randn_like(want)
        inputs = [*xs, *layer.parameters()]
        got = torch.autograd.grad(y, inputs, gy, allow_unused=True)
        exp = torch.autograd.grad(want, inputs, gy, allow_unused=True)
        for a, b in zip(got, exp):
            a = torch.zeros_like(b) if a is None and b is not None else a
            b = torch.zeros_like(a) if b is None and a is not None else b
            if a is not None:
                torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


# ------------------------------------------------------------------ low precision
LOW_GRAPHS = ["complete_batch", "causal_batch", "window", "mask_3d_empty_row", "bipartite",
              "strided"]  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", RUNNERS)
@pytest.mark.parametrize("name", LOW_GRAPHS)
def test_low_precision_within_torchs_own_error(
    name: str, backend: str, dtype: torch.dtype, within_torch_error: Callable[..., None]
) -> None:
    g = GRAPHS[name]()
    layer = ga.GraphAttention(C, H, backend=backend).double()
    x = torch.randn(g.num_dst, C, dtype=torch.float64)
    xs = None if g.num_src == g.num_dst else torch.randn(g.num_src, C, dtype=torch.float64)
    gold = reference(layer, x, g, xs)
    low = layer.to(dtype)
    ours = low(x.to(dtype), g, x_src=None if xs is None else xs.to(dtype))
    # torch in the same dtype: its projections, SDPA over the graph's mask, its out-projection
    W, b = low.in_proj_weight, low.in_proj_bias
    kv = (x if xs is None else xs).to(dtype)
    q = F.linear(x.to(dtype), W[:C], b[:C]).view(-1, H, D).transpose(0, 1)
    k = F.linear(kv, W[C : 2 * C], b[C : 2 * C]).view(-1, H, D).transpose(0, 1)
    v = F.linear(kv, W[2 * C :], b[2 * C :]).view(-1, H, D).transpose(0, 1)
    mask = g.to_dense_mask()
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(0, 1).reshape(-1, C)
    o = torch.where(mask.any(1)[:, None], o, 0.0)  # rows without a key: 0 (eq. 2's convention)
    theirs = F.linear(o, low.out_proj.weight, low.out_proj.bias)
    within_torch_error(ours, theirs, gold, what=f"{name} {backend} {dtype}")


# ------------------------------------------------------------------ flex from tiles (CPU)
def _unique(g: ga.TokenGraph) -> ga.TokenGraph:
    return ga.TokenGraph(torch.unique(g.edge_index, dim=1), g.num_src, g.num_dst)


FLEX_GRAPHS: dict[str, Callable[[], ga.TokenGraph]] = {
        "complete_130": lambda: ga.complete_graph(130),
    "complete_batch": lambda: ga.complete_graph(lengths=[60, 75, 3]),
    "window_200": lambda: ga.window_graph(200, 16),
    "dilated": lambda: ga.window_graph(260, 5, dilation=7),
    "bigbird": lambda: ga.bigbird_graph(256, block_size=32, seed=0),
    "bipartite_130_300": lambda: ga.bipartite_graph(130, 300),
    "bipartite_batch": lambda: ga.bipartite_graph([60, 90], [200, 7]),
    "random_sparse": lambda: _unique(random_graph(200, 333, 900, 0)),
    "random_dense": lambda: _unique(random_graph(129, 129, 6000, 1)),
    "one_node": lambda: ga.complete_graph(1),
    "empty_rows": lambda: raw([0, 1, 200], [5, 5, 250], 260, 260),
    "crosses_rows": lambda: raw([0, 150, 1], [150, 0, 1], 200, 200, lengths=[130, 70]),
    "mask_3d": lambda: ga.from_mask(torch.rand(2, 130, 130, generator=torch.Generator().manual_seed(5)) > 0.5),
}  # fmt: skip

flex_cpu = pytest.mark.filterwarnings(
    "ignore:flex_attention called without torch.compile:UserWarning"
)


@flex_cpu
@pytest.mark.parametrize(
    ("name", "dtype"),
    [*((n, torch.float32) for n in FLEX_GRAPHS),
     *((n, torch.float64) for n in ("bipartite_batch", "empty_rows", "crosses_rows"))],
)  # fmt: skip
def test_flex_mask_from_tiles_equals_the_formula(name: str, dtype: torch.dtype) -> None:
    from torch.nn.attention.flex_attention import flex_attention

    g = FLEX_GRAPHS[name]()
    q, k, v = (
        torch.randn(n, 2, 16, dtype=torch.float64) for n in (g.num_dst, g.num_src, g.num_src)
    )
    got = flex_forward(q.to(dtype), k.to(dtype), v.to(dtype), g, 0.25, flex_attention)
    want = attention(q, k, v, counts(g), 0.25)
    torch.testing.assert_close(
        got.double(), want, rtol=0, atol=1e-12 if dtype == torch.float64 else 2e-6
    )
    dense = block_mask_for(g, torch.device("cpu")).to_dense()  # [1, 1, row blocks, col blocks]
    tiles = F.pad(g.to_dense_mask(), (0, -g.num_src % 128, 0, -g.num_dst % 128))
    occupied = tiles.view(tiles.size(0) // 128, 128, -1, 128).any(3).any(1)
    assert torch.equal(dense[0, 0].bool(), occupied)  # exactly the tiles that hold an edge


@flex_cpu
def test_flex_full_tiles_and_an_in_place_write() -> None:
    from torch.nn.attention.flex_attention import flex_attention

    g = ga.complete_graph(256)
    bm = block_mask_for(g, torch.device("cpu"))
    assert bm.full_kv_num_blocks is not None and bm.full_kv_num_blocks.sum() == 4
    assert bm.kv_num_blocks.sum() == 0  # every tile full: no mask_mod runs
    cut = block_mask_for(ga.complete_graph(130), torch.device("cpu"))
    assert cut.full_kv_num_blocks is None or cut.full_kv_num_blocks.sum() <= 1  # cut tiles
    # an in-place write to edge_index after the mask was built: the next mask follows the
    # graph's current edges (or, where the accessor hands out a copy, nothing changed)
    h = ga.window_graph(200, 3)
    q = torch.randn(200, 2, 16)
    flex_forward(q, q, q, h, 0.25, flex_attention)
    h.edge_index[0, :50] = torch.arange(150, 200)  # new, distinct far sources
    got = flex_forward(q, q, q, h, 0.25, flex_attention)
    want = attention(q.double(), q.double(), q.double(), counts(h), 0.25)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-6)


# ------------------------------------------------------------------ the dispatch cache
@pytest.fixture
def registry() -> Iterator[None]:
    """Whatever a test registers, pops or replaces is undone."""
    saved = dict(BACKENDS)
    yield
    BACKENDS.clear()
    BACKENDS.update(saved)


class Recorder(ga.Backend):
    """Runs everything through the edge backend and counts its calls."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls = 0

    def supports(self, p: ga.Problem) -> tuple[str, ...]:
        return ()

    def run(self, p: ga.Problem) -> ga.BackendOutput:
        self.calls += 1
        return BACKENDS["edge"].run(p)


def _first(layer: ga.GraphAttention, x: torch.Tensor, g: ga.TokenGraph) -> str:
    return layer.explain_backend(x, g).split(":")[0]


@pytest.mark.usefixtures("registry")
def test_registry_changes_are_seen_by_a_graph_already_decided() -> None:
    g = ga.complete_graph(lengths=[5, 7])
    x = torch.randn(12, C, dtype=torch.float64)
    layer = ga.GraphAttention(C, H).double()
    want = reference(layer, x, g)
    torch.testing.assert_close(layer(x, g), want, rtol=0, atol=1e-12)
    assert _first(layer, x, g) == "dense"
    rec = Recorder()
    ga.register_backend(rec, before="dense")  # registered after the decision was cached
    torch.testing.assert_close(layer(x, g), want, rtol=0, atol=1e-12)
    assert rec.calls == 1 and _first(layer, x, g) == "recorder"
    assert "  recorder: chosen" in layer.explain_backend(x, g)
    BACKENDS.pop("recorder")  # as docs/backends.md does
    torch.testing.assert_close(layer(x, g), want, rtol=0, atol=1e-12)
    assert rec.calls == 1 and _first(layer, x, g) == "dense"
    items = list(BACKENDS.items())  # reordered in place: edge first
    BACKENDS.clear()
    BACKENDS.update(reversed(items))
    assert _first(layer, x, g) == "edge"
    torch.testing.assert_close(layer(x, g), want, rtol=0, atol=1e-12)
    BACKENDS.clear()
    BACKENDS.update(items)
    BACKENDS["dense"] = Recorder()  # replaced under the same name
    layer(x, g)
    assert BACKENDS["dense"].calls == 1  # type: ignore[attr-defined]


def test_the_same_graph_with_another_score_dtype_head_size_or_mode() -> None:
    g = ga.complete_graph(lengths=[5, 7])
    x = torch.randn(12, C, dtype=torch.float64)
    first = ga.GraphAttention(C, H).double()
    first(x, g)
    assert _first(first, x, g) == "dense"
    gat = ga.GraphAttention(C, H, score="gatv2").double()  # no sdpa_scale: not dense
    assert _first(gat, x, g) == "edge"
    torch.testing.assert_close(gat(x, g), gat(x, ga.complete_graph(lengths=[5, 7])))
    for dtype in (torch.float32, torch.bfloat16):  # the same graph, another dtype
        low = ga.GraphAttention(C, H).to(dtype)
        low.load_state_dict(first.state_dict())
        assert torch.isfinite(low(x.to(dtype), g)).all()
    wide = ga.GraphAttention(3 * C, H).double()  # another head size, the same graph
    edge = ga.GraphAttention(3 * C, H, backend="edge").double()
    edge.load_state_dict(wide.state_dict())
    xw = torch.randn(12, 3 * C, dtype=torch.float64)
    torch.testing.assert_close(wide(xw, g), edge(xw, ga.complete_graph(lengths=[5, 7])))
    drop = ga.GraphAttention(C, H, dropout=0.5).double().train()
    drop.load_state_dict(first.state_dict())
    torch.manual_seed(0)
    a = drop(x, g)
    assert not torch.allclose(a, first(x, g))  # dropout ran: no cached eval-mode decision
    drop.eval()
    torch.testing.assert_close(drop(x, g), reference(drop, x, g), rtol=0, atol=1e-12)


def test_cached_decisions_cannot_be_changed_through_what_they_return() -> None:
    g = ga.window_graph(60, 4)
    layer = ga.GraphAttention(C, H).double()
    x = torch.randn(60, C, dtype=torch.float64)
    from gatattn.backends import Problem

    q = torch.randn(60, H, D, dtype=torch.float64)
    p = Problem(q, q, q, g, layer.score)
    d = decide("auto", p)
    with pytest.raises(TypeError):
        d.reasons["edge"] = ("hacked",)  # type: ignore[index]
    with pytest.raises(AttributeError):
        d.name = "flex"  # type: ignore[misc]
    assert decide("auto", p) == d
    text = layer.explain_backend(x, g)
    assert layer.explain_backend(x, g) == text
    torch.testing.assert_close(attend(p).out, attention(q, q, q, counts(g), D**-0.5),
                               rtol=0, atol=1e-12)  # fmt: skip


@pytest.mark.parametrize("backend", ["dense", "block"])
@pytest.mark.parametrize(
    "accessor",
    ["csr", "edge_counts", "in_degree", "positions", "sequence", "to_dense_mask", "dense_mask",
     "params"],
)  # fmt: skip
def test_writes_through_accessors_never_change_an_answer(accessor: str, backend: str) -> None:
    g = ga.from_mask(_mask3d())
    layer = ga.GraphAttention(C, H, score="scaled_dot+alibi", backend=backend).double()
    x = torch.randn(12, C, dtype=torch.float64)
    before = layer(x, g)
    got = getattr(g, accessor)() if accessor != "params" else g.params
    for t in got if isinstance(got, tuple) else [got]:
        if isinstance(t, torch.Tensor):
            t.fill_(1 if t.dtype != torch.bool else True)
        elif isinstance(t, dict):
            t["window"] = 99
    torch.testing.assert_close(layer(x, g), before, rtol=0, atol=0)
    torch.testing.assert_close(layer(x, ga.from_mask(_mask3d())), before, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ user code that is wrong
def _backend(out: Callable[[ga.Problem], object], reasons: object = ()) -> ga.Backend:
    class User(ga.Backend):
        name = "user"

        def supports(self, p: ga.Problem) -> tuple[str, ...]:
            return reasons  # type: ignore[return-value]

        def run(self, p: ga.Problem) -> ga.BackendOutput:
            return out(p)  # type: ignore[return-value]

    return User()


def _zeros(*shape: int, dtype: torch.dtype = torch.float64) -> ga.BackendOutput:
    return ga.BackendOutput(torch.zeros(*shape, dtype=dtype), None, None)


WRONG_OUTPUTS: dict[str, tuple[Callable[[ga.Problem], object], type[Exception], str]] = {
    "one_row_too_many": (lambda p: _zeros(13, H, D), ValueError, r"returned out \[N_t, H, D\] \(13, 3, 7\)"),
    "heads_first": (lambda p: _zeros(H, 12, D), ValueError, r"\(3, 12, 7\).*expected \(12, 3, 7\)"),
    "flat_channels": (lambda p: _zeros(12, C), ValueError, r"\(12, 21\)"),
    "wider_head": (lambda p: _zeros(12, H, D + 1), ValueError, r"\(12, 3, 8\)"),
    "other_dtype": (lambda p: _zeros(12, H, D, dtype=torch.float32), ValueError, "torch.float32"),
    "bad_weights": (lambda p: ga.BackendOutput(torch.zeros_like(p.q), torch.zeros(3), torch.zeros(3)),
                    ValueError, r"returned scores \[E, H\] \(3,\)"),
    "a_tensor": (lambda p: torch.zeros_like(p.q), TypeError, "must return a BackendOutput"),
    "a_tuple": (lambda p: (torch.zeros_like(p.q),), TypeError, "must return a BackendOutput"),
}  # fmt: skip


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("case", list(WRONG_OUTPUTS))
def test_a_backend_that_returns_the_wrong_thing_is_named(case: str, need_weights: bool) -> None:
    fn, error, match = WRONG_OUTPUTS[case]
    ga.register_backend(_backend(fn), before="dense")
    layer = ga.GraphAttention(C, H).double()
    with pytest.raises(error, match=match) as err:
        layer(torch.randn(12, C, dtype=torch.float64), ga.complete_graph(lengths=[5, 7]),
              return_attention=need_weights)  # fmt: skip
    assert "backend 'user'" in str(err.value)


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("forced", [False, True])
@pytest.mark.parametrize("reasons", ["not on Mondays", None, [3], b"bytes"])
def test_supports_must_return_a_tuple_of_str(reasons: object, forced: bool) -> None:
    ga.register_backend(_backend(lambda p: _zeros(5, H, D), reasons), before="dense")
    layer = ga.GraphAttention(C, H, backend="user" if forced else "auto").double()
    with pytest.raises(
        TypeError, match=r"backend 'user': (supports|auto_reasons)\(\) must return a tuple of str"
    ):
        layer(torch.randn(5, C, dtype=torch.float64), ga.complete_graph(5))


@pytest.mark.usefixtures("registry")
def test_a_list_of_reasons_is_accepted_and_a_raising_backend_is_not_hidden() -> None:
    ga.register_backend(_backend(lambda p: _zeros(5, H, D), ["too tired"]), before="dense")
    layer = ga.GraphAttention(C, H).double()
    x = torch.randn(5, C, dtype=torch.float64)
    assert "  user: too tired" in layer.explain_backend(x, ga.complete_graph(5))

    def boom(p: ga.Problem) -> ga.BackendOutput:
        raise RuntimeError("boom from the user's kernel")

    BACKENDS.pop("user")
    ga.register_backend(_backend(boom), before="dense")
    with pytest.raises(RuntimeError, match="boom from the user's kernel"):
        layer(x, ga.complete_graph(5))


def test_a_score_that_still_lists_backends_warns() -> None:
    with pytest.warns(UserWarning, match="sets `backends`, which gatattn no longer reads"):

        class Legacy(ga.ScoreFunction):
            backends = ("edge", "dense")

            def forward(self, q_i: torch.Tensor, k_j: torch.Tensor, edges: object) -> torch.Tensor:
                return (q_i * k_j).sum(-1)

    with pytest.warns(UserWarning, match=r"\(an instance\) sets `backends`"):
        ga.make_score("dot", H, D).backends = ("dense",)
    with pytest.warns(UserWarning, match="sets `backends`"):

        class LegacyBias(ga.ScoreBias):
            backends = ("edge",)

    layer = ga.GraphAttention(C, H, score=Legacy()).double()  # still runs: on the edge backend
    x = torch.randn(6, C, dtype=torch.float64)
    assert _first(layer, x, ga.complete_graph(6)) == "edge"
    torch.testing.assert_close(layer(x, ga.complete_graph(6)),
                               reference(layer, x, ga.complete_graph(6), scale=1.0))  # fmt: skip


def _scale_score(value: object) -> ga.ScoreFunction:
    class Scaled(ga.ScoreFunction):
        name = "scaled"
        has_dense = True

        def sdpa_scale(self, head_dim: int) -> float | None:
            return value  # type: ignore[return-value]

        def forward(self, q_i: torch.Tensor, k_j: torch.Tensor, edges: object) -> torch.Tensor:
            return (q_i * k_j).sum(-1) * float(value)  # type: ignore[arg-type]

        def dense(self, q: torch.Tensor, k: torch.Tensor, ctx: object) -> torch.Tensor:
            return q @ k.transpose(-1, -2) * float(value)  # type: ignore[arg-type]

    return Scaled()


@pytest.mark.parametrize("backend", RUNNERS)
@pytest.mark.parametrize(
    "value", [0.0, -1.0, 1, np.float64(0.3), torch.tensor(0.3, dtype=torch.float64)],
    ids=["zero", "negative", "int", "numpy", "tensor"],
)  # fmt: skip
def test_unusual_sdpa_scales(value: object, backend: str) -> None:
    g = ga.complete_graph(lengths=[2, 4])
    layer = ga.GraphAttention(C, H, score=_scale_score(value), backend=backend).double()
    x = torch.randn(6, C, dtype=torch.float64)
    torch.testing.assert_close(layer(x, g), reference(layer, x, g, scale=float(value)),  # type: ignore[arg-type]
                               rtol=0, atol=1e-12)  # fmt: skip


# ------------------------------------------------------------------ explain and refusals
@pytest.mark.parametrize("dim", [1, 2, 15, 16])
def test_flex_head_size_rule_is_listed_and_auto_never_breaks(dim: int) -> None:
    layer = ga.GraphAttention(H * dim, H).float()
    x = torch.randn(40, H * dim)
    g = ga.window_graph(40, 3)
    text = layer.explain_backend(x, g)
    assert text.splitlines()[1] == "every backend, in priority order:"
    assert [ln.split(":")[0].strip() for ln in text.splitlines()[2:]] == list(BACKENDS)
    assert ("head size D=" in text) == (dim < 16)
    with pytest.raises(ValueError, match="backend='flex' cannot run") as err:
        ga.GraphAttention(H * dim, H, backend="flex")(x, g)
    assert ("head size D=" in str(err.value)) == (dim < 16)
    assert torch.isfinite(layer(x, g)).all()


def test_decisions_leave_the_graph_with_their_score() -> None:
    """A graph that outlives many score objects (a layer built per call, as the Hugging Face
    attention function builds its score per call) keeps no decision of a dead score."""
    from gatattn.backends import Decision

    g = ga.causal_graph(lengths=[3, 5])
    x = torch.randn(8, C)

    def alive() -> int:
        gc.collect()
        return sum(type(o) is Decision for o in gc.get_objects())

    before = alive()
    for _ in range(40):
        ga.GraphAttention(C, H, score="scaled_dot+alibi")(x, g)
    assert alive() - before <= 1


def test_flex_mask_benchmark_table_arithmetic() -> None:
    """docs/benchmarks.md, "Flex masks from tiles": E of a ±128 window over N tokens, and the
    ">=" ratios are lower bounds (the [N, N] bool mask alone over the measured "after")."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md").read_text()
    section = text.split("## Flex masks from tiles")[1].split("\n## ")[0]
    rows = re.findall(r"^\| ([\d,]+) \| ([\d,]+) \| (.+?) \| (\d+) MiB in [\d.]+ s \| (.+?) \|$",
                      section, re.M)  # fmt: skip
    assert len(rows) == 6
    for n_text, e_text, before, after, ratio in rows:
        n, e = int(n_text.replace(",", "")), int(e_text.replace(",", ""))
        assert e == n * 257 - 128 * 129  # ga.window_graph(N, 128)
        lower = n * n / (int(after) * 2**20)  # the mask alone, N² bytes
        if ratio.startswith(">="):
            assert int(ratio[3:-1]) <= lower, (n, ratio, lower)
        else:
            gib = float(before.split(" GiB")[0])
            assert abs(gib * 2**30 / n**2 - 11.0) < 0.1  # "11.0 bytes per mask entry each"
            assert round(gib * 1024 / int(after)) == int(ratio[:-1])


EXPLAINED = {
    "self": (lambda: ga.complete_graph(lengths=[5, 7]), {}),
    "cross": (lambda: ga.bipartite_graph(12, 9), {"x_src": torch.randn(9, C)}),
    "cross_batch": (lambda: ga.bipartite_graph([5, 7], [4, 5]), {"x_src": torch.randn(9, C)}),
    "positions": (lambda: ga.complete_graph(lengths=[5, 7]), {"pos": torch.arange(12) * 3}),
    "batch": (lambda: ga.complete_graph(12), {"batch": torch.tensor([0] * 5 + [1] * 7)}),
}


@pytest.mark.parametrize("score", ["scaled_dot", "scaled_dot+alibi", "rotary"])
@pytest.mark.parametrize("case", list(EXPLAINED))
def test_explain_backend_names_the_backend_forward_runs(
    case: str, score: str, caplog: pytest.LogCaptureFixture
) -> None:
    """explain_backend takes forward's x_src, batch, pos and pos_src (the decision depends on
    them): cross-attention could not be explained before."""
    make, kw = EXPLAINED[case]
    if score == "rotary" and "x_src" in kw:
        kw = {**kw, "pos": torch.arange(12), "pos_src": torch.arange(9)}
    layer = ga.GraphAttention(
        C, H, score=score if score != "rotary" else ga.Rotary(D, rotary_dim=D - 1)
    )
    explained = layer.explain_backend(torch.randn(12, C), make(), **kw).split(":")[0]
    with caplog.at_level("DEBUG", logger="gatattn.dispatch"):
        layer(torch.randn(12, C), make(), **kw)
    ran = [r.getMessage().split()[1] for r in caplog.records if r.name == "gatattn.dispatch"]
    assert ran == [explained]
