"""Adversarial review of the dense backend's per-bucket padding (issue 23, G1), from the docs.

docs/backends.md ("dense") says: on CPU the scatter plan of a batch of sequences of unequal
lengths sorts the sequences by length, cuts them into buckets by a dynamic programme over
cells, and runs one SDPA or ``biased_sdpa`` call per bucket; the plan, the rows, the cells, the
scattered inputs and the closed cells are kept on the graph across layers and steps;
``SpatialBias.masked_grid`` folds the graph's −∞ cells into its table gather; ``biased_sdpa``
reads narrow heads (D < 8) transposed. Every check runs through the public layers against an
fp64 reference written out below (never gatattn's own reference helpers):

    α_e = s·<q_i, k_j> + Σ biases(e)  for every edge e = (j → i), duplicates counted,
    Attn_e = exp(α_e) / Σ_{e' → i} exp(α_e'),  out_i = Σ_e Attn_e v_j  (0 with no edge).

Cases: random mixed-size batches and random partial graphs (Hypothesis), one sequence, equal
lengths, one huge + many tiny sequences, length-1 sequences, many buckets, N = 1, head sizes
D = 1, 3, 4, 7, 8, 9, 16, grouped kv heads, fp64 / fp32 / bf16, gradients of the inputs, of
every parameter and of the bias table, second order, −∞ and huge bias values, distances past
``max_distance``, dropout, no_grad, activation checkpointing, a graph reused across layers,
steps, dtypes and edge inputs (new tensors of the same shape, in-place writes), writes
through the graph's accessors, edges that cross sequences, returned weights, bipartite
batches, Graphormer layers with a graph token, and the drop-in against nn.MultiheadAttention.
``bucket_plan`` is only read, to assert that a case really runs bucketed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

import gatattn as ga
from gatattn.backends.dense_buckets import bucket_plan

f64 = torch.float64
TOL = 1e-10
pytestmark = pytest.mark.usefixtures("one_thread")
HUGE_TINY = [70, 2, 1, 3, 2, 1]  # one huge sequence and tiny ones: several buckets
BiasFn = Callable[[nn.Module, Tensor], Tensor | None]  # (layer copy, edge_index) -> [E, H]


# ---------------------------------------------------------------- the independent reference
def ref_attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    ei: Tensor,
    nt: int,
    bias: Tensor | None,
    sinks: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(out [N_t, H, D_v], weights [E, H]) of the edge softmax, in q's dtype.

    q [N_t, H, D], k/v [N_s, H_kv, D]; query head h reads kv head h // (H / H_kv). With
    ``sinks`` [H] every target also has a sink of logit s_h and value 0.
    """
    H, Hkv = q.size(1), k.size(1)
    k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)  # [N_s, H, D]
    src, dst = ei[0], ei[1]
    a = (q[dst] * k[src]).sum(-1) / math.sqrt(q.size(-1))  # [E, H]
    if bias is not None:
        a = a + bias
    m = torch.zeros(nt, H, dtype=a.dtype).scatter_reduce(
        0, dst[:, None].expand(-1, H), a.detach(), "amax", include_self=False
    )  # [N_t, H]
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    if sinks is not None:
        m = torch.maximum(m, sinks.detach().expand(nt, H))
    w = torch.exp(a - m[dst])  # [E, H]
    den = torch.zeros(nt, H, dtype=a.dtype).index_add(0, dst, w)  # [N_t, H]
    if sinks is not None:
        den = den + torch.exp(sinks - m)
    den = torch.where(den > 0, den, torch.ones_like(den))
    out = torch.zeros(nt, H, v.size(-1), dtype=a.dtype).index_add(0, dst, w[..., None] * v[src])
    return out / den[..., None], w / den[dst]


