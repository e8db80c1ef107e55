"""Adversarial review of the modern-attention features (issue 22), written from the docs only.

Every check runs against an independent fp64 reference written out here (dense formulas:
rotate-half / interleaved RoPE, GQA by repeating key/value heads, the sink softmax, the tanh
cap, BLOOM's ALiBi slopes, transformers' own T5 bucket function), outputs and gradients:

- the native scores and options on builder, random (duplicate edges) and empty graphs, on
  every backend that accepts them (a backend that declines must say so with a ValueError);
- integer, float, negative and huge positions; translation invariance of rotary scores;
- position-aware biases given positions they cannot read (P-D for ALiBi and T5 buckets,
  fractional for T5 buckets): a clear ValueError, not an error from inside torch;
- sparse extraction against a top-k / threshold rule written out per query and head;
- BLOOM and Falcon honour a per-call ``graph_fn`` (their models drop ``**kwargs``).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gatattn as ga

f64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def rope(x: torch.Tensor, pos: torch.Tensor, r: int, base: float, interleaved: bool):
    """R(p) x for x [N, H, D], pos [N]: pairs (m, m + r/2) or (2m, 2m + 1), θ_m = base^(-2m/r)."""
    theta = base ** (-2 * torch.arange(r // 2, dtype=f64) / r)  # [r/2]
    ang = pos.to(f64)[:, None] * theta  # [N, r/2]
    cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]
    a, b = (x[..., 0:r:2], x[..., 1:r:2]) if interleaved else (x[..., : r // 2], x[..., r // 2 : r])
    out = x.clone()
    ia, ib = (
        (slice(0, r, 2), slice(1, r, 2)) if interleaved else (slice(0, r // 2), slice(r // 2, r))
    )
    out[..., ia] = a * cos - b * sin
    out[..., ib] = b * cos + a * sin
    return out


def bloom_slopes(num_heads: int) -> torch.Tensor:
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    return build_alibi_tensor(torch.ones(1, 3), num_heads, f64)[:, 0, 1]  # [H]


def reference(layer, x, g, *, hkv, pos, rot=None, cap=None, alibi=False, t5=None, sinks=None):
    """Dense written-out graph attention on the count matrix of g (duplicates count twice)."""
    H, C = layer.num_heads, x.shape[1]
    D = C // H
    w, b = layer.in_proj_weight, layer.in_proj_bias
    q = (x @ w[:C].T + b[:C]).view(-1, H, D)  # [N, H, D]
    k = (x @ w[C : C + hkv * D].T + b[C : C + hkv * D]).view(-1, hkv, D)  # [N, H_kv, D]
    v = (x @ w[C + hkv * D :].T + b[C + hkv * D :]).view(-1, hkv, D)  # [N, H_kv, D]
    if rot is not None:
        q, k = rope(q, pos, *rot), rope(k, pos, *rot)
    k, v = k.repeat_interleave(H // hkv, 1), v.repeat_interleave(H // hkv, 1)
    alpha = torch.einsum("ihd,jhd->ijh", q, k) / math.sqrt(D)  # [N, N, H]
    if cap is not None:
        alpha = cap * torch.tanh(alpha / cap)
    if alibi:
        alpha = alpha - bloom_slopes(H) * (pos[:, None] - pos[None]).abs()[..., None]
    if t5 is not None:
        from transformers.models.t5.modeling_t5 import T5Attention

        weight, bidirectional, buckets, dist = t5
        rel = pos[None].long() - pos[:, None].long()  # j - i
        alpha = (
            alpha + weight[T5Attention._relative_position_bucket(rel, bidirectional, buckets, dist)]
        )
    n = x.shape[0]
    cnt = torch.zeros(n, n, dtype=f64).index_put_(
        (g.edge_index[1], g.edge_index[0]), torch.ones(g.num_edges, dtype=f64), accumulate=True
    )  # [N_t, N_s]
    has = (cnt > 0)[..., None]
    m = alpha.masked_fill(~has, -math.inf).amax(1)  # [N, H]
    if sinks is not None:
        m = torch.maximum(m, sinks)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp((alpha - m[:, None]).masked_fill(~has, -math.inf))  # [N, N, H]
    den = (cnt[..., None] * e).sum(1) + (torch.exp(sinks - m) if sinks is not None else 0)
    weights = e / torch.where(den > 0, den, torch.ones_like(den))[:, None]  # [N, N, H]
    o = torch.einsum("ij,ijh,jhd->ihd", cnt, weights, v).reshape(n, C)
    return layer.out_proj(o), alpha, weights


GRAPHS = {
    "complete_b": lambda: ga.complete_graph(lengths=[3, 4]),
    "causal": lambda: ga.causal_graph(7),
    "window": lambda: ga.window_graph(7, 2),
    "sink_window": lambda: ga.sink_window_graph(lengths=[4, 3], num_sinks=1, window=2),
    "random_dup": lambda: ga.TokenGraph(
        torch.randint(0, 7, (2, 30), generator=torch.Generator().manual_seed(1)), 7
    ),
    "no_edges": lambda: ga.TokenGraph(torch.empty(2, 0, dtype=torch.long), 7),
    "one_node": lambda: ga.complete_graph(1),
}

CASES = {  # name -> (score(H, D), reference options, H_kv, sinks)
    "mqa": (lambda H, D: "scaled_dot", {}, 1, False),
    "rotary_half": (lambda H, D: ga.Rotary(D), {"rot": (6, 10000.0, False)}, 4, False),
    "rotary2_interleaved_gqa": (
        lambda H, D: ga.Rotary(D, rotary_dim=2, base=500.0, interleaved=True),
        {"rot": (2, 500.0, True)},
        2,
        False,
    ),
    "rotary_sinks": (lambda H, D: ga.Rotary(D, rotary_dim=4), {"rot": (4, 1e4, False)}, 2, True),
    "softcap_rotary": (
        lambda H, D: ga.Softcap(ga.Rotary(D, rotary_dim=4), 0.9),
        {"cap": 0.9, "rot": (4, 1e4, False)},
        2,
        False,
    ),
    "softcap_then_alibi": (
        lambda H, D: ga.Softcap(ga.make_score("scaled_dot", H, D), 0.8) + ga.ALiBi(H),
        {"cap": 0.8, "alibi": True},
        4,
        False,
    ),
    "t5_causal": (
        lambda H, D: ga.make_score("scaled_dot", H, D) + ga.RelativePositionBias(H, 8, 5, False),
        {"t5": (False, 8, 5)},
        4,
        False,
    ),
}


@pytest.mark.parametrize("backend", ["edge", "auto", "dense", "block"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("gname", list(GRAPHS))
def test_native_options_match_written_out_formula(gname, case, backend):
    g = GRAPHS[gname]()
    H, D = 4, 6
    make_score, opts, hkv, sinks = CASES[case]
    torch.manual_seed(0)
    layer = ga.GraphAttention(
        H * D, H, score=make_score(H, D), num_kv_heads=hkv, sinks=sinks, backend=backend
    ).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    opts = dict(opts)
    if "t5" in opts:
        opts["t5"] = (layer.score.biases[0].embedding.weight, *opts["t5"])
    x = torch.randn(g.num_nodes, H * D, dtype=f64, requires_grad=True)
    try:
        res = layer(x, g, return_attention=True)
    except ValueError as err:  # a forced fast backend may decline, with its reason
        assert backend in ("dense", "block") and "cannot run" in str(err)
        return
    pos = g.positions().to(f64)
    out, alpha, weights = reference(
        layer, x, g, hkv=hkv, pos=pos, sinks=layer.sinks if sinks else None, **opts
    )
    ei = res.edge_index
    torch.testing.assert_close(res.out, out, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(res.weights, weights[ei[1], ei[0]], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(res.scores, alpha[ei[1], ei[0]], atol=1e-10, rtol=1e-10)
    grad = torch.randn_like(out)
    params = [x, *layer.parameters()]
    ours = torch.autograd.grad(res.out, params, grad, allow_unused=True)
    theirs = torch.autograd.grad(out, params, grad, allow_unused=True)
    for a, b in zip(ours, theirs):
        if b is not None:
            torch.testing.assert_close(
                a if a is not None else torch.zeros_like(b), b, atol=1e-9, rtol=1e-9
            )


@pytest.mark.parametrize("kind", ["float", "negative", "huge"])
def test_rotary_positions_of_any_kind(kind):
    g = ga.causal_graph(lengths=[2, 5])
    gen = torch.Generator().manual_seed(3)
    pos = {
        "float": torch.rand(7, generator=gen, dtype=f64) * 5,
        "negative": -torch.randint(0, 20, (7,), generator=gen),
        "huge": torch.randint(0, 20, (7,), generator=gen) + 10**6,
    }[kind]
    torch.manual_seed(0)
    layer = ga.GraphAttention(12, 3, score=ga.Rotary(4)).double()
    x = torch.randn(7, 12, dtype=f64)
    out, _, _ = reference(layer, x, g, hkv=3, pos=pos.to(f64), rot=(4, 1e4, False))
    torch.testing.assert_close(layer(x, g, pos=pos), out, atol=1e-10, rtol=1e-10)
    shifted = layer(x, g, pos=pos + 12345.5, return_attention=True)  # depends on p_i - p_j only
    torch.testing.assert_close(
        shifted.scores, layer(x, g, pos=pos, return_attention=True).scores, atol=1e-8, rtol=1e-8
    )


@pytest.mark.parametrize("backend", ["edge", "auto", "dense"])
@pytest.mark.parametrize("bias", ["alibi", "relative_position"])
def test_two_d_positions_refused_by_sequence_biases(backend, bias):
    """ALiBi and T5 buckets read 1-D positions: P-D positions were a RuntimeError from inside
    torch (a broadcast or expand), now a ValueError that names the bias and the shape."""
    layer = ga.GraphAttention(6, 2, score=f"scaled_dot+{bias}", backend=backend)
    with pytest.raises(ValueError, match=r"1-D token positions.*P = 2"):
        layer(torch.randn(4, 6), ga.complete_graph(4), pos=torch.randn(4, 2))


@pytest.mark.parametrize("backend", ["edge", "auto", "dense"])
def test_t5_buckets_float_positions(backend):
    """Whole-number float positions equal int positions; fractional ones are refused clearly
    (they were ``RuntimeError: Expected tensor for argument #1 'indices' ...``)."""
    torch.manual_seed(0)
    layer = ga.GraphAttention(6, 2, score="scaled_dot+relative_position", backend=backend)
    x, g = torch.randn(5, 6), ga.complete_graph(5)
    ints = torch.tensor([0, 3, -2, 40, 7])
    torch.testing.assert_close(layer(x, g, pos=ints.double()), layer(x, g, pos=ints))
    with pytest.raises(ValueError, match="integer positions"):
        layer(x, g, pos=torch.tensor([0.0, 0.5, 2.25, -1.0, 7.0]))


def test_alibi_float_positions_match_formula():
    torch.manual_seed(0)
    layer = ga.GraphAttention(6, 2, score="scaled_dot+alibi").double()
    x, g = torch.randn(5, 6, dtype=f64), ga.complete_graph(5)
    pos = torch.tensor([0.0, 0.5, 2.25, -1.0, 7.0], dtype=f64)
    res = layer(x, g, pos=pos, return_attention=True)
    _, alpha, _ = reference(layer, x, g, hkv=2, pos=pos, alibi=True)
    ei = res.edge_index
    torch.testing.assert_close(res.scores, alpha[ei[1], ei[0]], atol=1e-12, rtol=1e-12)


def kept_by_rule(res, top_k, threshold, heads):
    """(edge, head) rows of the docs' rule, in the documented order (target, head, edges)."""
    rows, weights = [], res.weights.detach()
    for i in range(res.out.shape[0]):
        edges = (res.edge_index[1] == i).nonzero().flatten().tolist()
        for h in sorted(set(range(res.weights.shape[1]) if heads is None else heads)):
            cand = [e for e in edges if threshold is None or weights[e, h] >= threshold]
            order = sorted(range(len(cand)), key=lambda t: (-float(weights[cand[t], h]), t))
            rows += [(cand[t], h) for t in sorted(order[:top_k] if top_k else order)]
    return rows


@pytest.mark.parametrize("gname", ["complete_b", "random_dup", "no_edges", "one_node"])
@pytest.mark.parametrize("top_k,threshold", [(1, None), (100, None), (None, 0.2), (2, 0.15)])
@pytest.mark.parametrize("heads", [None, [0, 2]])
def test_sparsify_is_the_documented_rule(gname, top_k, threshold, heads):
    g = GRAPHS[gname]()
    torch.manual_seed(0)
    res = ga.GraphAttention(12, 3, backend="edge").double()(
        torch.randn(g.num_nodes, 12, dtype=f64), g, return_attention=True
    )
    sp = ga.inspect.sparsify(res, top_k=top_k, threshold=threshold, heads=heads)
    rows = kept_by_rule(res, top_k, threshold, heads)
    assert sp.num_edges == len(rows)
    if rows:
        e, h = torch.tensor(rows).T
        assert torch.equal(sp.edge_index, res.edge_index[:, e]) and torch.equal(sp.head, h)
        assert torch.equal(sp.weights, res.weights[e, h])


def test_sparsify_ties_keep_the_first_edges():
    torch.manual_seed(0)
    res = ga.GraphAttention(6, 2).double()(
        torch.ones(5, 6, dtype=f64), ga.complete_graph(5), return_attention=True
    )  # identical keys: uniform weights
    sp = ga.inspect.sparsify(res, top_k=2)
    assert sp.num_edges == 5 * 2 * 2 and sp.edge_index[0].tolist() == [0, 1] * 10


@pytest.mark.parametrize("family", ["bloom", "falcon"])
def test_bloom_falcon_honour_a_per_call_graph_fn(family):
    """``model(**inputs, graph_fn=...)`` (docs/hf.md, "Swapping the graph") was silently
    ignored by BLOOM and Falcon, whose models drop ``**kwargs``: the swap did nothing, and a
    graph that crosses batch rows was not refused."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = {"vocab_size": 50, "hidden_size": 16, "num_attention_heads": 4}
    if family == "bloom":
        config = transformers.BloomConfig(n_layer=2, **common)
        model = transformers.BloomForCausalLM(config)
    else:
        config = transformers.FalconConfig(num_hidden_layers=2, alibi=True, **common)
        model = transformers.FalconForCausalLM(config)
    model = model.eval().double()
    fn = functools.partial(ga.sink_window_graph, num_sinks=1, window=1)
    per_call, default = ga.convert(model), ga.hf.convert(model, graph_fn=fn)
    ids = torch.randint(3, 50, (2, 6))
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        swapped = per_call(input_ids=ids, attention_mask=mask, graph_fn=fn, output_attentions=True)
        same = default(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(swapped.logits, same, atol=1e-12, rtol=0)
        again = per_call(input_ids=ids, attention_mask=mask, output_attentions=True)  # not kept
        off = default(input_ids=ids, attention_mask=mask, graph_fn=None).logits  # None: no swap
        torch.testing.assert_close(again.logits, off, atol=1e-12, rtol=0)
        assert (again.logits - same).abs().max() > 1e-6  # the swap changed the model
        with pytest.raises(ValueError, match="sequence"):
            per_call(
                input_ids=ids, attention_mask=mask, graph_fn=lambda n: ga.complete_graph(sum(n))
            )
    for a in swapped.attentions:  # sinks + window: each query keeps token 0 and itself
        assert int((a[0, 0] > 0).sum()) == 11
    assert not any("graph_fn" in k for m in per_call.modules() for k in m.__dict__)


def test_neighbourhood_softmax_sinks_of_the_wrong_shape():
    """A sink per head: [3] sinks for 2 heads was a broadcast RuntimeError."""
    with pytest.raises(ValueError, match=r"sinks must hold one logit per head.*\(3,\)"):
        ga.neighbourhood_softmax(torch.randn(3, 2), torch.tensor([0, 0, 1]), 2, torch.zeros(3))


@pytest.mark.parametrize("hkv", [1, 2])
@pytest.mark.parametrize("extra", ["add_bias_kv", "add_zero_attn"])
def test_grouped_drop_in_extra_keys(hkv, extra):
    """GraphMultiheadAttention(num_kv_heads=) with torch's extra key nodes: bias_k/bias_v are
    [1, 1, H_kv·D] and join every query, as the written-out formula does."""
    H, D, L = 4, 3, 5
    torch.manual_seed(0)
    mha = ga.GraphMultiheadAttention(H * D, H, num_kv_heads=hkv, dtype=f64, **{extra: True})
    with torch.no_grad():
        for p in mha.parameters():
            p.copy_(torch.randn_like(p))
    x = torch.randn(L, 1, H * D, dtype=f64)
    out, w = mha(x, x, x, need_weights=True, average_attn_weights=False)  # [L, 1, C], [1, H, L, S']
    C, KD, xs = H * D, hkv * D, x[:, 0]
    q = (xs @ mha.in_proj_weight[:C].T + mha.in_proj_bias[:C]).view(L, H, D)
    k = (xs @ mha.in_proj_weight[C : C + KD].T + mha.in_proj_bias[C : C + KD]).view(L, hkv, D)
    v = (xs @ mha.in_proj_weight[C + KD :].T + mha.in_proj_bias[C + KD :]).view(L, hkv, D)
    extra_k = mha.bias_k.view(1, hkv, D) if extra == "add_bias_kv" else torch.zeros(1, hkv, D)
    extra_v = mha.bias_v.view(1, hkv, D) if extra == "add_bias_kv" else torch.zeros(1, hkv, D)
    k = torch.cat([k, extra_k.to(f64)]).repeat_interleave(H // hkv, 1)  # [L + 1, H, D]
    v = torch.cat([v, extra_v.to(f64)]).repeat_interleave(H // hkv, 1)
    attn = (torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(D)).softmax(-1)  # [H, L, L + 1]
    ref = mha.out_proj(torch.einsum("hij,jhd->ihd", attn, v).reshape(L, C))
    torch.testing.assert_close(out[:, 0], ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(w[0], attn, atol=1e-10, rtol=1e-10)


@given(
    n=st.integers(1, 9),
    num_edges=st.integers(0, 40),
    seed=st.integers(0, 2**16),
    hkv=st.sampled_from([1, 2, 4]),
    sinks=st.booleans(),
)
def test_random_graphs_rotary_grouped_sinks(n, num_edges, seed, hkv, sinks):
    """Random graphs (duplicate edges, isolated targets) with rotary + GQA (+ sinks), random
    float positions: the dispatched path equals the written-out formula in fp64."""
    gen = torch.Generator().manual_seed(seed)
    g = ga.TokenGraph(torch.randint(0, n, (2, num_edges), generator=gen), n)
    torch.manual_seed(seed)
    layer = ga.GraphAttention(16, 4, score=ga.Rotary(4), num_kv_heads=hkv, sinks=sinks).double()
    if sinks:
        with torch.no_grad():
            layer.sinks.normal_()
    x = torch.randn(n, 16, dtype=f64)
    pos = torch.randn(n, dtype=f64, generator=gen) * 50
    out, _, _ = reference(
        layer, x, g, hkv=hkv, pos=pos, rot=(4, 1e4, False), sinks=layer.sinks if sinks else None
    )
    torch.testing.assert_close(layer(x, g, pos=pos), out, atol=1e-10, rtol=1e-10)
