"""Adversarial review of issue 23, row P6 (docs/backends.md, docs/architecture.md, the docstrings
of ``as_token_graph`` / ``_RawGraphs`` and ``kernels/grouping.py``): a raw ``edge_index`` tensor
passed to a layer reuses one cached TokenGraph per (tensor, N_s, N_t), and the edge backend's
sums run as one ``embedding_bag`` over a per-graph grouping.

Every case is checked against an fp64 reference written here from the formula alone (no gatattn
helper), over the in-edges of each target with duplicates counted:

    Attn_ij = c_ij·exp(α_ij) / Σ_k c_ik·exp(α_ik),   out_i = W_o Σ_j Attn_ij v_j (+ W_r x_i)

and out_i = W_o·0 + b_o for a target without an edge. The cases write into the SAME edge_index
tensor between calls through every route (in place, views, ``.data``, NumPy, DLPack, resize_,
set_, swap_tensors), between forward and backward, free tensors so that ``id`` is reused, fill
the cache past its bounds, call from threads, and run every score / option / dtype.
"""

from __future__ import annotations

import copy
import math
import pickle
import threading
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import gatattn as ga
from gatattn import graph as graph_mod

pytestmark = pytest.mark.usefixtures("one_thread")

H, D = 3, 5
C = H * D  # 15
F64 = torch.float64


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    graph_mod.RAW_GRAPHS.clear()


# ---------------------------------------------------------------------------------------------
# the independent reference
# ---------------------------------------------------------------------------------------------
def halved_dot(q_i: Tensor, k_j: Tensor) -> Tensor:
    """A plain callable score: <q_i, k_j> / 2."""
    return (q_i * k_j).sum(-1) / 2


def _alpha(layer: ga.GraphAttention, spec: object, qi: Tensor, kj: Tensor) -> Tensor:
    """α [E, H] from the score's formula, written out."""
    d = qi.size(-1)
    if spec == "scaled_dot":
        return (qi * kj).sum(-1) / math.sqrt(d)
    if spec == "dot":
        return (qi * kj).sum(-1)
    if spec == "gatv2":
        score = layer.score
        return (F.leaky_relu(qi + kj, score.negative_slope) * score.att).sum(-1)
    if spec == "edgebias":  # scaled_dot + EdgeFeatureBias: α + (W_b e_ij)_h, added by caller
        return (qi * kj).sum(-1) / math.sqrt(d)
    assert callable(spec)
    return spec(qi, kj)