def ref_layer(
    layer: nn.Module, x: Tensor, ei: Tensor, bias: Tensor | None, xs: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """GraphAttention's forward written out from its parameters -> (out [N_t, C], weights)."""
    H = layer.num_heads
    C = layer.embed_dim
    D = C // H
    W, b = layer.in_proj_weight, layer.in_proj_bias
    ckv = (W.size(0) - C) // 2
    wq, wk, wv = W.split([C, ckv, ckv])
    bq, bk, bv = b.split([C, ckv, ckv])
    src = x if xs is None else xs
    q = (x @ wq.T + bq).view(-1, H, D)
    k = (src @ wk.T + bk).view(-1, ckv // D, D)
    v = (src @ wv.T + bv).view(-1, ckv // D, D)
    o, w = ref_attend(q, k, v, ei, x.size(0), bias, getattr(layer, "sinks", None))
    return layer.out_proj(o.reshape(x.size(0), C)), w


def spatial_ref(sb: nn.Module, dist: Tensor) -> Tensor:
    """table[φ] per edge [E, H], the token row for φ = -1."""
    table = sb.weight
    if sb.token_weight is not None:
        table = torch.cat([table, sb.token_weight[None]])
    idx = torch.where(dist < 0, torch.full_like(dist, table.size(0) - 1), dist).long()
    return table[idx.reshape(-1)]


def layer_for(D: int, H: int = 3, *, bias: str = "spatial", M: int = 5, **kw: object) -> nn.Module:
    """A GraphAttention with scaled_dot + the named biases, fp64."""
    score = ga.make_score("scaled_dot", H, D)
    if "spatial" in bias:
        score = score + ga.SpatialBias(H, M)
    if "edgefeat" in bias:
        score = score + ga.EdgeFeatureBias(2, H, bias=True)
    if "mask" in bias:
        score = score + ga.scores.AttnMaskBias()
    torch.manual_seed(D * 7 + H)
    layer = ga.GraphAttention(H * D, H, score=score, **kw).double()  # type: ignore[arg-type]
    for p in layer.parameters():
        with torch.no_grad():
            p.normal_(0, 0.7)
    return layer


def bias_of(layer: nn.Module, attr: dict[str, Tensor] | Tensor | None) -> Tensor | None:
    """Σ biases per edge [E, H] of ``layer``'s score, written out."""
    if isinstance(attr, Tensor):  # one tensor answers every name
        attr = {"distance": attr, "edge_attr": attr, "attn_mask": attr}
    total = None
    for b in getattr(layer.score, "biases", ()):
        if isinstance(b, ga.SpatialBias):
            t = spatial_ref(b, attr["distance"])
        elif isinstance(b, ga.EdgeFeatureBias):
            t = attr["edge_attr"] @ b.proj.weight.T + b.proj.bias
        else:
            t = attr["attn_mask"]
        total = t if total is None else total + t
    return total


def check(
    layer: nn.Module,
    x: Tensor,
    g: ga.TokenGraph,
    attr: dict[str, Tensor] | Tensor | None,
    *,
    grads: bool = True,
    xs: Tensor | None = None,
) -> None:
    """layer(x, g) equals the reference in fp64: output, d x and d every parameter."""
    ref = copy.deepcopy(layer)
    x1 = x.detach().clone().requires_grad_(grads)
    x2 = x.detach().clone().requires_grad_(grads)
    kw = {} if xs is None else {"x_src": xs}
    out = layer(x1, g, edge_attr=attr, **kw)
    ei = g.edge_index.clone()
    want, _ = ref_layer(ref, x2, ei, bias_of(ref, attr), xs)
    torch.testing.assert_close(out, want, rtol=TOL, atol=TOL)
    assert torch.isfinite(out).all()
    if not grads:
        return
    gy = torch.randn_like(out)
    out.backward(gy)
    want.backward(gy)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=TOL, atol=TOL)
    for (n, p), (_, r) in zip(layer.named_parameters(), ref.named_parameters(), strict=True):
        got = torch.zeros_like(p) if p.grad is None else p.grad
        exp = torch.zeros_like(r) if r.grad is None else r.grad
        torch.testing.assert_close(got, exp, rtol=TOL, atol=TOL, msg=lambda m, n=n: f"{n}: {m}")
    layer.zero_grad()


def random_graph(
    lengths: list[int], keep: float, seed: int, *, empty_rows: bool = True
) -> ga.TokenGraph:
    """Random edges inside each sequence (each pair kept with probability ``keep``), in
    shuffled order, some targets left without an edge."""
    gen = torch.Generator().manual_seed(seed)
    parts, start = [], 0
    for L in lengths:
        i, j = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
        sel = torch.rand(L, L, generator=gen) < keep
        if empty_rows and L > 2:
            sel[torch.randint(L, (1,), generator=gen)] = False  # one target without an edge
        parts.append(torch.stack([j[sel], i[sel]]) + start)
        start += L
    ei = torch.cat(parts, 1)
    ei = ei[:, torch.randperm(ei.size(1), generator=gen)]
    return ga.TokenGraph(ei, start, start, lengths=lengths)


def complete_with_dist(lengths: list[int], M: int, seed: int) -> tuple[ga.TokenGraph, Tensor]:
    """Random input graphs per sequence -> (complete graph, hop distances) via gatattn."""
    gen = torch.Generator().manual_seed(seed)
    parts, start, batch = [], 0, []
    for b, L in enumerate(lengths):
        n = max(L - 1, 1) if L > 1 else 0
        s = torch.randint(L, (n,), generator=gen) + start
        t = torch.randint(L, (n,), generator=gen) + start
        parts.append(torch.stack([s, t]))
        batch += [b] * L
        start += L
    ei = torch.cat(parts, 1)
    g, dist = ga.shortest_path_distances(ei, start, batch=torch.tensor(batch), max_distance=M)
    return g, dist


# ---------------------------------------------------------------- Hypothesis: random batches
@st.composite
def batches(draw: st.DrawFn) -> dict[str, object]:
    # mostly one or two long sequences and several short ones (≥ 2 buckets); sometimes not
    big = draw(
        st.lists(st.integers(40, 72), min_size=draw(st.sampled_from([1, 1, 1, 0])), max_size=2)
    )
    small = draw(st.lists(st.integers(1, 12), min_size=3, max_size=9))
    lengths = big + small
    order = draw(st.permutations(range(len(lengths))))
    return {
        "lengths": [lengths[i] for i in order],
        "keep": draw(st.sampled_from([1.0, 0.7, 0.3])),
        "seed": draw(st.integers(0, 2**20)),
        "D": draw(st.sampled_from([1, 3, 4, 7, 8, 9, 16])),
        "H": draw(st.sampled_from([1, 2, 3])),
        "bias": draw(st.sampled_from(["none", "spatial", "edgefeat", "spatial+mask", "mask"])),
        "poison": draw(st.sampled_from(["none", "neginf", "huge"])),
        "backend": draw(st.sampled_from(["dense", "auto"])),
        "gqa": draw(st.booleans()),
    }


def inputs_for(case: dict[str, object], g: ga.TokenGraph, H: int, M: int) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(int(case["seed"]) + 1)  # type: ignore[call-overload]
    E = g.num_edges
    return {
        "distance": torch.randint(0, M + 2, (E,), generator=gen),
        "edge_attr": torch.randn(E, 2, generator=gen, dtype=f64),
        "attn_mask": torch.randn(E, H, generator=gen, dtype=f64),
    }


@settings(max_examples=45, deadline=None, suppress_health_check=list(HealthCheck))
@given(batches())
def test_random_batches_fp64(case: dict[str, object]) -> None:
    lengths, D, H = case["lengths"], case["D"], case["H"]
    assert isinstance(lengths, list) and isinstance(D, int) and isinstance(H, int)
    M = 4
    g = random_graph(lengths, float(case["keep"]), int(case["seed"]))  # type: ignore[arg-type]
    kv = 1 if case["gqa"] else None
    layer = layer_for(D, H, bias=str(case["bias"]), M=M, backend=case["backend"], num_kv_heads=kv)
    attr: dict[str, Tensor] | None = inputs_for(case, g, H, M)
    if case["bias"] == "none":
        attr = None
    if case["poison"] != "none" and "spatial" in str(case["bias"]):
        with torch.no_grad():
            sb = layer.score.biases[0]
            sb.weight[1] = -math.inf if case["poison"] == "neginf" else 1e4
            sb.weight[3, 0] = -math.inf if case["poison"] == "neginf" else -1e4
    x = torch.randn(sum(lengths), H * D, dtype=f64)
    check(layer, x, g, attr, grads=case["poison"] != "neginf")
    if case["poison"] == "neginf":  # gradients through −∞ entries: finite and equal
        check(layer, x, g, attr, grads=True)


# ---------------------------------------------------------------- shapes
def test_the_cases_run_bucketed() -> None:
    """The fixed cases below really take the bucket path (≥ 2 buckets)."""
    plan = bucket_plan(ga.complete_graph(lengths=HUGE_TINY))
    assert plan is not None and len(plan.buckets) >= 2
    many = [1, 2, 3, 5, 8, 13, 21, 34, 55, 89]
    plan = bucket_plan(ga.complete_graph(lengths=many))
    assert plan is not None and len(plan.buckets) >= 3
    assert bucket_plan(ga.complete_graph(lengths=[30, 30, 30])) is None  # equal lengths


@pytest.mark.parametrize("D", [1, 3, 4, 7, 8, 9, 16])
@pytest.mark.parametrize(
    "lengths",
    [[1], [23], [9, 9, 9], HUGE_TINY, [1, 2, 3, 5, 8, 13, 21, 34, 55, 89], [1] * 5 + [66]],
    ids=["N1", "one", "equal", "huge_tiny", "many", "ones_huge"],
)
def test_complete_spatial_shapes(D: int, lengths: list[int]) -> None:
    M = 3
    g, dist = complete_with_dist(lengths, M, seed=D + len(lengths))
    H = 2
    for backend in ("dense", "auto"):
        layer = layer_for(D, H, bias="spatial", M=M, backend=backend)
        x = torch.randn(sum(lengths), H * D, dtype=f64)
        check(layer, x, g, dist)


def test_shortest_path_distances_against_bfs() -> None:
    """The distances the layers read equal a BFS written out (clipped, no path = M + 1)."""
    M = 3
    lengths = [9, 1, 6]
    g, dist = complete_with_dist(lengths, M, seed=5)
    gen = torch.Generator().manual_seed(5)
    start = 0
    want = {}
    for L in lengths:
        n = max(L - 1, 1) if L > 1 else 0
        s = (torch.randint(L, (n,), generator=gen) + start).tolist()
        t = (torch.randint(L, (n,), generator=gen) + start).tolist()
        adj: dict[int, set[int]] = {}
        for a, b in zip(s, t, strict=True):
            adj.setdefault(a, set()).add(b)
        for j in range(start, start + L):
            d = {j: 0}
            frontier = [j]
            while frontier:
                nxt = []
                for u in frontier:
                    for w in adj.get(u, ()):
                        if w not in d:
                            d[w] = d[u] + 1
                            nxt.append(w)
                frontier = nxt
            for i in range(start, start + L):
                want[(j, i)] = min(d[i], M) if i in d else M + 1
        start += L
    got = {(int(a), int(b)): int(c) for a, b, c in zip(*g.edge_index, dist, strict=True)}
    assert got == want


def test_complete_without_self_loops_and_length_one() -> None:
    """self_loops=False: a length-1 sequence has a target without an edge (output 0)."""
    lengths = [1, 40, 1, 2, 1, 3]
    g = ga.complete_graph(lengths=lengths, self_loops=False)
    H, D = 3, 4
    E = g.num_edges
    attr = {"distance": torch.randint(0, 5, (E,)), "attn_mask": torch.randn(E, 1, dtype=f64)}
    layer = layer_for(D, H, bias="spatial+mask", M=3, backend="dense")
    check(layer, torch.randn(sum(lengths), H * D, dtype=f64), g, attr)


def test_graph_token_layer_matches_written_out_graphormer() -> None:
    """GraphormerLayer (pre-LN) with a graph token, bucketed: h' = x + MHA(LN x), FFN."""
    lengths = [44, 2, 3, 1, 2]
    M, C, H = 4, 12, 3
    gin, dist = complete_with_dist(lengths, M, seed=11)
    torch.manual_seed(0)
    token = ga.GraphToken(C).double()
    layer = ga.GraphormerLayer(C, H, max_distance=M, graph_token=True, backend="dense").double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(sum(lengths), C, dtype=f64)
    tok = token(x, gin, dist)
    assert bucket_plan(tok.graph) is not None
    ref = copy.deepcopy(layer)
    x1 = tok.x.detach().clone().requires_grad_()
    x2 = tok.x.detach().clone().requires_grad_()
    out = layer(x1, tok.graph, tok.edge_attr)
    a = ref.self_attn
    ei = tok.graph.edge_index
    d = tok.edge_attr["distance"] if isinstance(tok.edge_attr, dict) else tok.edge_attr
    att, _ = ref_layer(a, ref.norm1(x2), ei, spatial_ref(a.score.biases[0], d))
    h = x2 + att
    want = h + ref.linear2(F.gelu(ref.linear1(ref.norm2(h))))
    torch.testing.assert_close(out, want, rtol=TOL, atol=TOL)
    gy = torch.randn_like(out)
    out.backward(gy)
    want.backward(gy)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=TOL, atol=TOL)
    for (n, p), (_, r) in zip(layer.named_parameters(), ref.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, r.grad, rtol=TOL, atol=TOL, msg=lambda m, n=n: n + m)


def test_bipartite_batch_cross_attention_buckets() -> None:
    """Cross attention on a bipartite batch with L_q != L_k per sequence, per-head masks."""
    nq, nk = [50, 2, 3, 1, 4], [3, 61, 1, 2, 5]
    g = ga.bipartite_graph(nq, nk)
    H, D = 3, 7
    layer = layer_for(D, H, bias="mask", backend="dense")
    E = g.num_edges
    attr = {"attn_mask": torch.randn(E, H, dtype=f64)}
    attr["attn_mask"][::7] = -math.inf
    x, xs = torch.randn(sum(nq), H * D, dtype=f64), torch.randn(sum(nk), H * D, dtype=f64)
    assert bucket_plan(g) is not None
    check(layer, x, g, attr, xs=xs)


def test_many_distinct_bipartite_sizes_merge_units() -> None:
    """More than 256 distinct (L_q, L_k) sizes: the cut merges runs first."""
    nq = [q for q in range(1, 19) for _ in range(15)][:270]
    nk = [(7 * i) % 17 + 1 for i in range(270)]
    g = ga.bipartite_graph(nq, nk)
    H, D = 2, 3
    layer = layer_for(D, H, bias="mask", backend="dense")
    attr = {"attn_mask": torch.randn(g.num_edges, 1, dtype=f64)}
    assert bucket_plan(g) is not None
    check(
        layer,
        torch.randn(sum(nq), H * D, dtype=f64),
        g,
        attr,
        xs=torch.randn(sum(nk), H * D, dtype=f64),
    )


# ---------------------------------------------------------------- caches
def test_new_dist_tensor_same_shape_and_in_place_writes() -> None:
    """A cached distance grid is never served for another tensor or after a write."""
    lengths = HUGE_TINY
    g = ga.complete_graph(lengths=lengths)
    H, D, M = 3, 4, 5
    layer = layer_for(D, H, bias="spatial", M=M, backend="dense")
    layer2 = layer_for(D, H, bias="spatial", M=M, backend="dense")
    x = torch.randn(sum(lengths), H * D, dtype=f64)
    E = g.num_edges
    d1 = torch.randint(0, M + 2, (E,))
    check(layer, x, g, d1)
    check(layer2, x, g, d1)  # a second layer on the same graph and tensor
    d2 = torch.randint(0, M + 2, (E,))
    check(layer, x, g, d2)  # a new tensor of the same shape
    d2[: E // 2] = M + 1  # an in-place torch write
    check(layer, x, g, d2)
    with torch.no_grad():
        d2.copy_(torch.randint(0, M + 2, (E,)))
    check(layer, x, g, d2)
    d2.view(-1)[3] = 0  # a write through a view
    check(layer, x, g, d2)
    d3 = d2.view(E, 1)  # the same storage, [E, 1]
    check(layer, x, g, {"distance": d3.view(E)})
    d4 = d2.int()  # int32
    check(layer, x, g, d4)
    mapping = {"distance": d4}
    check(layer, x, g, mapping)
    d4.fill_(1)
    check(layer, x, g, mapping)


def test_mask_input_replaced_and_written() -> None:
    lengths = [2, 57, 3, 1]
    g = random_graph(lengths, 0.6, 3)
    H, D = 2, 9
    layer = layer_for(D, H, bias="mask", backend="dense")
    x = torch.randn(sum(lengths), H * D, dtype=f64)
    m = torch.randn(g.num_edges, 1, dtype=f64)
    check(layer, x, g, {"attn_mask": m})
    m.mul_(-3.0)
    check(layer, x, g, {"attn_mask": m})
    m[::2] = -math.inf
    check(layer, x, g, {"attn_mask": m})
    check(layer, x, g, {"attn_mask": torch.randn(g.num_edges, 1, dtype=f64)})
    check(layer, x, g, torch.randn(g.num_edges, 1, dtype=f64))  # one tensor, unnamed


def test_graph_reused_across_dtypes_layers_and_steps() -> None:
    """One graph and one distance tensor across dtypes, head counts, max_distance, steps."""
    lengths = HUGE_TINY
    g = ga.complete_graph(lengths=lengths)
    E = g.num_edges
    dist = torch.randint(0, 4, (E,))
    for H, D, M in [(3, 4, 3), (2, 8, 3), (3, 4, 7), (1, 1, 3)]:
        layer = layer_for(D, H, bias="spatial", M=M, backend="dense")
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        x = torch.randn(sum(lengths), H * D, dtype=f64)
        for _ in range(2):  # steps: the parameters change, the caches stay
            check(layer, x, g, dist)
            layer(x, g, edge_attr=dist).square().sum().backward()
            opt.step()
            opt.zero_grad()
    layer = layer_for(4, 3, bias="spatial", M=3, backend="dense")
    x = torch.randn(sum(lengths), 12, dtype=f64)
    ref, _ = ref_layer(
        copy.deepcopy(layer), x, g.edge_index, spatial_ref(layer.score.biases[0], dist)
    )
    for dtype in (torch.float32, torch.bfloat16):
        low = copy.deepcopy(layer).to(dtype)
        out = low(x.to(dtype), g, edge_attr=dist)
        torch_err = torch_low_error(layer, x, g, dist, dtype)
        unit = torch.finfo(dtype).eps * float(ref.abs().max().detach())  # rounding, at scale
        assert float((out.double() - ref).abs().max().detach()) <= 4 * torch_err + 8 * unit
    check(layer, x, g, dist)  # back to fp64 on the same graph


def torch_low_error(
    layer: nn.Module, x: Tensor, g: ga.TokenGraph, dist: Tensor, dtype: torch.dtype
) -> float:
    """Max error of torch's own SDPA per sequence in ``dtype`` (mask = the bias) vs fp64."""
    H, C = layer.num_heads, layer.embed_dim
    D = C // H
    low = copy.deepcopy(layer).to(dtype)
    qkv = F.linear(x.to(dtype), low.in_proj_weight, low.in_proj_bias).view(-1, 3, H, D)
    bias = spatial_ref(low.score.biases[0], dist)  # [E, H]
    N = x.size(0)
    mask = torch.full((H, N, N), -math.inf, dtype=dtype)
    mask[:, g.edge_index[1], g.edge_index[0]] = bias.T
    q, k, v = (t.transpose(0, 1)[None] for t in qkv.unbind(1))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None])[0].transpose(0, 1)
    out = low.out_proj(o.reshape(N, C)).double().detach()
    want, _ = ref_layer(
        copy.deepcopy(layer), x, g.edge_index, spatial_ref(layer.score.biases[0], dist)
    )
    return float((out - want.detach()).abs().max())


