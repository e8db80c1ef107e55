"""Adversarial review of four fixes, through the public API only:

1. the raw edge_index -> TokenGraph cache (``as_token_graph`` / ``_RawGraphs``) keeps no
   reference to the caller's tensor and compares values on every call;
2. ``TokenGraph`` copies an inference-tensor edge_index; values made under inference mode are
   kept apart from the others in the graph's cache;
3. the dense backend's grid gather for ``SpatialBias`` (cells without an edge give 0, closed cells
   -inf; per-edge inputs compared by value on every call); ``AttnMaskBias`` refuses 1-D input;
4. non-finite attention sinks are refused on every backend.

Every output and gradient is compared with an fp64 reference written here from the formula

    Attn_ij = c_ij·exp(α_ij) / Σ_k c_ik·exp(α_ik)  over the in-edges of i (multiplicity c_ij),
    out_i = W_o Σ_j Attn_ij v_j + b_o,  and W_o·0 + b_o for a target without an edge.
"""

from __future__ import annotations

import math
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import gatattn as ga
from gatattn import graph as graph_mod
from gatattn.scores import AttnMaskBias

pytestmark = pytest.mark.usefixtures("one_thread")

H, D = 3, 7
C = H * D  # 21
F64 = torch.float64
BACKENDS = ["dense", "block", "edge"]
PER_EDGE = ["dense", "edge"]  # block runs no bias read from per-edge inputs (it says so)


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    graph_mod.RAW_GRAPHS.clear()


def formula(layer: ga.GraphAttention, x: Tensor, ei: Tensor, bias: Tensor | None = None) -> Tensor:
    """out [N, C] by the formula: scaled-dot α_ij (+ bias [E, H]), softmax over in-edges."""
    n = x.size(0)
    q = layer.q_proj(x).view(n, H, D)
    k = layer.k_proj(x).view(n, H, D)
    v = layer.v_proj(x).view(n, H, D)
    src, dst = ei[0].long(), ei[1].long()
    alpha = (q[dst] * k[src]).sum(-1) / math.sqrt(D)  # [E, H]
    if bias is not None:
        alpha = alpha + bias
    rows = []
    for i in range(n):
        m = dst == i
        if not bool(m.any()):
            rows.append(x.new_zeros(H, D))
            continue
        a = alpha[m]  # [e, H]
        w = torch.exp(a - a.max(0).values)
        w = w / w.sum(0)
        rows.append((w.unsqueeze(-1) * v[src[m]]).sum(0))
    return layer.out_proj(torch.stack(rows).reshape(n, C))


def _layer(seed: int = 0, **kw: object) -> ga.GraphAttention:
    torch.manual_seed(seed)
    return ga.GraphAttention(C, H, **kw).to(F64)  # type: ignore[arg-type]


def _x(n: int, seed: int = 0) -> Tensor:
    return torch.randn(n, C, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _close(a: Tensor, b: Tensor, tol: float = 1e-9) -> None:
    assert a.shape == b.shape
    assert torch.isfinite(a).all()
    assert (a - b).abs().max().item() <= tol if a.numel() else True


def _check_fwd_bwd(
    layer: ga.GraphAttention, x: Tensor, graph: object, ei: Tensor, **kw: object
) -> None:
    """Output and d(out·g)/dx, d/dW_q equal the formula's."""
    x1 = x.clone().requires_grad_(True)
    out = layer(x1, graph, **kw)  # type: ignore[arg-type]
    x2 = x.clone().requires_grad_(True)
    want = formula(layer, x2, ei)
    _close(out, want)
    g = torch.randn_like(out, generator=torch.Generator().manual_seed(3))
    gx1, gw1 = torch.autograd.grad((out * g).sum(), (x1, layer.out_proj.weight))
    gx2, gw2 = torch.autograd.grad((want * g).sum(), (x2, layer.out_proj.weight))
    _close(gx1, gx2)
    _close(gw1, gw2)


edge_lists = st.integers(2, 7).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.lists(
            st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)),
            min_size=1,
            max_size=20,
            unique=True,
        ),
    )
)


def _ei(pairs: list[tuple[int, int]]) -> Tensor:
    return torch.tensor(pairs, dtype=torch.long).view(-1, 2).t().contiguous()