def reference(
    layer: ga.GraphAttention,
    x: Tensor,
    ei: Tensor,
    spec: object = "scaled_dot",
    *,
    x_src: Tensor | None = None,
    edge_attr: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(out [N_t, C], per-edge weights [E, H]) by the formula, target by target."""
    n_t = x.size(0)
    xs = x if x_src is None else x_src
    n_s = xs.size(0)
    h, d = layer.num_heads, layer.head_dim
    h_kv = layer.num_kv_heads or h
    q = layer.q_proj(x).view(n_t, h, d)
    k = layer.k_proj(xs).view(n_s, h_kv, d).repeat_interleave(h // h_kv, dim=1)
    v = layer.v_proj(xs).view(n_s, h_kv, d).repeat_interleave(h // h_kv, dim=1)
    src, dst = ei[0].long(), ei[1].long()
    qi, kj, vj = q[dst], k[src], v[src]  # [E, H, D]
    if layer.edge_proj is not None:
        assert edge_attr is not None
        e = layer.edge_proj(edge_attr).view(-1, h, d)
        kj, vj = kj + e, vj + e
    alpha = _alpha(layer, spec, qi, kj)  # [E, H]
    if spec == "edgebias":
        assert edge_attr is not None
        alpha = alpha + layer.score.parts()[1][0].proj(edge_attr)
    agg = x.new_zeros(n_t, h, d)
    weights = torch.zeros_like(alpha)
    rows = []
    for i in range(n_t):
        m = dst == i
        if not bool(m.any()):
            rows.append(x.new_zeros(h, d))
            continue
        a = alpha[m]  # [e, H]
        top = a.max(0).values
        if layer.sinks is not None:
            top = torch.maximum(top, layer.sinks)
        ex = torch.exp(a - top)
        den = ex.sum(0)
        if layer.sinks is not None:
            den = den + torch.exp(layer.sinks - top)
        w = ex / den  # [e, H]
        rows.append((w.unsqueeze(-1) * vj[m]).sum(0))
        weights = weights.index_put((m.nonzero().view(-1),), w)
    agg = torch.stack(rows) if rows else agg
    out = layer.out_proj(agg.reshape(n_t, h * d))
    if layer.skip_proj is not None:
        out = out + layer.skip_proj(x)
    return out, weights


def _layer(
    score: object = "scaled_dot", dtype: torch.dtype = F64, **kw: object
) -> ga.GraphAttention:
    torch.manual_seed(0)
    if score == "edgebias":
        sc = ga.make_score("scaled_dot", H, D) + ga.EdgeFeatureBias(edge_dim=2, num_heads=H)
        layer = ga.GraphAttention(C, H, score=sc, **kw)  # type: ignore[arg-type]
    else:
        layer = ga.GraphAttention(C, H, score=score, **kw)  # type: ignore[arg-type]
    if layer.sinks is not None:
        with torch.no_grad():
            layer.sinks.copy_(torch.linspace(-0.5, 0.7, H))
    return layer.to(dtype)


def _x(n: int, seed: int = 0, dtype: torch.dtype = F64) -> Tensor:
    return torch.randn(n, C, dtype=F64, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _close(a: Tensor, b: Tensor, tol: float = 1e-10) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= tol if a.numel() else True


def _check(layer: ga.GraphAttention, x: Tensor, ei: Tensor, spec: object = "scaled_dot") -> None:
    """Output and weights of the layer on the tensor's current edges equal the reference."""
    res = layer(x, ei, return_attention=True)
    want, w = reference(layer, x, ei, spec)
    _close(res.out, want)
    _close(res.weights, w)
    assert torch.equal(res.edge_index, ei)


SCORES: list[object] = ["scaled_dot", "dot", "gatv2", halved_dot]


# ---------------------------------------------------------------------------------------------
# writes into the same tensor through every route
# ---------------------------------------------------------------------------------------------
def _w_inplace(ei: Tensor, new: Tensor) -> None:
    ei.copy_(new)


def _w_view(ei: Tensor, new: Tensor) -> None:
    ei[1][:] = new[1]
    ei[0, :].copy_(new[0])


def _w_data(ei: Tensor, new: Tensor) -> None:
    ei.data.copy_(new)


def _w_numpy(ei: Tensor, new: Tensor) -> None:
    ei.numpy()[...] = new.numpy()


def _w_dlpack(ei: Tensor, new: Tensor) -> None:
    alias = torch.from_dlpack(ei)
    with torch.no_grad():
        alias.copy_(new)


def _w_nograd(ei: Tensor, new: Tensor) -> None:
    with torch.no_grad():
        ei.copy_(new)


def _w_set(ei: Tensor, new: Tensor) -> None:
    with torch.no_grad():
        ei.set_(new.clone())


def _w_resize(ei: Tensor, new: Tensor) -> None:
    with torch.no_grad():
        ei.set_(ei.clone())  # a resizable storage (NumPy or DLPack may have pinned the old one)
        ei.resize_(new.shape)
        ei.copy_(new)


def _w_swap(ei: Tensor, new: Tensor) -> None:
    torch.utils.swap_tensors(ei, new.clone())


ROUTES: dict[str, Callable[[Tensor, Tensor], None]] = {
    "inplace": _w_inplace,
    "view": _w_view,
    "data": _w_data,
    "numpy": _w_numpy,
    "dlpack": _w_dlpack,
    "nograd": _w_nograd,
    "set_": _w_set,
    "resize_": _w_resize,
}
SAME_SHAPE = {"inplace", "view", "data", "numpy", "dlpack", "nograd"}


@st.composite
def graphs(draw: st.DrawFn, n: int, min_e: int = 0, max_e: int = 14) -> Tensor:
    e = draw(st.integers(min_e, max_e))
    flat = draw(st.lists(st.integers(0, n - 1), min_size=2 * e, max_size=2 * e))
    return torch.tensor(flat, dtype=torch.long).view(2, e)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), n=st.integers(1, 6), score=st.sampled_from(range(len(SCORES))))