def test_edge_index_written_in_place_between_calls() -> None:
    lengths = [60, 2, 3]
    ei = random_graph(lengths, 0.5, 9, empty_rows=False).edge_index.clone()
    g = ga.TokenGraph(ei, 65, 65, lengths=lengths)
    H, D = 2, 3
    attr = {"distance": torch.randint(0, 5, (ei.size(1),))}
    x = torch.randn(65, H * D, dtype=f64)
    dense = layer_for(D, H, bias="spatial", M=3, backend="dense")
    auto = layer_for(D, H, bias="spatial", M=3, backend="auto")
    check(dense, x, g, attr)
    ei[0, :5] = ei[1, :5]  # self-loops inside the sequences (may repeat an edge)
    check(auto, x, g, attr)
    ei[0, 0], ei[1, 0] = 0, 61  # an edge from sequence 0 into sequence 1
    check(auto, x, g, attr)
    with pytest.raises(ValueError, match="joins two sequences"):
        dense(x, g, edge_attr=attr)


def test_accessor_writes_do_not_reach_the_graph() -> None:
    lengths = HUGE_TINY
    g = random_graph(lengths, 0.8, 4)
    H, D = 3, 3
    layer = layer_for(D, H, bias="spatial", M=3, backend="dense")
    attr = torch.randint(0, 5, (g.num_edges,))
    x = torch.randn(sum(lengths), H * D, dtype=f64)
    check(layer, x, g, attr)
    g.positions("dst").fill_(0)
    g.positions("src").fill_(1)
    g.sequence("dst").fill_(0)
    rowptr, perm = g.csr()
    rowptr.zero_()
    perm.zero_()
    g.params["kv_lengths"] = [1]
    g.in_degree().zero_()
    g.to_dense_mask().fill_(True)
    assert g.dense_mask() is None
    check(layer, x, g, attr)