# ---------------------------------------------------------------------------------------------
# 1. the raw-graph cache
# ---------------------------------------------------------------------------------------------
@settings(deadline=None, max_examples=25)
@given(a=edge_lists, b=edge_lists, backend=st.sampled_from(["auto", *BACKENDS]))
def test_raw_cache_id_reuse_any_values(
    a: tuple[int, list[tuple[int, int]]], b: tuple[int, list[tuple[int, int]]], backend: str
) -> None:
    """A freed tensor's id reused by another tensor (equal or different values, shapes, node
    counts) never gives the other graph."""
    layer = _layer(backend=backend)
    n = max(a[0], b[0])
    x = _x(n)
    for pairs in (a[1], b[1], a[1], b[1]):
        ei = _ei(pairs)
        _close(layer(x, ei), formula(layer, x, ei))
        del ei  # refcount frees it now: the next tensor often gets the same id


def test_raw_cache_same_id_other_dtype_shape_nodes() -> None:
    layer = _layer(backend="edge")
    base = _ei([(0, 1), (1, 2), (2, 0), (3, 3)])
    for n in (4, 6):
        x = _x(n)
        for ei in (base, base[:, :2].contiguous(), base[:, 1:], base[:, :0]):
            _close(layer(x, ei), formula(layer, x, ei))
        with pytest.raises(TypeError, match="int64"):
            layer(x, base.int())  # another dtype at a cached tensor's values: refused, not reused


@pytest.mark.parametrize("route", ["inplace", "data", "numpy", "view"])
@pytest.mark.parametrize("target", ["caller", "res.edge_index", "res.graph.edge_index"])
def test_raw_cache_writes_every_route(route: str, target: str) -> None:
    layer = _layer(backend="auto")
    x = _x(5)
    ei = _ei([(0, 1), (1, 2), (2, 3), (3, 4), (4, 0), (0, 0)])
    res = layer(x, ei, return_attention=True)
    _close(res.out, formula(layer, x, ei))
    new = _ei([(4, 4), (3, 1), (1, 1), (2, 2), (0, 3), (2, 1)])
    if target == "caller":
        t = ei
    elif target == "res.edge_index":
        t = res.edge_index
    else:
        assert res.graph is not None
        t = res.graph.edge_index
    try:
        if route == "inplace":
            with torch.no_grad():
                t.copy_(new)
        elif route == "data":
            t.data.copy_(new)
        elif route == "numpy":
            t.numpy()[...] = new.numpy()
        else:
            with torch.no_grad():
                t[1][:] = new[1]
                t[0, :].copy_(new[0])
    except RuntimeError:  # a read-only copy refused the write: nothing to check for this route
        assert target != "caller"
        _close(layer(x, ei), formula(layer, x, ei))
        return
    # the caller's tensor now holds what the user sees; the layer follows it
    out = layer(x, ei, return_attention=True)
    _close(out.out, formula(layer, x, ei))
    assert torch.equal(out.edge_index, ei)