def test_write_sequences_every_route(data: st.DataObject, n: int, score: int) -> None:
    """Random write sequences into one tensor: every call equals the formula on its edges."""
    spec = SCORES[score]
    layer = _layer(spec)
    backend_auto = data.draw(st.booleans())
    layer.backend = "auto" if backend_auto else "edge"
    x = _x(n)
    ei = data.draw(graphs(n))
    _check(layer, x, ei, spec)
    for _ in range(data.draw(st.integers(1, 4))):
        route = data.draw(st.sampled_from(sorted(ROUTES)))
        shape_kept = route in SAME_SHAPE
        new = data.draw(graphs(n, ei.size(1), ei.size(1)) if shape_kept else graphs(n))
        ROUTES[route](ei, new)
        assert torch.equal(ei, new)
        _check(layer, x, ei, spec)
        _check(layer, x, ei, spec)  # the second call: a cache hit if any


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_each_route_then_out_of_range_raises(route: str) -> None:
    """After a cached call, a write that puts an index out of range raises naming it."""
    layer = _layer()
    x = _x(5)
    ei = torch.tensor([[0, 1, 2, 3, 4, 2], [1, 2, 3, 4, 0, 2]])
    _check(layer, x, ei)
    bad = ei.clone()
    bad[0, 3] = 7
    ROUTES[route](ei, bad)
    with pytest.raises(ValueError, match="source index 7"):
        layer(x, ei)
    bad[0, 3] = -2
    ROUTES[route](ei, bad)
    with pytest.raises(ValueError, match="-2"):
        layer(x, ei)
    good = bad.clone()
    good[0, 3] = 1
    ROUTES[route](ei, good)
    _check(layer, x, ei)


def test_write_between_forward_and_backward() -> None:
    """Backward uses the edges of its forward, not the tensor's values at backward time."""
    layer = _layer()
    x = _x(6).requires_grad_()
    ei = torch.tensor([[0, 1, 2, 3, 4, 5, 5, 2], [1, 2, 3, 4, 5, 0, 0, 2]])
    old = ei.clone()
    for route in sorted(ROUTES):
        layer.zero_grad()
        x.grad = None
        out = layer(x, ei)
        ROUTES[route](ei, torch.tensor([[5, 4, 3, 2, 1, 0, 0, 0], [0, 0, 1, 1, 2, 2, 3, 3]]))
        out.pow(2).sum().backward()
        gx = x.grad.clone()
        x.grad = None
        reference(layer, x, old)[0].pow(2).sum().backward()
        _close(gx, x.grad)
        ROUTES["inplace" if ei.shape == old.shape else "set_"](ei, old)


def test_same_tensor_different_node_counts() -> None:
    """One tensor, several N: one graph per node count, each right; a smaller N raises."""
    layer = _layer()
    ei = torch.tensor([[0, 1, 2, 0], [1, 2, 0, 0]])
    for n in (3, 5, 3, 8, 5):
        _check(layer, _x(n), ei)
    x_src = _x(7, 1)
    res = layer(_x(4), ei, x_src=x_src, return_attention=True)
    _close(res.out, reference(layer, _x(4), ei, x_src=x_src)[0])
    with pytest.raises(ValueError, match="source index 2"):
        layer(_x(2), ei)


def test_other_feature_dtypes_same_tensor() -> None:
    """The same tensor with fp64, fp32 and bf16 layers: each bounded by torch's own error."""
    ei = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 6, 6, 2], [1, 2, 3, 4, 5, 6, 0, 0, 3, 3]])
    layer64 = _layer()
    x64 = _x(7)
    gold = reference(layer64, x64, ei)[0]
    _check(layer64, x64, ei)
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        low = copy.deepcopy(layer64).to(dt)
        got = low(x64.to(dt), ei).double()
        own = reference(low, x64.to(dt), ei)[0].double()  # torch's own arithmetic in dt
        err_torch = (own - gold).abs().max().item()
        err = (got - gold).abs().max().item()
        assert err <= 4 * err_torch + 4 * torch.finfo(dt).eps, (dt, err, err_torch)
    _check(layer64, x64, ei)


# ---------------------------------------------------------------------------------------------
# identity: freed tensors, id reuse, many tensors, threads
# ---------------------------------------------------------------------------------------------
def test_freed_tensor_id_reuse() -> None:
    """A tensor freed and a new one at the same id with other edges: never the old graph."""
    layer = _layer()
    x = _x(6)
    vals = [
        torch.randint(0, 6, (2, 9), generator=torch.Generator().manual_seed(t)) for t in range(40)
    ]
    hits = 0
    for t in range(20):
        ei = vals[t].clone()
        old_id = id(ei)
        layer(x, ei)
        del ei
        ei2 = vals[t + 20].clone()  # same shape, dtype, device and node counts
        hits += id(ei2) == old_id
        _check(layer, x, ei2)
        del ei2
    assert hits > 0  # the attack reached its target: an id was reused