def test_mask_graph_dense_mask_write() -> None:
    """A graph from a [B, L, L] mask with a bias: writing into dense_mask() changes nothing."""
    gen = torch.Generator().manual_seed(2)
    m = torch.rand(4, 9, 9, generator=gen) < 0.5
    g = ga.from_mask(m)
    layer = layer_for(4, 3, bias="mask", backend="dense")
    attr = {"attn_mask": torch.randn(g.num_edges, 3, dtype=f64)}
    x = torch.randn(36, 12, dtype=f64)
    check(layer, x, g, attr)
    dm = g.dense_mask()
    assert dm is not None
    dm.fill_(False)
    check(layer, x, g, attr)


# ---------------------------------------------------------------- graphs the grid cannot hold
def test_crossing_and_duplicate_edges() -> None:
    lengths = [50, 3, 2, 4]
    base = random_graph(lengths, 0.7, 1).edge_index
    cross = torch.cat([base, torch.tensor([[0, 52], [51, 1]])], 1)  # 0 -> 51, 52 -> 1
    dup = torch.cat([base, base[:, :40]], 1)
    H, D = 3, 1
    x = torch.randn(59, H * D, dtype=f64)
    for ei, msg in ((cross, "joins two sequences"), (dup, "duplicate")):
        g = ga.TokenGraph(ei, 59, 59, lengths=lengths)
        attr = {"distance": torch.randint(0, 5, (ei.size(1),))}
        check(layer_for(D, H, bias="spatial", M=3, backend="auto"), x, g, attr)
        with pytest.raises(ValueError, match=msg):
            layer_for(D, H, bias="spatial", M=3, backend="dense")(x, g, edge_attr=attr)