def test_raw_cache_write_between_forward_and_backward() -> None:
    layer = _layer(backend="edge")
    x = _x(5).requires_grad_(True)
    ei = _ei([(0, 1), (1, 2), (2, 3), (3, 4), (4, 0), (1, 0)])
    keep = ei.clone()
    out = layer(x, ei)
    ei.numpy()[...] = _ei([(4, 4), (3, 3), (2, 2), (1, 1), (0, 0), (2, 0)]).numpy()
    g = torch.randn_like(out, generator=torch.Generator().manual_seed(1))
    (gx,) = torch.autograd.grad((out * g).sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    (gx2,) = torch.autograd.grad((formula(layer, x2, keep) * g).sum(), x2)
    _close(gx, gx2)
    _close(layer(x.detach(), ei), formula(layer, x.detach(), ei))


def _buf(h: torch.nn.Module) -> Tensor:
    t = h.ei
    assert isinstance(t, Tensor)
    return t


def test_raw_cache_swap_tensors_and_load_state_dict() -> None:
    class Holder(torch.nn.Module):
        def __init__(self, ei: Tensor) -> None:
            super().__init__()
            self.register_buffer("ei", ei)

    layer = _layer(backend="auto")
    x = _x(5)
    h = Holder(_ei([(0, 1), (1, 2), (2, 3), (3, 4)]))
    _close(layer(x, h.ei), formula(layer, x, _buf(h)))
    other = _ei([(4, 0), (0, 0), (2, 2), (1, 3)])
    torch.utils.swap_tensors(h.ei, other)  # no weakref / strong ref must block this
    _close(layer(x, h.ei), formula(layer, x, _buf(h)))
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        h.load_state_dict({"ei": _ei([(1, 1), (2, 1), (3, 1), (4, 1)])})
    finally:
        torch.__future__.set_swap_module_params_on_conversion(False)
    _close(layer(x, h.ei), formula(layer, x, _buf(h)))


def test_raw_cache_threads() -> None:
    layer = _layer(backend="auto")
    x = _x(6)
    tensors = [_ei([(j, (j + s) % 6) for j in range(6)]) for s in range(4)]
    errors: list[BaseException] = []

    def work(t: Tensor) -> None:
        try:
            for _ in range(5):
                with torch.no_grad():
                    _close(layer(x, t), formula(layer, x, t))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in tensors * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


# ---------------------------------------------------------------------------------------------
# 2. inference-mode graphs
# ---------------------------------------------------------------------------------------------
def _graphs() -> list[tuple[str, object]]:
    return [
        ("window", lambda: ga.window_graph(7, 2)),
        ("complete_lengths", lambda: ga.complete_graph(lengths=[3, 4])),
        ("causal_lengths", lambda: ga.causal_graph(lengths=[5, 2])),
        ("hand", lambda: ga.TokenGraph(_ei([(0, 1), (1, 1), (6, 2), (3, 5)]), 7)),
        (
            "hand_lengths",
            lambda: ga.TokenGraph(_ei([(0, 1), (2, 1), (4, 6), (5, 5)]), 7, lengths=[3, 4]),
        ),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,make", _graphs())
def test_inference_graph_then_training(backend: str, name: str, make: object) -> None:
    layer = _layer(backend=backend)
    x = _x(7)
    with torch.inference_mode():
        g = make()  # type: ignore[operator]
        out_inf = layer(x, g)
    ei = g.edge_index.clone()
    assert not ei.is_inference()
    _close(out_inf, formula(layer, x, ei).detach())
    _check_fwd_bwd(layer, x, g, ei)
    with torch.inference_mode():  # back to inference, then training again
        _close(layer(x, g), formula(layer, x, ei).detach())
    _check_fwd_bwd(layer, x, g, ei)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,make", _graphs())
def test_normal_graph_inference_first(backend: str, name: str, make: object) -> None:
    layer = _layer(backend=backend)
    x = _x(7)
    g = make()  # type: ignore[operator]
    ei = g.edge_index.clone()
    with torch.inference_mode():
        _close(layer(x, g), formula(layer, x, ei).detach())
    _check_fwd_bwd(layer, x, g, ei)
    with torch.inference_mode():
        _close(layer(x, g), formula(layer, x, ei).detach())
    _check_fwd_bwd(layer, x, g, ei)


def test_inference_raw_edge_index_then_training() -> None:
    layer = _layer(backend="auto")
    x = _x(5)
    with torch.inference_mode():
        ei = _ei([(0, 1), (1, 2), (2, 3), (4, 4)])
        _close(layer(x, ei), formula(layer, x, ei).detach())
        g = ga.TokenGraph(ei, 5)
    _check_fwd_bwd(layer, x, ei, ei.clone())
    _check_fwd_bwd(layer, x, g, ei.clone())


@pytest.mark.parametrize(
    "backend,dist_in_inference",
    [
        ("dense", True),
        ("dense", False),
        ("edge", True),
        ("edge", False),
    ],
)
def test_inference_graph_spatial_buckets(backend: str, dist_in_inference: bool) -> None:
    """Per-bucket padding on dense with SpatialBias, graph (and distances) made in inference."""
    torch.manual_seed(0)
    sp = ga.SpatialBias(H, max_distance=3)
    layer = ga.GraphAttention(C, H, score=ga.make_score("scaled_dot", H, D) + sp, backend=backend)
    layer = layer.to(F64)
    x = _x(9)
    with torch.inference_mode():
        g = ga.TokenGraph(
            _ei([(0, 1), (1, 0), (2, 2), (3, 4), (5, 8), (8, 5), (6, 7)]), 9, lengths=[3, 6]
        )
        dist = torch.tensor([1, 1, 0, 2, 3, 4, 1]) if dist_in_inference else None
    if dist is None:
        dist = torch.tensor([1, 1, 0, 2, 3, 4, 1])
    with torch.inference_mode():
        out_inf = layer(x, g, edge_attr=dist)
    ei, d = g.edge_index.clone(), dist.clone()
    want = formula(layer, x, ei, sp.weight[d])
    _close(out_inf, want.detach())
    out = layer(x, g, edge_attr=d)
    _close(out, want)
    gw1 = torch.autograd.grad(out.sum(), sp.weight)[0]
    gw2 = torch.autograd.grad(want.sum(), sp.weight)[0]
    _close(gw1, gw2)


# ---------------------------------------------------------------------------------------------
# 3. SpatialBias grid gather, writes into distances, AttnMaskBias 1-D
# ---------------------------------------------------------------------------------------------
def _spatial_layer(
    backend: str, graph_token: bool = False
) -> tuple[ga.GraphAttention, ga.SpatialBias]:
    torch.manual_seed(0)
    sp = ga.SpatialBias(H, max_distance=3, graph_token=graph_token)
    layer = ga.GraphAttention(C, H, score=ga.make_score("scaled_dot", H, D) + sp, backend=backend)
    layer = layer.to(F64)
    return layer, sp


def _table(sp: ga.SpatialBias, d: Tensor) -> Tensor:
    w = sp.weight
    if sp.token_weight is None:
        return w[d]
    return torch.where((d == -1).unsqueeze(-1), sp.token_weight, w[d.clamp(min=0)])


SPATIAL_CASES = [
    # (edges, N, lengths, distances)
    ([(0, 1), (2, 1), (1, 2), (3, 4)], 5, None, [1, 2, 1, 3]),
    ([(0, 1), (1, 0), (2, 3), (3, 4), (4, 3), (5, 3)], 6, [2, 4], [1, 1, 3, 1, 1, 2]),
    ([(0, 1), (1, 0), (2, 3), (3, 2), (4, 6), (6, 5), (7, 7)], 8, [2, 2, 4], [4, 1, 1, 2, 2, 1, 0]),
]


@pytest.mark.parametrize("backend", PER_EDGE)
@pytest.mark.parametrize("case", range(len(SPATIAL_CASES)))
@pytest.mark.parametrize("poison", [math.nan, math.inf, -math.inf, 1e300])
@pytest.mark.parametrize("graph_token", [False, True])
def test_spatial_unread_rows_poisoned(
    backend: str, case: int, poison: float, graph_token: bool
) -> None:
    """Table rows that no edge reads (incl. the distance-0 row) may hold anything."""
    edges, n, lengths, dl = SPATIAL_CASES[case]
    layer, sp = _spatial_layer(backend, graph_token)
    d = torch.tensor(dl)
    if graph_token:
        d = d.clone()
        d[0] = -1
    with torch.no_grad():
        for r in range(sp.weight.size(0)):
            if not bool((d == r).any()):
                sp.weight[r] = poison
    g = ga.TokenGraph(_ei(edges), n, lengths=lengths)
    x = _x(n)
    ei = g.edge_index
    want = formula(layer, x, ei, _table(sp, d))
    out = layer(x, g, edge_attr=d)
    _close(out, want)
    gw = torch.autograd.grad(out.sum(), sp.weight)[0]
    gw2 = torch.autograd.grad(want.sum(), sp.weight)[0]
    _close(gw, gw2)


@pytest.mark.parametrize("backend", PER_EDGE)
@pytest.mark.parametrize("case", range(len(SPATIAL_CASES)))
def test_spatial_neg_inf_read_by_some_edges(backend: str, case: int) -> None:
    """A -inf row read by an edge that has finite siblings gives that edge weight 0."""
    edges, n, lengths, dl = SPATIAL_CASES[case]
    layer, sp = _spatial_layer(backend)
    d = torch.tensor(dl)
    # give each target with 2+ in-edges one edge at distance 3 set to -inf, others != 3
    ei = _ei(edges)
    d = torch.where(d == 3, torch.ones_like(d), d)
    for i in range(n):
        idx = (ei[1] == i).nonzero().view(-1)
        if idx.numel() >= 2:
            d[idx[0]] = 3
    with torch.no_grad():
        sp.weight[3] = -math.inf
    g = ga.TokenGraph(ei, n, lengths=lengths)
    x = _x(n)
    _close(layer(x, g, edge_attr=d), formula(layer, x, ei, _table(sp, d)))


@pytest.mark.parametrize("backend", PER_EDGE)
@pytest.mark.parametrize("route", ["inplace", "data", "numpy"])
def test_spatial_distance_writes_between_calls(backend: str, route: str) -> None:
    edges, n, lengths, dl = SPATIAL_CASES[1]
    layer, sp = _spatial_layer(backend)
    with torch.no_grad():
        sp.weight.copy_(
            torch.randn(sp.weight.shape, dtype=F64, generator=torch.Generator().manual_seed(5))
        )
    g = ga.TokenGraph(_ei(edges), n, lengths=lengths)
    x = _x(n)
    d = torch.tensor(dl)
    for new in ([0, 0, 2, 3, 4, 1], [4, 4, 4, 4, 4, 4], dl):
        _close(layer(x, g, edge_attr=d), formula(layer, x, g.edge_index, _table(sp, d)))
        nt = torch.tensor(new)
        if route == "inplace":
            d.copy_(nt)
        elif route == "data":
            d.data.copy_(nt)
        else:
            d.numpy()[...] = nt.numpy()
    _close(layer(x, g, edge_attr=d), formula(layer, x, g.edge_index, _table(sp, d)))


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_attn_mask_bias_refuses_1d(backend: str) -> None:
    torch.manual_seed(0)
    score = ga.make_score("scaled_dot", H, D) + AttnMaskBias()
    layer = ga.GraphAttention(C, H, score=score, backend=backend).to(F64)
    g = ga.complete_graph(4)
    x = _x(4)
    for _ in range(2):  # twice: the refusal is not only on the first call
        # block refuses the bias itself (it runs no per-edge bias), with its own ValueError
        msg = "per-edge inputs" if backend == "block" else r"AttnMaskBias needs edge_attr \[E, 1\]"
        with pytest.raises(ValueError, match=msg):
            layer(x, g, edge_attr=torch.zeros(g.num_edges, dtype=F64))
    if backend == "block":  # block runs no per-edge bias (it says so); the refusal is what counts
        return
    bias = torch.randn(g.num_edges, H, dtype=F64, generator=torch.Generator().manual_seed(2))
    _close(layer(x, g, edge_attr=bias), formula(layer, x, g.edge_index, bias))


# ---------------------------------------------------------------------------------------------
# 4. non-finite sinks
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("graph", ["raw", "window", "lengths"])
def test_nonfinite_sinks_refused(backend: str, bad: float, graph: str) -> None:
    layer = _layer(backend=backend, sinks=True)
    with torch.no_grad():
        layer.sinks.copy_(torch.tensor([0.1, bad, -0.2]))  # type: ignore[union-attr]
    x = _x(6)
    g: object = {
        "raw": _ei([(0, 1), (1, 2), (5, 5)]),
        "window": ga.window_graph(6, 1),
        "lengths": ga.complete_graph(lengths=[2, 4]),
    }[graph]
    with pytest.raises(ValueError, match="sinks"):
        layer(x, g)  # type: ignore[arg-type]
    with torch.inference_mode(), pytest.raises(ValueError, match="sinks"):
        layer(x, g)  # type: ignore[arg-type]


def test_dense_per_edge_input_made_in_inference_minimal() -> None:
    torch.manual_seed(0)
    sp = ga.SpatialBias(H, max_distance=3)
    layer = ga.GraphAttention(C, H, score=ga.make_score("scaled_dot", H, D) + sp, backend="dense")
    layer = layer.to(F64)
    x = _x(4)
    g = ga.TokenGraph(_ei([(0, 1), (1, 0), (2, 3)]), 4)
    with torch.inference_mode():
        d = torch.tensor([1, 1, 2])
        out = layer(x, g, edge_attr=d)
    _close(out, formula(layer, x, g.edge_index, sp.weight[d.clone()]).detach())


@pytest.mark.parametrize("backend", PER_EDGE)
def test_spatial_distance_write_between_forward_and_backward(backend: str) -> None:
    """A NumPy write into the distances after forward leaves backward on forward's values."""
    edges, n, lengths, dl = SPATIAL_CASES[2]
    layer, sp = _spatial_layer(backend)
    g = ga.TokenGraph(_ei(edges), n, lengths=lengths)
    x = _x(n)
    d = torch.tensor(dl)
    keep = d.clone()
    out = layer(x, g, edge_attr=d)
    d.numpy()[...] = 4
    gw = torch.autograd.grad(out.sum(), sp.weight)[0]
    gw2 = torch.autograd.grad(formula(layer, x, g.edge_index, sp.weight[keep]).sum(), sp.weight)[0]
    _close(gw, gw2)
    _close(layer(x, g, edge_attr=d), formula(layer, x, g.edge_index, sp.weight[d]))


@pytest.mark.parametrize("backend", PER_EDGE)
def test_spatial_distance_swap_tensors_after_forward(backend: str) -> None:
    """The dense memo of per-edge inputs does not block swap_tensors, and sees the new values."""
    edges, n, lengths, dl = SPATIAL_CASES[1]
    layer, sp = _spatial_layer(backend)
    g = ga.TokenGraph(_ei(edges), n, lengths=lengths)
    x = _x(n)
    d = torch.tensor(dl)
    _close(layer(x, g, edge_attr=d), formula(layer, x, g.edge_index, sp.weight[d]))
    torch.utils.swap_tensors(d, torch.tensor([4, 0, 2, 2, 3, 1]))
    _close(layer(x, g, edge_attr=d), formula(layer, x, g.edge_index, sp.weight[d]))