def test_more_tensors_than_the_cache_holds() -> None:
    """40 live tensors cycled twice: every call right, the cache stays at 32 graphs."""
    layer = _layer()
    x = _x(5)
    eis = [
        torch.randint(0, 5, (2, 3 + i % 7), generator=torch.Generator().manual_seed(i))
        for i in range(40)
    ]
    for _ in range(2):
        for ei in eis:
            _check(layer, x, ei)
    assert len(graph_mod.RAW_GRAPHS) <= graph_mod.RAW_GRAPHS.MAX_ENTRIES


def test_edges_bound_of_the_cache() -> None:
    """Graphs of 1.5 M edges each: at most MAX_EDGES stay cached, and the results stay right."""
    torch.manual_seed(0)
    layer = ga.GraphAttention(2, 1).double()
    x = torch.randn(3, 2, dtype=F64)
    big = [
        torch.randint(0, 3, (2, 1_500_000), generator=torch.Generator().manual_seed(i))
        for i in range(3)
    ]
    outs = []
    with torch.no_grad():
        for ei in big:
            outs.append(layer(x, ei))
        total = sum(g.num_edges for _, g in graph_mod.RAW_GRAPHS._entries.values())
        assert total <= graph_mod.RAW_GRAPHS.MAX_EDGES
        assert len(graph_mod.RAW_GRAPHS) == graph_mod.RAW_GRAPHS.MAX_EDGES // 1_500_000
        over = torch.zeros(2, graph_mod.RAW_GRAPHS.MAX_EDGES + 1, dtype=torch.long)
        layer(x, over)
        assert all(g.num_edges <= 1_500_000 for _, g in graph_mod.RAW_GRAPHS._entries.values())
        # dense counts reference: all three graphs are on 3 nodes
        for ei, out in zip(big, outs, strict=True):
            counts = torch.zeros(3, 3, dtype=F64).index_put_(
                (ei[1], ei[0]), torch.ones(ei.size(1), dtype=F64), accumulate=True
            )
            q, k, v = layer.q_proj(x), layer.k_proj(x), layer.v_proj(x)
            p = counts * torch.exp(q @ k.T / math.sqrt(2))
            want = layer.out_proj((p / p.sum(1, keepdim=True)) @ v)
            _close(out, want, 1e-9)


def test_threads_share_tensors() -> None:
    """4 threads over 40 shared tensors (cache evictions racing with hits): no error, all right."""
    layer = _layer()
    x = _x(5)
    eis = [
        torch.randint(0, 5, (2, 6), generator=torch.Generator().manual_seed(i)) for i in range(40)
    ]
    with torch.no_grad():
        wants = [reference(layer, x, ei)[0] for ei in eis]
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            order = torch.randperm(40, generator=torch.Generator().manual_seed(seed)).tolist()
            with torch.no_grad():
                for _ in range(3):
                    for i in order:
                        _close(layer(x, eis[i]), wants[i])
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_pickle_and_deepcopy_of_layers_after_cached_calls() -> None:
    layer = _layer()
    x = _x(6)
    ei = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 1, 1, 4, 4, 4]])
    _check(layer, x, ei)
    for other in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        _check(other, x, ei)
        res = layer(x, ei, return_attention=True)
        again = pickle.loads(pickle.dumps(res.graph))
        _close(other(x, again), res.out)


# ---------------------------------------------------------------------------------------------
# graph shapes: duplicates, self loops, empty, isolated, N=1, layouts, dtypes, meta
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "edges"),
    [
        (1, [[], []]),  # N=1, E=0
        (1, [[0], [0]]),  # one self loop
        (1, [[0, 0, 0], [0, 0, 0]]),  # triple self loop
        (4, [[], []]),  # E=0
        (5, [[0, 0, 0, 1], [2, 2, 2, 2]]),  # duplicates into one target, others isolated
        (4, [[3, 3], [0, 0]]),
    ],
)
def test_small_graphs(n: int, edges: list[list[int]]) -> None:
    for spec in SCORES:
        layer = _layer(spec)
        ei = torch.tensor(edges, dtype=torch.long).view(2, -1)
        x = _x(n)
        _check(layer, x, ei, spec)
        _check(layer, x, ei, spec)