def test_distance_past_the_table_is_refused() -> None:
    g = ga.complete_graph(lengths=HUGE_TINY)
    layer = layer_for(4, 3, bias="spatial", M=3, backend="dense")
    x = torch.randn(sum(HUGE_TINY), 12, dtype=f64)
    for bad in (5, -1):
        dist = torch.zeros(g.num_edges, dtype=torch.long)
        dist[-1] = bad
        with pytest.raises(ValueError, match="outside the table"):
            layer(x, g, edge_attr=dist)


# ---------------------------------------------------------------- modes
def test_return_attention_weights_equal_the_reference() -> None:
    g = random_graph(HUGE_TINY, 0.6, 8)
    H, D = 3, 7
    layer = layer_for(D, H, bias="spatial+mask", M=3, backend="dense")
    E = g.num_edges
    attr = {"distance": torch.randint(0, 5, (E,)), "attn_mask": torch.randn(E, 1, dtype=f64)}
    x = torch.randn(sum(HUGE_TINY), H * D, dtype=f64)
    res = layer(x, g, edge_attr=attr, return_attention=True)
    want, w = ref_layer(layer, x, g.edge_index, bias_of(layer, attr))
    torch.testing.assert_close(res.out, want, rtol=TOL, atol=TOL)
    torch.testing.assert_close(res.weights, w, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("D", [3, 8])
def test_second_order_gradient_penalty(D: int) -> None:
    g = random_graph([41, 2, 3, 1, 2], 0.7, 6)
    H = 2
    layer = layer_for(D, H, bias="spatial", M=3, backend="dense")
    ref = copy.deepcopy(layer)
    attr = torch.randint(0, 5, (g.num_edges,))
    x = torch.randn(49, H * D, dtype=f64)

    def penalty(mod: nn.Module, got: bool) -> Tensor:
        xx = x.clone().requires_grad_()
        if got:
            out = mod(xx, g, edge_attr=attr)
        else:
            out, _ = ref_layer(mod, xx, g.edge_index, spatial_ref(mod.score.biases[0], attr))
        (gx,) = torch.autograd.grad(out.sin().sum(), xx, create_graph=True)
        return gx.square().sum()

    a, b = penalty(layer, True), penalty(ref, False)
    torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)
    a.backward()
    b.backward()
    for (n, p), (_, r) in zip(layer.named_parameters(), ref.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-9, atol=1e-9, msg=lambda m, n=n: n + m)


def test_no_grad_checkpoint_and_dropout() -> None:
    lengths = HUGE_TINY
    g = random_graph(lengths, 0.5, 12)
    H, D = 3, 4
    attr = torch.randint(0, 5, (g.num_edges,))
    x = torch.randn(sum(lengths), H * D, dtype=f64)
    layer = layer_for(D, H, bias="spatial", M=3, backend="dense", dropout=0.4)
    layer.eval()
    check(layer, x, g, attr)
    want, _ = ref_layer(layer, x, g.edge_index, spatial_ref(layer.score.biases[0], attr))
    with torch.no_grad():
        torch.testing.assert_close(layer(x, g, edge_attr=attr), want.detach(), rtol=TOL, atol=TOL)
    # activation checkpointing: the same output and gradients
    ref = copy.deepcopy(layer)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = checkpoint(lambda t: layer(t, g, edge_attr=attr), x1, use_reentrant=False)
    out.sum().backward()
    ref(x2, g, edge_attr=attr).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=TOL, atol=TOL)
    for p, r in zip(layer.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, r.grad, rtol=TOL, atol=TOL)
    # dropout in training: rows without an edge stay 0 before out_proj, all finite,
    # and the output differs from eval's
    layer.train()
    torch.manual_seed(0)
    out = layer(x, g, edge_attr=attr)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, want)
    indeg = torch.bincount(g.edge_index[1], minlength=g.num_dst)
    empty = indeg == 0
    assert empty.any()
    torch.testing.assert_close(out[empty], layer.out_proj.bias.expand(int(empty.sum()), -1))


def test_table_grad_through_all_neg_inf_rows() -> None:
    """Every edge of some targets has bias −∞: those outputs are 0, gradients finite, equal."""
    lengths = [45, 3, 2, 1, 2]
    g = ga.complete_graph(lengths=lengths)
    E = g.num_edges
    H, D = 2, 4
    layer = layer_for(D, H, bias="spatial", M=3, backend="dense")
    with torch.no_grad():
        layer.score.biases[0].weight[4] = -math.inf  # distance 4 = "no path": −∞
    dist = torch.full((E,), 4, dtype=torch.long)
    dist[g.edge_index[0] == g.edge_index[1]] = 0  # keep self loops...
    dist[(g.edge_index[1] == 46) | (g.edge_index[1] == 10)] = 4  # ...except for two targets
    check(layer, torch.randn(sum(lengths), H * D, dtype=f64), g, dist)


def test_grad_of_a_mask_that_needs_a_gradient() -> None:
    g = random_graph(HUGE_TINY, 0.7, 14)
    H, D = 3, 3
    layer = layer_for(D, H, bias="mask", backend="dense")
    ref = copy.deepcopy(layer)
    m1 = torch.randn(g.num_edges, H, dtype=f64, requires_grad=True)
    m2 = m1.detach().clone().requires_grad_()
    x = torch.randn(sum(HUGE_TINY), H * D, dtype=f64)
    out = layer(x, g, edge_attr={"attn_mask": m1})
    want, _ = ref_layer(ref, x, g.edge_index, m2)
    torch.testing.assert_close(out, want, rtol=TOL, atol=TOL)
    gy = torch.randn_like(out)
    out.backward(gy)
    want.backward(gy)
    torch.testing.assert_close(m1.grad, m2.grad, rtol=TOL, atol=TOL)


def test_low_precision_bucketed_partial_graph() -> None:
    """fp32 / bf16 on a bucketed partial graph: within 4x torch's own error vs fp64."""
    g = random_graph([66, 2, 3, 1, 5, 2], 0.6, 21, empty_rows=False)
    H, D = 3, 4
    layer = layer_for(D, H, bias="spatial", M=3, backend="dense")
    dist = torch.randint(0, 5, (g.num_edges,))
    x = torch.randn(g.num_dst, H * D, dtype=f64)
    want, _ = ref_layer(layer, x, g.edge_index, spatial_ref(layer.score.biases[0], dist))
    for dtype in (torch.float32, torch.bfloat16):
        low = copy.deepcopy(layer).to(dtype)
        out = low(x.to(dtype), g, edge_attr=dist).double()
        err = float((out - want).abs().max().detach())
        unit = torch.finfo(dtype).eps * float(want.abs().max().detach())  # rounding, at scale
        assert err <= 4 * torch_low_error(layer, x, g, dist, dtype) + 8 * unit


# ---------------------------------------------------------------- the drop-ins
def test_drop_in_mha_mixed_padding_matches_torch() -> None:
    torch.manual_seed(3)
    B, L, C, H = 5, 11, 12, 3
    mha = nn.MultiheadAttention(C, H, batch_first=True).double()
    ours = ga.GraphMultiheadAttention(C, H, batch_first=True).double()
    ours.load_state_dict(mha.state_dict())
    x = torch.randn(B, L, C, dtype=f64)
    pad = torch.zeros(B, L, dtype=torch.bool)
    for b, n in enumerate([11, 1, 7, 3, 10]):
        pad[b, n:] = True
    am = torch.randn(L, L, dtype=f64)
    pad = torch.zeros(B, L, dtype=f64).masked_fill(pad, -math.inf)  # float, as attn_mask
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    want, w_want = mha(x1, x1, x1, key_padding_mask=pad, attn_mask=am)
    got, w_got = ours(x2, x2, x2, key_padding_mask=pad, attn_mask=am)
    torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)
    torch.testing.assert_close(w_got, w_want, rtol=TOL, atol=TOL)
    want.sum().backward()
    got.sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=TOL, atol=TOL)


def test_converted_encoder_layer_mixed_padding_matches_torch() -> None:
    torch.manual_seed(4)
    layer = nn.TransformerEncoderLayer(12, 3, 20, dropout=0.0, batch_first=True).double()
    conv = ga.convert(copy.deepcopy(layer))
    x = torch.randn(4, 9, 12, dtype=f64)
    pad = torch.zeros(4, 9, dtype=torch.bool)
    for b, n in enumerate([9, 2, 5, 1]):
        pad[b, n:] = True
    torch.testing.assert_close(
        conv(x, src_key_padding_mask=pad), layer(x, src_key_padding_mask=pad), rtol=TOL, atol=TOL
    )


# ---------------------------------------------------------------- more graphs
def test_buckets_without_edges_and_graph_without_edges() -> None:
    """Only the long sequence has edges: the short sequences' bucket is all edgeless rows."""
    lengths = [70, 2, 3, 2]
    ei = random_graph([70], 0.5, 2).edge_index
    g = ga.TokenGraph(ei, 77, 77, lengths=lengths)
    assert bucket_plan(g) is not None
    x = torch.randn(77, 12, dtype=f64)
    E = ei.size(1)
    for bias, attr in (
        ("none", None),
        ("spatial", torch.randint(0, 5, (E,))),
        ("edgefeat", {"edge_attr": torch.randn(E, 2, dtype=f64)}),
    ):
        check(layer_for(4, 3, bias=bias, M=3, backend="dense"), x, g, attr)  # type: ignore[arg-type]
    g0 = ga.TokenGraph(torch.zeros(2, 0, dtype=torch.long), 77, 77, lengths=lengths)
    check(layer_for(4, 3, bias="none", backend="dense"), x, g0, None)
    empty = torch.zeros(0, dtype=torch.long)
    check(layer_for(4, 3, bias="spatial", M=3, backend="dense"), x, g0, empty)


def test_key_lengths_differ_from_query_lengths() -> None:
    """A square batch whose key sequences have other lengths (params kv_lengths)."""
    lq, lk = [60, 3, 2], [2, 60, 3]
    gen = torch.Generator().manual_seed(8)
    parts, sq, sk = [], 0, 0
    for a, b in zip(lq, lk, strict=True):
        i, j = torch.meshgrid(torch.arange(a), torch.arange(b), indexing="ij")
        sel = torch.rand(a, b, generator=gen) < 0.6
        parts.append(torch.stack([j[sel] + sk, i[sel] + sq]))
        sq, sk = sq + a, sk + b
    ei = torch.cat(parts, 1)
    g = ga.TokenGraph(ei, 65, 65, lengths=lq, params={"kv_lengths": lk})
    assert bucket_plan(g) is not None
    x = torch.randn(65, 12, dtype=f64)
    dist = torch.randint(0, 5, (ei.size(1),))
    check(layer_for(4, 3, bias="spatial", M=3, backend="dense"), x, g, dist)


@pytest.mark.parametrize("kind", ["lying_tag", "causal", "batch", "deepcopy", "sinks"])
def test_other_graph_sources(kind: str) -> None:
    H, D = 3, 4
    x = torch.randn(sum(HUGE_TINY), H * D, dtype=f64)
    layer = layer_for(D, H, bias="spatial", M=3, backend="dense", sinks=kind == "sinks")
    if kind == "sinks":
        with torch.no_grad():
            layer.sinks.normal_(0, 2.0)
    g = random_graph(HUGE_TINY, 0.7, 3)
    if kind == "lying_tag":  # a "complete" claim that does not hold
        g = ga.TokenGraph(
            g.edge_index, g.num_src, g.num_dst, structure="complete", lengths=HUGE_TINY
        )
    elif kind == "causal":
        g = ga.causal_graph(lengths=HUGE_TINY)
    dist = torch.randint(0, 5, (g.num_edges,))
    if kind == "batch":  # a raw edge_index and PyG's batch vector
        batch = torch.arange(len(HUGE_TINY)).repeat_interleave(torch.tensor(HUGE_TINY))
        ref = copy.deepcopy(layer)
        out = layer(x, g.edge_index, edge_attr=dist, batch=batch)
        want, _ = ref_layer(ref, x, g.edge_index, spatial_ref(ref.score.biases[0], dist))
        torch.testing.assert_close(out, want, rtol=TOL, atol=TOL)
        return
    check(layer, x, g, dist)
    if kind == "deepcopy":  # the cache is not carried; rebuilt on the copy
        check(layer, x, copy.deepcopy(g), dist)


# ---------------------------------------------------------------- defects (xfail, strict)
@pytest.mark.parametrize("lengths", [HUGE_TINY, [9, 9]], ids=["bucketed", "one_grid"])
def test_attn_mask_bias_1d_refused_on_every_backend(lengths: list[int]) -> None:
    g = ga.complete_graph(lengths=lengths)
    x = torch.randn(sum(lengths), 12, dtype=f64)
    m = torch.randn(g.num_edges, dtype=f64)
    with pytest.raises(ValueError, match="AttnMaskBias needs"):
        layer_for(4, 3, bias="mask", backend="edge")(x, g, edge_attr={"attn_mask": m})
    with pytest.raises(ValueError, match="AttnMaskBias needs"):
        layer_for(4, 3, bias="mask", backend="dense")(x, g, edge_attr={"attn_mask": m})