def test_non_contiguous_edge_index_and_writes_through_its_base() -> None:
    layer = _layer()
    x = _x(6)
    base_t = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [5, 0], [2, 2]])
    ei_t = base_t.t()  # transposed [2, 7]
    _check(layer, x, ei_t)
    base_t[3, 1] = 0
    _check(layer, x, ei_t)
    big = torch.arange(48).remainder(6).view(3, 16)
    strided = big[0:2, ::3]  # [2, 6], strides (16, 3)
    _check(layer, x, strided)
    big.numpy()[1, 3] = 5  # through the base, via NumPy
    _check(layer, x, strided)
    rows = big[1:3]  # a row-offset view
    _check(layer, x, rows)
    big[2].fill_(4)
    _check(layer, x, rows)


@pytest.mark.parametrize(
    "dtype", [torch.int32, torch.int16, torch.uint8, torch.float32, torch.bool]
)
def test_non_long_dtype_raises_naming_it(dtype: torch.dtype) -> None:
    layer = _layer()
    ei = torch.tensor([[0, 1], [1, 0]]).to(dtype)
    with pytest.raises(TypeError, match=str(dtype)):
        layer(_x(3), ei)


def test_meta_edge_index_raises_naming_the_device() -> None:
    layer = _layer()
    with pytest.raises(ValueError, match="meta"):
        layer(_x(3), torch.tensor([[0, 1], [1, 0]], device="meta"))


def test_same_values_other_dtype_through_data_assignment() -> None:
    """``.data =`` an int32 tensor: same values, other dtype -> TypeError, not the cached graph."""
    layer = _layer()
    x = _x(3)
    ei = torch.tensor([[0, 1, 2], [1, 2, 0]])
    _check(layer, x, ei)
    ei.data = ei.int()
    assert ei.dtype == torch.int32
    with pytest.raises(TypeError, match="int32"):
        layer(x, ei)