@pytest.mark.parametrize("lengths", [HUGE_TINY, [9, 5, 7]], ids=["bucketed", "one_grid"])
def test_unread_pos_inf_table_entry_gradients(lengths: list[int]) -> None:
    g = ga.complete_graph(lengths=lengths)
    layer = layer_for(4, 3, bias="spatial", M=3, backend="dense")
    with torch.no_grad():
        layer.score.biases[0].weight[0] = math.inf
    dist = torch.randint(1, 5, (g.num_edges,), generator=torch.Generator().manual_seed(0))
    check(layer, torch.randn(sum(lengths), 12, dtype=f64), g, dist)


@pytest.mark.parametrize("lengths", [HUGE_TINY, [9, 9, 9]], ids=["bucketed", "one_grid"])
def test_unread_pos_inf_table_entry_with_two_biases(lengths: list[int]) -> None:
    g = ga.complete_graph(lengths=lengths, self_loops=False)
    layer = layer_for(4, 3, bias="spatial+mask", M=3, backend="dense")
    with torch.no_grad():
        layer.score.biases[0].weight[0] = math.inf
    E = g.num_edges
    attr = {
        "distance": torch.randint(1, 5, (E,), generator=torch.Generator().manual_seed(0)),
        "attn_mask": torch.ones(E, 1, dtype=f64),
    }
    check(layer, torch.randn(sum(lengths), 12, dtype=f64), g, attr, grads=False)


def test_kv_lengths_that_do_not_sum_to_num_src_get_a_clear_error() -> None:
    ei = torch.tensor([[0, 1, 4, 5, 9, 9, 8], [0, 1, 2, 3, 3, 5, 4]])
    x, xs = torch.randn(6, 12, dtype=f64), torch.randn(10, 12, dtype=f64)
    with pytest.raises(ValueError, match="kv_lengths"):
        g = ga.TokenGraph(ei, 10, 6, lengths=[3, 3], params={"kv_lengths": [5, 9]})
        layer_for(4, 3, bias="mask", backend="dense")(
            x, g, x_src=xs, edge_attr={"attn_mask": torch.randn(7, 1, dtype=f64)}
        )


@pytest.mark.parametrize("bias", ["spatial", "none"])
def test_graph_used_in_inference_mode_then_for_training(bias: str) -> None:
    g = random_graph(HUGE_TINY, 0.7, 1)
    assert bucket_plan(g) is not None
    dist = None if bias == "none" else torch.randint(0, 5, (g.num_edges,))
    layer = layer_for(4, 3, bias=bias, M=3, backend="dense")
    x = torch.randn(g.num_dst, 12, dtype=f64)
    with torch.inference_mode():  # e.g. an evaluation before the first training epoch
        layer(x, g, edge_attr=dist)
    check(layer, x, g, dist)


def test_distance_written_through_data_between_calls() -> None:
    g = ga.complete_graph(lengths=HUGE_TINY)
    layer = layer_for(4, 3, bias="spatial", M=3, backend="dense")
    x = torch.randn(g.num_dst, 12, dtype=f64)
    dist = torch.randint(0, 5, (g.num_edges,), generator=torch.Generator().manual_seed(0))
    check(layer, x, g, dist)
    dist.data.fill_(4)
    check(layer, x, g, dist)


# ---------------------------------------------------------------- position and path biases
@pytest.mark.parametrize("pos", ["default", "int", "float"])
def test_alibi_and_spatial_on_a_bucketed_partial_graph(pos: str) -> None:
    """ALiBi b = -m_h |p_i - p_j| (positions restart per sequence, or given) + SpatialBias."""
    g = random_graph(HUGE_TINY, 0.6, 17)
    H, D = 4, 3
    score = ga.make_score("scaled_dot", H, D) + ga.scores.ALiBi(H) + ga.SpatialBias(H, 3)
    torch.manual_seed(1)
    layer = ga.GraphAttention(H * D, H, score=score, backend="dense").double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.7)
    ref = copy.deepcopy(layer)
    N = g.num_dst
    x = torch.randn(N, H * D, dtype=f64)
    dist = torch.randint(0, 5, (g.num_edges,))
    starts = torch.tensor([0, *HUGE_TINY]).cumsum(0)[:-1].repeat_interleave(torch.tensor(HUGE_TINY))
    p_all: Tensor = torch.arange(N) - starts  # positions within each sequence
    kw: dict[str, Tensor] = {}
    if pos == "int":
        p_all = torch.randint(-50, 50, (N,))
        kw = {"pos": p_all}
    elif pos == "float":
        p_all = torch.randn(N, dtype=f64) * 10
        kw = {"pos": p_all}
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = layer(x1, g, edge_attr=dist, **kw)
    src, dst = g.edge_index
    slopes = ref.score.biases[0].slopes  # the paper's fixed slopes, a buffer
    alibi = -(p_all[dst] - p_all[src]).abs().to(f64)[:, None] * slopes  # [E, H]
    want, _ = ref_layer(ref, x2, g.edge_index, alibi + spatial_ref(ref.score.biases[1], dist))
    torch.testing.assert_close(out, want, rtol=TOL, atol=TOL)
    out.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=TOL, atol=TOL)
    for p, r in zip(layer.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, r.grad, rtol=TOL, atol=TOL)


def test_graphormer_layer_with_path_encoding_bucketed() -> None:
    """GraphormerLayer(edge_dim=F): SpatialBias + PathEncodingBias, written out."""
    lengths = [41, 3, 1, 2, 4, 2]
    gen = torch.Generator().manual_seed(13)
    parts, start, batch = [], 0, []
    for b, L in enumerate(lengths):
        n = 2 * L
        parts.append(torch.randint(L, (2, n), generator=gen) + start)
        batch += [b] * L
        start += L
    ei = torch.cat(parts, 1)
    M, Fd, hops, C, H = 4, 3, 2, 12, 3
    paths = ga.shortest_paths(ei, start, batch=torch.tensor(batch), max_distance=M, max_hops=hops)
    feats = torch.randn(ei.size(1), Fd, dtype=f64, generator=gen)
    inputs = paths.path_inputs(feats)
    g = paths.graph
    assert bucket_plan(g) is not None
    torch.manual_seed(2)
    layer = ga.GraphormerLayer(C, H, max_distance=M, edge_dim=Fd, max_hops=hops, backend="dense")
    layer = layer.double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    ref = copy.deepcopy(layer)
    x = torch.randn(start, C, dtype=f64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = layer(x1, g, inputs)
    a = ref.self_attn
    w = a.score.biases[1].weight  # [hops, H, F]
    n_used = inputs["path_len"].clamp(max=hops)  # [E]
    used = (torch.arange(hops)[None] < n_used[:, None]).to(f64)  # [E, hops]
    per_hop = torch.einsum("emf,mhf->emh", inputs["path_attr"][:, :hops], w) * used[..., None]
    path_bias = per_hop.sum(1) / n_used.clamp(min=1).to(f64)[:, None]  # [E, H]
    bias = spatial_ref(a.score.biases[0], inputs["distance"]) + path_bias
    att, _ = ref_layer(a, ref.norm1(x2), g.edge_index, bias)
    h = x2 + att
    want = h + ref.linear2(F.gelu(ref.linear1(ref.norm2(h))))
    torch.testing.assert_close(out, want, rtol=TOL, atol=TOL)
    out.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=TOL, atol=TOL)
    for p, r in zip(layer.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, r.grad, rtol=TOL, atol=TOL)