# ---------------------------------------------------------------------------------------------
# options: scores, edge features, root weight, GQA, sinks, cross attention, batch
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["edge", "auto"])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"edge_dim": 2, "root_weight": True},
        {"num_kv_heads": 1},
        {"sinks": True},
        {"score": "edgebias"},
        {"score": "gatv2", "edge_dim": 2},
        {"score": halved_dot, "sinks": True, "root_weight": True},
    ],
)
def test_options_forward_and_every_gradient(backend: str, kw: dict[str, object]) -> None:
    """Output, weights and the gradients of x, x_src, edge_attr and every parameter."""
    kw = dict(kw)
    spec = kw.pop("score", "scaled_dot")
    layer = _layer(spec, backend=backend, **kw)
    ei = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 6, 6, 1, 0], [1, 2, 3, 4, 5, 6, 0, 0, 3, 3, 7]])
    x = _x(8).requires_grad_()
    ea = torch.randn(ei.size(1), 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    ea.requires_grad_()
    needs_ea = "edge_dim" in kw or spec == "edgebias"
    for step in range(3):  # the same tensor each step, a write before the last
        if step == 2:
            ei[0, 4] = 2
        extra = {"edge_attr": ea} if needs_ea else {}
        res = layer(x, ei, return_attention=True, **extra)
        want, w = reference(layer, x, ei, spec, edge_attr=ea if needs_ea else None)
        _close(res.out, want)
        _close(res.weights, w)
        params = [p for p in layer.parameters() if p.requires_grad]
        inputs = [x, ea] if needs_ea else [x]
        got = torch.autograd.grad(res.out.pow(2).sum(), inputs + params, allow_unused=True)
        exp = torch.autograd.grad(want.pow(2).sum(), inputs + params, allow_unused=True)
        for a, b in zip(got, exp, strict=True):
            if b is None:
                assert a is None or a.abs().max() == 0
            else:
                assert a is not None
                _close(a, b)


def test_cross_attention_and_batch() -> None:
    layer = _layer()
    x, xs = _x(4), _x(6, 1)
    ei = torch.tensor([[0, 5, 5, 2, 3], [0, 0, 1, 3, 3]])
    for _ in range(2):
        res = layer(x, ei, x_src=xs, return_attention=True)
        want, w = reference(layer, x, ei, x_src=xs)
        _close(res.out, want)
        _close(res.weights, w)
    batch = torch.tensor([0, 0, 1, 1, 1, 2])
    eb = torch.tensor([[0, 1, 2, 3, 4, 4, 5], [1, 0, 3, 4, 2, 2, 5]])
    for _ in range(2):
        _close(layer(_x(6), eb, batch=batch), reference(layer, _x(6), eb)[0])


def test_pyg_model_and_sequential() -> None:
    """Inside torch_geometric's Sequential and a Module that passes one edge_index per step."""
    pyg_nn = pytest.importorskip("torch_geometric.nn")
    torch.manual_seed(0)
    att = ga.GraphAttention(C, H).double()
    model = pyg_nn.Sequential(
        "x, edge_index",
        [
            (pyg_nn.GCNConv(C, C).double(), "x, edge_index -> x"),
            torch.nn.ReLU(),
            (att, "x, edge_index -> x"),
        ],
    )
    x = _x(6)
    ei = torch.tensor([[0, 1, 2, 3, 4, 5, 1], [1, 2, 3, 4, 5, 0, 0]])
    for step in range(3):
        if step == 2:
            ei.numpy()[0, 6] = 3
        out = model(x, ei)
        h = torch.relu(model[0](x, ei))
        _close(out, reference(att, h, ei)[0])


# ---------------------------------------------------------------------------------------------
# grouped sums: dtypes, the 2**22 bound, second order, checkpointing, modes, compile, bits
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_bounded_by_torchs_own_error(dtype: torch.dtype) -> None:
    """Outputs and input gradients vs an fp64 golden, bounded by torch's own error in dtype."""
    ei = torch.randint(0, 9, (2, 40), generator=torch.Generator().manual_seed(5))
    l64 = _layer()
    x64 = _x(9).requires_grad_()
    gold = reference(l64, x64, ei)[0]
    (ggold,) = torch.autograd.grad(gold.sum(), x64)
    low = copy.deepcopy(l64).to(dtype)
    xl = x64.detach().to(dtype).requires_grad_()
    for _ in range(2):
        got = low(xl, ei)
        (gg,) = torch.autograd.grad(got.sum(), xl)
        own = reference(low, xl, ei)[0]
        (go,) = torch.autograd.grad(own.sum(), xl)
        for mine, theirs, g in ((got, own, gold), (gg, go, ggold)):
            err = (mine.double() - g).abs().max().item()
            err_t = (theirs.double() - g).abs().max().item()
            assert err <= 4 * err_t + 8 * torch.finfo(dtype).eps * g.abs().max().item(), (
                err,
                err_t,
            )


@pytest.mark.parametrize("extra", [0, 1])
def test_pairs_at_the_grouping_bound(extra: int) -> None:
    """E·H = MAX_GROUPED_PAIRS (grouped) and one edge more (CSR path): both equal the
    formula (fp64)."""
    from gatattn.kernels.grouping import MAX_GROUPED_PAIRS

    torch.manual_seed(0)
    h = 4
    layer = ga.GraphAttention(h, h, backend="edge").double()  # D = 1
    n = 16
    e = MAX_GROUPED_PAIRS // h + extra
    ei = torch.randint(0, n, (2, e), generator=torch.Generator().manual_seed(extra))
    x = torch.randn(n, h, dtype=F64, requires_grad=True)
    out = layer(x, ei)
    (gx,) = torch.autograd.grad(out.pow(2).sum(), x)
    # dense with multiplicities: c_ij exp(α_ij) / Σ_k c_ik exp(α_ik)
    counts = torch.zeros(n, n, dtype=F64).index_put_(
        (ei[1], ei[0]), torch.ones(e, dtype=F64), accumulate=True
    )
    q = layer.q_proj(x).view(n, h).T  # [H, N] (D = 1)
    k = layer.k_proj(x).view(n, h).T
    v = layer.v_proj(x).view(n, h).T
    a = q.unsqueeze(-1) * k.unsqueeze(-2)  # [H, N, N]
    p = counts * torch.exp(a - a.max(-1, keepdim=True).values)
    agg = ((p / p.sum(-1, keepdim=True)) @ v.unsqueeze(-1)).squeeze(-1).T  # [N, H]
    want = layer.out_proj(agg)
    (gw,) = torch.autograd.grad(want.pow(2).sum(), x)
    _close(out, want, 1e-9)
    _close(gx, gw, 1e-8)


def test_second_order() -> None:
    layer = _layer("gatv2", backend="edge")
    ei = torch.tensor([[0, 1, 2, 3, 3, 1], [1, 2, 0, 0, 0, 1]])
    x = _x(5).requires_grad_()

    def f(xx: Tensor) -> Tensor:
        return layer(xx, ei)

    assert torch.autograd.gradgradcheck(f, (x,), eps=1e-6, atol=1e-5)
    layer2 = _layer(backend="edge")
    (g,) = torch.autograd.grad(layer2(x, ei).pow(2).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.pow(2).sum(), x)
    (r,) = torch.autograd.grad(reference(layer2, x, ei)[0].pow(2).sum(), x, create_graph=True)
    (rr,) = torch.autograd.grad(r.pow(2).sum(), x)
    _close(gg, rr, 1e-9)


def test_activation_checkpointing() -> None:
    from torch.utils.checkpoint import checkpoint

    layer = _layer()
    ei = torch.tensor([[0, 1, 2, 3, 3, 1, 4], [1, 2, 0, 0, 0, 1, 4]])
    x = _x(5).requires_grad_()
    out = checkpoint(lambda xx: layer(xx, ei), x, use_reentrant=False)
    (g,) = torch.autograd.grad(out.sum(), x)
    (r,) = torch.autograd.grad(reference(layer, x, ei)[0].sum(), x)
    _close(g, r)


def test_no_grad_then_inference_mode_then_training() -> None:
    layer = _layer()
    ei = torch.tensor([[0, 1, 2, 3, 3, 1, 4], [1, 2, 0, 0, 0, 1, 4]])
    x = _x(5)
    want = reference(layer, x, ei)[0]
    with torch.no_grad():
        _close(layer(x, ei), want)
    with torch.inference_mode():
        _close(layer(x, ei), want)
    xg = x.clone().requires_grad_()
    out = layer(xg, ei)
    (g,) = torch.autograd.grad(out.sum(), xg)
    (r,) = torch.autograd.grad(reference(layer, xg, ei)[0].sum(), xg)
    _close(g, r)


def test_inference_tensor_edge_index_used_for_training() -> None:
    layer = _layer()
    with torch.inference_mode():
        ei = torch.tensor([[0, 1, 2], [1, 2, 0]])
    x = _x(3).requires_grad_()
    out = layer(x, ei)
    (g,) = torch.autograd.grad(out.sum(), x)
    (r,) = torch.autograd.grad(reference(layer, x, ei.clone())[0].sum(), x)
    _close(g, r)


def test_inference_tensor_edge_index_inside_inference_mode() -> None:
    layer = _layer()
    x = _x(3)
    with torch.inference_mode():
        ei = torch.tensor([[0, 1, 2], [1, 2, 0]])
        out = layer(x, ei)
    _close(out, reference(layer, x, ei.clone())[0])


@pytest.mark.filterwarnings(
    "ignore:<class 'torch.autograd.function.Function'> should not be instantiated:DeprecationWarning"
)
def test_compiled_layer_with_writes() -> None:
    layer = _layer()
    compiled = torch.compile(layer, backend="aot_eager", dynamic=False)
    x = _x(5)
    ei = torch.tensor([[0, 1, 2, 3, 3, 1], [1, 2, 0, 0, 0, 1]])
    _close(compiled(x, ei), reference(layer, x, ei)[0])
    ei.numpy()[0, 1] = 4
    _close(compiled(x, ei), reference(layer, x, ei)[0])
    _check(layer, x, ei)  # eager again on the same tensor


def test_determinism_equal_bits() -> None:
    torch.manual_seed(0)
    layer = ga.GraphAttention(64, 8, backend="edge")
    ei = torch.randint(0, 300, (2, 2000), generator=torch.Generator().manual_seed(1))
    x = torch.randn(300, 64, requires_grad=True)
    results = []
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        try:
            out = layer(x, ei)
            grads = torch.autograd.grad(out.pow(2).sum(), [x, *layer.parameters()])
        finally:
            torch.set_num_threads(1)
        results.append((out, grads))
    for out, grads in results[1:]:
        assert torch.equal(out, results[0][0])
        for a, b in zip(grads, results[0][1], strict=True):
            assert torch.equal(a, b)


def test_numpy_write_into_returned_edge_index_is_not_the_users_tensor() -> None:
    """``Attention.edge_index`` of a raw call: writing into it never changes later results."""
    layer = _layer()
    x = _x(5)
    ei = torch.tensor([[0, 1, 2, 3, 4], [1, 2, 3, 4, 0]])
    res = layer(x, ei, return_attention=True)
    res.edge_index.numpy()[0, 0] = 3  # bypasses every version counter
    _check(layer, x, ei)
    res.edge_index[0, 0] = 2
    _check(layer, x, ei)


def test_swap_tensors_after_a_cached_call() -> None:
    layer = _layer()
    x = _x(5)
    ei = torch.tensor([[0, 1, 2, 3, 4], [1, 2, 3, 4, 0]])
    _check(layer, x, ei)
    new = torch.tensor([[4, 3, 2, 1, 0], [0, 0, 1, 1, 2]])
    torch.utils.swap_tensors(ei, new.clone())
    assert torch.equal(ei, new)
    _check(layer, x, ei)


class _WithGraphBuffer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.att = _layer()
        self.register_buffer("edge_index", torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]]))

    def forward(self, x: Tensor) -> Tensor:
        return self.att(x, self.edge_index)