def test_drop_in_per_head_bool_mask_and_padding_matches_torch() -> None:
    torch.manual_seed(5)
    B, L, C, H = 4, 7, 12, 3
    mha = nn.MultiheadAttention(C, H, batch_first=True).double()
    ours = ga.GraphMultiheadAttention(C, H, batch_first=True).double()
    ours.load_state_dict(mha.state_dict())
    x = torch.randn(B, L, C, dtype=f64)
    pad = torch.zeros(B, L, dtype=torch.bool)
    for b, n in enumerate([7, 2, 5, 4]):
        pad[b, n:] = True
    am = torch.rand(B * H, L, L) < 0.3  # True = masked out (torch's bool convention)
    am[..., 0] = False  # every row keeps a key
    want, w_want = mha(x, x, x, key_padding_mask=pad, attn_mask=am, average_attn_weights=False)
    got, w_got = ours(x, x, x, key_padding_mask=pad, attn_mask=am, average_attn_weights=False)
    torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)
    torch.testing.assert_close(w_got, w_want, rtol=TOL, atol=TOL)


# ---------------------------------------------------------------- Hypothesis: bipartite batches
@st.composite
def bipartite_batches(draw: st.DrawFn) -> dict[str, object]:
    n = draw(st.integers(2, 7))
    big = draw(st.integers(0, n - 1))
    nq = [draw(st.integers(35, 60)) if b == big else draw(st.integers(1, 6)) for b in range(n)]
    nk = [draw(st.integers(1, 60)) for _ in range(n)]
    return {
        "nq": nq,
        "nk": nk,
        "keep": draw(st.sampled_from([1.0, 0.5])),
        "seed": draw(st.integers(0, 2**20)),
        "D": draw(st.sampled_from([1, 4, 7, 8, 9])),
        "heads": draw(st.sampled_from([(2, 2), (2, 1), (3, 3)])),
        "width": draw(st.sampled_from([1, "H"])),
        "grad_mask": draw(st.booleans()),
    }


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(bipartite_batches())
def test_random_bipartite_batches_fp64(case: dict[str, object]) -> None:
    """Cross attention per sequence pair (L_q != L_k), random partial edges in shuffled order,
    a per-edge additive mask (shared or per head, with −∞, with or without a gradient)."""
    nq, nk = case["nq"], case["nk"]
    assert isinstance(nq, list) and isinstance(nk, list)
    H, Hkv = case["heads"]  # type: ignore[misc]
    D = int(case["D"])  # type: ignore[call-overload]
    gen = torch.Generator().manual_seed(int(case["seed"]))  # type: ignore[call-overload]
    parts, sq, sk = [], 0, 0
    for a, b in zip(nq, nk, strict=True):
        i, j = torch.meshgrid(torch.arange(a), torch.arange(b), indexing="ij")
        sel = torch.rand(a, b, generator=gen) < float(case["keep"])  # type: ignore[arg-type]
        parts.append(torch.stack([j[sel] + sk, i[sel] + sq]))
        sq, sk = sq + a, sk + b
    ei = torch.cat(parts, 1)
    ei = ei[:, torch.randperm(ei.size(1), generator=gen)]
    g = ga.TokenGraph(ei, sk, sq, lengths=nq, params={"kv_lengths": nk})
    layer = layer_for(D, H, bias="mask", backend="dense", num_kv_heads=Hkv)
    ref = copy.deepcopy(layer)
    width = H if case["width"] == "H" else 1
    m = torch.randn(ei.size(1), width, dtype=f64, generator=gen)
    m[torch.rand(ei.size(1), generator=gen) < 0.2] = -math.inf
    m1 = m.clone().requires_grad_(bool(case["grad_mask"]))
    m2 = m.clone().requires_grad_(bool(case["grad_mask"]))
    x = torch.randn(sq, H * D, dtype=f64, generator=gen)
    xs = torch.randn(sk, H * D, dtype=f64, generator=gen)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    s1, s2 = xs.clone().requires_grad_(), xs.clone().requires_grad_()
    out = layer(x1, g, x_src=s1, edge_attr={"attn_mask": m1})
    want, _ = ref_layer(ref, x2, ei, m2, s2)
    torch.testing.assert_close(out, want, rtol=TOL, atol=TOL)
    gy = torch.randn(out.shape, dtype=f64, generator=gen)
    out.backward(gy)
    want.backward(gy)
    for a, b in ((x1, x2), (s1, s2)) + (((m1, m2),) if case["grad_mask"] else ()):
        torch.testing.assert_close(a.grad, b.grad, rtol=TOL, atol=TOL)
    for p, r in zip(layer.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, r.grad, rtol=TOL, atol=TOL)


def test_one_graph_interleaved_across_plans() -> None:
    """One graph, alternately through layers that take the bucketed path and the single grid
    (sinks), grouped and full kv heads, biased and unbiased, grads on and off."""
    g = random_graph(HUGE_TINY, 0.6, 23)
    dist = torch.randint(0, 5, (g.num_edges,))
    x = torch.randn(g.num_dst, 12, dtype=f64)
    layers = [
        layer_for(4, 3, bias="spatial", M=3, backend="dense"),
        layer_for(4, 3, bias="spatial", M=3, backend="dense", sinks=True),
        layer_for(4, 3, bias="spatial", M=3, backend="dense", num_kv_heads=1),
        layer_for(4, 3, bias="none", backend="dense"),
        layer_for(4, 3, bias="mask", backend="dense"),
    ]
    with torch.no_grad():
        layers[1].sinks.normal_(0, 2.0)
    attrs = [dist, dist, dist, None, {"attn_mask": torch.randn(g.num_edges, 1, dtype=f64)}]
    for _ in range(2):
        for layer, attr in zip(layers, attrs, strict=True):
            check(layer, x, g, attr)
            with torch.no_grad():
                check(layer, x, g, attr, grads=False)