def test_load_state_dict_with_swap_after_a_forward() -> None:
    model = _WithGraphBuffer()
    x = _x(4)
    model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["edge_index"] = torch.tensor([[3, 2, 1, 0], [0, 0, 1, 1]])
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model.load_state_dict(state)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)
    _close(model(x), reference(model.att, x, state["edge_index"])[0])


def test_load_state_dict_with_swap_before_any_forward() -> None:
    """The same load before any forward works (control for the case above)."""
    model = _WithGraphBuffer()
    x = _x(4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["edge_index"] = torch.tensor([[3, 2, 1, 0], [0, 0, 1, 1]])
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model.load_state_dict(state)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)
    _close(model(x), reference(model.att, x, state["edge_index"])[0])
    model.edge_index.copy_(torch.tensor([[1, 1, 1, 1], [0, 1, 2, 3]]))
    _check(model.att, x, model.edge_index)


def test_threads_racing_on_evictions() -> None:
    """8 threads over 50 shared tensors, with a 1 µs GIL switch interval to widen the races."""
    import sys

    layer = _layer()
    x = _x(5)
    eis = [
        torch.randint(0, 5, (2, 4), generator=torch.Generator().manual_seed(i)) for i in range(50)
    ]
    with torch.no_grad():
        wants = [reference(layer, x, ei)[0] for ei in eis]
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        try:
            with torch.no_grad():
                for _ in range(6):
                    for i in torch.randperm(50, generator=gen).tolist():
                        _close(layer(x, eis[i]), wants[i])
        except BaseException as err:
            errors.append(err)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(3):  # until a race shows (it did in every attempt seen)
            threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                break
    finally:
        sys.setswitchinterval(interval)
    assert not errors, repr(errors[0])


def test_kdim_vdim_sources_packed_views_and_numpy_write() -> None:
    """kdim != vdim cross attention (keys and values from separate inputs), a NumPy write."""
    torch.manual_seed(0)
    layer = ga.GraphAttention(C, H, kdim=4, vdim=6, backend="edge").double()
    x = _x(4).requires_grad_()
    ks = torch.randn(6, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    vs = torch.randn(6, 6, dtype=F64, generator=torch.Generator().manual_seed(2))
    ei = torch.tensor([[0, 5, 5, 2, 3, 3], [0, 0, 1, 3, 3, 3]])
    for step in range(3):
        if step == 2:
            ei.numpy()[0, 0] = 4
        out = layer(x, ei, x_src=(ks, vs))
        q = layer.q_proj(x).view(4, H, D)
        k = layer.k_proj(ks).view(6, H, D)
        v = layer.v_proj(vs).view(6, H, D)
        rows = []
        for i in range(4):
            m = ei[1] == i
            if not bool(m.any()):
                rows.append(torch.zeros(H, D, dtype=F64))
                continue
            w = torch.softmax((q[i] * k[ei[0][m]]).sum(-1) / math.sqrt(D), 0)  # [e, H]
            rows.append((w.unsqueeze(-1) * v[ei[0][m]]).sum(0))
        want = layer.out_proj(torch.stack(rows).reshape(4, C))
        _close(out, want)
        (g1,) = torch.autograd.grad(out.sum(), x)
        (g2,) = torch.autograd.grad(want.sum(), x)
        _close(g1, g2)


def test_returned_edge_index_is_not_the_private_copy() -> None:
    layer = _layer(backend="edge")
    x = _x(5)
    ei = torch.tensor([[0, 1, 2, 3, 4], [1, 2, 3, 4, 0]])
    res = layer(x, ei, return_attention=True)
    layer(x, ei)
    res.edge_index.numpy()[1, 0] = 3
    ei.numpy()[1, 0] = 3
    _check(layer, x, ei)
