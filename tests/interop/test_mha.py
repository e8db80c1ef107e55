"""GraphMultiheadAttention and GraphTransformerEncoderLayer equal torch's modules (docs/interop.md).

Weights are copied from nn.MultiheadAttention / nn.TransformerEncoderLayer; outputs, returned
weights and gradients (inputs and every parameter) are compared, in eval mode (dropout off).
Sizes are pairwise distinct: B=2, L=5, S=7, H=3, D=4 (C=12), kdim=9, vdim=11.
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
from gatattn.backends import Problem, select_backend
from gatattn.interop import AttnMaskBias
from gatattn.interop.masks import attention_graph
from gatattn.scores import DenseContext, Edges, ScaledDot

B, L, S, H, C = 2, 5, 7, 3, 12


def mha_param_grads(mha: nn.MultiheadAttention) -> list[Tensor]:
    """torch's parameter gradients in order: GraphAttention stores the same parameters (names,
    shapes, order) as nn.MultiheadAttention."""
    return [p.grad for p in mha.parameters()]


def kpm_bool(batch: int, length: int) -> Tensor:
    """Padding mask [B, S] (True = pad) with a different length per sequence, none empty."""
    lens = torch.tensor([length - 2, length][:batch])
    return torch.arange(length)[None, :] >= lens[:, None]


def to_float(mask: Tensor) -> Tensor:
    return torch.zeros(mask.shape, dtype=torch.float64).masked_fill(mask, float("-inf"))


def make_masks(kind: str, tgt: int, src: int) -> dict[str, object]:
    """Mask arguments for nn.MultiheadAttention; every query keeps >= 1 allowed key."""
    g = torch.Generator().manual_seed(1)
    banned = torch.rand(tgt, src, generator=g) < 0.4  # True = not allowed
    banned[:, 0] = False
    banned_h = torch.rand(B * H, tgt, src, generator=g) < 0.4
    banned_h[..., 0] = False
    kpm = kpm_bool(B, src)
    causal = torch.ones(tgt, src, dtype=torch.bool).triu(1)
    bias = torch.randn(tgt, src, generator=g, dtype=torch.float64)
    bias_h = torch.randn(B * H, tgt, src, generator=g, dtype=torch.float64)
    return {
        "none": {},
        "kpm_bool": {"key_padding_mask": kpm},
        "kpm_float": {"key_padding_mask": to_float(kpm)},
        "attn_bool": {"attn_mask": banned},
        "attn_float": {"attn_mask": bias.masked_fill(banned, float("-inf"))},
        "attn_bool_heads": {"attn_mask": banned_h},
        "attn_float_heads": {"attn_mask": bias_h},
        "attn_bool+kpm_bool": {"attn_mask": banned, "key_padding_mask": kpm},
        "attn_float+kpm_float": {"attn_mask": bias, "key_padding_mask": to_float(kpm)},
        "heads_bool+kpm_bool": {"attn_mask": banned_h, "key_padding_mask": kpm},
        "causal": {"attn_mask": causal, "is_causal": True},
        "causal+kpm": {"attn_mask": causal, "is_causal": True, "key_padding_mask": kpm},
    }[kind]


MASKS = [
    "none",
    "kpm_bool",
    "kpm_float",
    "attn_bool",
    "attn_float",
    "attn_bool_heads",
    "attn_float_heads",
    "attn_bool+kpm_bool",
    "attn_float+kpm_float",
    "heads_bool+kpm_bool",
    "causal",
    "causal+kpm",
]


def cast(masks: dict[str, object], dtype: torch.dtype) -> dict[str, object]:
    return {
        k: v.to(dtype) if isinstance(v, Tensor) and v.is_floating_point() else v
        for k, v in masks.items()
    }


def run_pair(
    dtype: torch.dtype,
    batch_first: bool,
    cross: bool,
    masks: dict[str, object],
    average: bool,
    within_torch_error: Callable[..., None] | None = None,
) -> None:
    """mha and its twin on the same inputs: outputs, weights and every gradient. fp64: equal
    to 1e-10; fp32: against the fp64 golden, within a multiple of torch's own error."""
    kdim, vdim = (9, 11) if cross else (None, None)
    tgt, src = L, (S if cross else L)
    mha = nn.MultiheadAttention(C, H, kdim=kdim, vdim=vdim, batch_first=batch_first)
    mha = mha.to(dtype).eval()
    twin = ga.GraphMultiheadAttention.from_torch(mha)

    def shaped(n: int, c: int) -> Tensor:
        return torch.randn((B, n, c) if batch_first else (n, B, c), dtype=dtype)

    q = shaped(tgt, C)
    k = shaped(src, kdim or C) if cross else q
    v = shaped(src, vdim or C) if cross else q

    def results(model: nn.Module, dtype: torch.dtype) -> list[Tensor]:
        """out, weights, grads of q, k, v and of every parameter, in ``dtype``."""
        qq, kk, vv = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
        out, w = model(
            qq, kk, vv, need_weights=True, average_attn_weights=average, **cast(masks, dtype)
        )
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=dtype).view(out.shape)).sum()
        loss = loss + (w * torch.linspace(2, -1, w.numel(), dtype=dtype).view(w.shape)).sum()
        loss.backward()
        assert w.shape == ((B, tgt, src) if average else (B, H, tgt, src))
        params = [p.grad for p in model.parameters()] if model is not mha else mha_param_grads(mha)
        return [out, w, qq.grad, kk.grad, vv.grad, *params]  # type: ignore[list-item]

    theirs, ours = results(mha, dtype), results(twin, dtype)
    assert len(ours) == len(theirs)
    if dtype == torch.float64:
        for a, b in zip(ours, theirs, strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
        return
    assert within_torch_error is not None
    gold_mha = copy.deepcopy(mha).double()
    mha = gold_mha  # results() reads mha's parameter gradients through mha_param_grads
    gold = results(gold_mha, torch.float64)
    for i, (a, b, c) in enumerate(zip(ours, theirs, gold, strict=True)):
        within_torch_error(a, b, c, factor=4.0 if i < 5 else 64.0, what=f"result {i}")


SELF_CASES = [(m, bf) for m in MASKS for bf in (False, True)]
# Cross-attention (L=5 keys of width kdim=9 and values of width vdim=11, S=7): every non-causal
# mask, in alternating layouts.
CROSS_CASES = [(m, i % 2 == 0) for i, m in enumerate(x for x in MASKS if "causal" not in x)]


@pytest.mark.parametrize(("mask", "batch_first"), SELF_CASES)
def test_mha_self_attention_equals_torch_fp64(mask: str, batch_first: bool) -> None:
    run_pair(torch.float64, batch_first, False, make_masks(mask, L, L), average=batch_first)


@pytest.mark.parametrize(("mask", "batch_first"), CROSS_CASES)
def test_mha_cross_attention_kdim_vdim_equals_torch_fp64(mask: str, batch_first: bool) -> None:
    run_pair(torch.float64, batch_first, True, make_masks(mask, L, S), average=not batch_first)


@pytest.mark.parametrize("mask", ["none", "attn_float+kpm_float", "heads_bool+kpm_bool"])
@pytest.mark.parametrize("average", [True, False])
def test_mha_equals_torch_fp32(mask: str, average: bool, within_torch_error) -> None:
    masks = make_masks(mask, L, S)
    run_pair(
        torch.float32, True, True, masks, average=average, within_torch_error=within_torch_error
    )


def test_mha_unbatched_equals_torch() -> None:
    mha = nn.MultiheadAttention(C, H).double().eval()
    twin = ga.GraphMultiheadAttention.from_torch(mha)
    x = torch.randn(L, C, dtype=torch.float64)
    kpm = torch.tensor([False, False, False, True, False])
    am = torch.rand(H, L, L) < 0.3
    am[..., 0] = False
    for kw in ({}, {"key_padding_mask": kpm}, {"attn_mask": am}):
        (o1, w1), (o2, w2) = mha(x, x, x, **kw), twin(x, x, x, **kw)
        assert o2.shape == (L, C) and w2.shape == (L, L)
        torch.testing.assert_close(o2, o1, atol=1e-10, rtol=0)
        torch.testing.assert_close(w2, w1, atol=1e-10, rtol=0)


def test_mha_need_weights_false_returns_none() -> None:
    mha = nn.MultiheadAttention(C, H, batch_first=True).double().eval()
    twin = ga.GraphMultiheadAttention.from_torch(mha)
    x = torch.randn(B, L, C, dtype=torch.float64)
    out, w = twin(x, x, x, need_weights=False)
    assert w is None
    torch.testing.assert_close(out, mha(x, x, x, need_weights=False)[0], atol=1e-10, rtol=0)


def test_is_causal_without_mask_raises_like_torch() -> None:
    mha = nn.MultiheadAttention(C, H, batch_first=True).double().eval()
    twin = ga.GraphMultiheadAttention.from_torch(mha)
    x = torch.randn(B, L, C, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        mha(x, x, x, is_causal=True)
    for catch in (RuntimeError, ValueError):
        with pytest.raises(catch, match="is_causal=True needs attn_mask.*Need attn_mask"):
            twin(x, x, x, is_causal=True)


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("kpm", [False, True])
def test_is_causal_hint_with_mask_equals_torch(need_weights: bool, kpm: bool) -> None:
    # torch runs its causal kernel when nothing needs the mask (no padding mask, no weights),
    # and uses the mask otherwise; the twin builds the causal graph or the mask's graph.
    mha = nn.MultiheadAttention(C, H, batch_first=True).double().eval()
    twin = ga.GraphMultiheadAttention.from_torch(mha)
    x = torch.randn(B, L, C, dtype=torch.float64)
    causal = torch.ones(L, L, dtype=torch.bool).triu(1)  # True = not allowed
    kw = {"key_padding_mask": kpm_bool(B, L)} if kpm else {}
    o1, w1 = mha(x, x, x, attn_mask=causal, is_causal=True, need_weights=need_weights, **kw)
    o2, w2 = twin(x, x, x, attn_mask=causal, is_causal=True, need_weights=need_weights, **kw)
    torch.testing.assert_close(o2, o1, atol=1e-10, rtol=0)
    assert (w1 is None) == (w2 is None) == (not need_weights)
    if w1 is not None:
        torch.testing.assert_close(w2, w1, atol=1e-10, rtol=0)


def test_is_causal_fast_path_ignores_a_wrong_mask_like_torch() -> None:
    # is_causal=True, need_weights=False and no padding mask: torch does not read attn_mask.
    mha = nn.MultiheadAttention(C, H, batch_first=True).double().eval()
    twin = ga.GraphMultiheadAttention.from_torch(mha)
    x = torch.randn(B, L, C, dtype=torch.float64)
    wrong = torch.zeros(L + 2, L + 1)
    ref = mha(x, x, x, attn_mask=wrong, is_causal=True, need_weights=False)[0]
    out = twin(x, x, x, attn_mask=wrong, is_causal=True, need_weights=False)[0]
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    causal = nn.Transformer.generate_square_subsequent_mask(L, dtype=torch.float64)
    torch.testing.assert_close(out, mha(x, x, x, attn_mask=causal)[0], atol=1e-10, rtol=0)
    with pytest.raises(RuntimeError, match="The shape of the 2D attn_mask"):  # mask read: checked
        twin(x, x, x, attn_mask=wrong, is_causal=True, need_weights=True)


def test_fully_masked_query_gives_zero_attention_like_torch_sdpa_path() -> None:
    mha = nn.MultiheadAttention(C, H, batch_first=True).double().eval()
    nn.init.normal_(mha.out_proj.bias)  # so "zero attention" shows as out = out_proj.bias
    twin = ga.GraphMultiheadAttention.from_torch(mha)
    x = torch.randn(B, L, C, dtype=torch.float64, requires_grad=True)
    banned = torch.zeros(L, L, dtype=torch.bool)
    banned[2] = True  # query 2 may attend to nothing
    ref = mha(x, x, x, attn_mask=banned, need_weights=False)[0]
    assert torch.isnan(mha(x, x, x, attn_mask=banned)[1][:, 2]).all()  # torch's weights: NaN
    out, w = twin(x, x, x, attn_mask=banned)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(out[:, 2], mha.out_proj.bias.expand(B, C), atol=1e-12, rtol=0)
    assert w is not None and (w[:, 2] == 0).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_dropout_is_applied_in_training_only() -> None:
    twin = ga.GraphMultiheadAttention(C, H, dropout=0.5, batch_first=True).double()
    x = torch.randn(B, L, C, dtype=torch.float64)
    twin.eval()
    o_eval, w_eval = twin(x, x, x)
    twin.train()
    torch.manual_seed(3)
    o_a, w_a = twin(x, x, x)
    torch.manual_seed(3)
    o_b, _ = twin(x, x, x)
    o_c, _ = twin(x, x, x)
    assert (o_a - o_eval).abs().max() > 1e-3  # dropout changed the output
    torch.testing.assert_close(o_a, o_b)  # ... reproducibly under the same seed
    assert (o_a - o_c).abs().max() > 1e-3  # ... and randomly otherwise
    torch.testing.assert_close(w_a, w_eval)  # returned weights are before dropout


def test_mha_to_torch_round_trip() -> None:
    twin = ga.GraphMultiheadAttention(C, H, kdim=9, vdim=11, batch_first=True).double().eval()
    back = twin.to_torch()
    assert isinstance(back, nn.MultiheadAttention) and back.batch_first
    q = torch.randn(B, L, C, dtype=torch.float64)
    k, v = torch.randn(B, S, 9, dtype=torch.float64), torch.randn(B, S, 11, dtype=torch.float64)
    torch.testing.assert_close(twin(q, k, v)[0], back(q, k, v)[0], atol=1e-10, rtol=0)


def test_mha_attributes_match_torch() -> None:
    twin = ga.GraphMultiheadAttention(C, H, dropout=0.25, kdim=9, vdim=11, batch_first=True)
    assert (twin.embed_dim, twin.num_heads, twin.head_dim) == (C, H, C // H)
    assert (twin.kdim, twin.vdim, twin.dropout, twin.batch_first) == (9, 11, 0.25, True)
    assert not twin._qkv_same_embed_dim and twin.in_proj_weight is None
    assert twin.bias_k is None and twin.bias_v is None and not twin.add_zero_attn


@pytest.mark.parametrize(
    ("tgt", "src", "is_causal", "tag"),
    [(L, L, False, "complete"), (L, S, False, "bipartite"), (L, L, True, "causal")],
)
def test_unmasked_calls_get_tagged_graphs_for_the_dense_backend(
    tgt: int, src: int, is_causal: bool, tag: str
) -> None:
    graph, bias = attention_graph(
        B, H, tgt, src, key_padding_mask=None, attn_mask=None, causal=is_causal, need_weights=False,
        dtype=torch.float32, device=torch.device("cpu"),
    )  # fmt: skip
    assert graph.structure == tag and bias is None
    assert (graph.num_dst, graph.num_src) == (B * tgt, B * src)
    q = torch.zeros(B * tgt, H, C // H)
    name, why = select_backend("auto", Problem(q, q, q, graph, ScaledDot()))
    assert name == "dense", why


def test_bool_masks_need_no_bias_but_float_and_per_head_masks_do() -> None:
    kw = {
        "causal": False,
        "need_weights": False,
        "dtype": torch.float64,
        "device": torch.device("cpu"),
    }
    for masks, has_bias in (
        (make_masks("attn_bool+kpm_bool", L, S), False),
        (make_masks("attn_float", L, S), True),
        (make_masks("attn_bool_heads", L, S), True),
    ):
        graph, bias = attention_graph(
            B, H, L, S, key_padding_mask=masks.get("key_padding_mask"),  # type: ignore[arg-type]
            attn_mask=masks.get("attn_mask"), **kw,  # type: ignore[arg-type]
        )  # fmt: skip
        assert (bias is not None) == has_bias
        if bias is not None:  # a grid, and per edge [E, 1 | H] when read
            assert bias["attn_mask"].shape[0] == graph.num_edges


# ---------------------------------------------------------------------- bad input
def test_from_torch_rejects_other_modules() -> None:
    with pytest.raises(TypeError, match="nn.MultiheadAttention"):
        ga.GraphMultiheadAttention.from_torch(nn.Linear(C, C))  # type: ignore[arg-type]


def test_attn_mask_bias_edge_and_dense_forms_agree() -> None:
    # α = <q_i, k_j>/√D + M_ij per edge equals the dense formula with M as [L_q, L_k, H].
    n, d = 4, 5
    g = ga.complete_graph(n)
    q, k = torch.randn(n, H, d, dtype=torch.float64), torch.randn(n, H, d, dtype=torch.float64)
    m = torch.randn(n, n, H, dtype=torch.float64)  # [i, j, h]
    score = ScaledDot() + AttnMaskBias()
    attr = m[g.edge_index[1], g.edge_index[0]]  # [E, H]
    per_edge = score.edge_scores(q, k, Edges(g.edge_index[0], g.edge_index[1], g, attr))
    pos = torch.arange(n)
    dense = score.dense(q.transpose(0, 1), k.transpose(0, 1), DenseContext(pos, pos, m))
    torch.testing.assert_close(per_edge, dense.permute(1, 2, 0).reshape(-1, H), atol=1e-12, rtol=0)
    plain = score.edge_scores(q, k, Edges(g.edge_index[0], g.edge_index[1], g))  # no attr: + 0
    torch.testing.assert_close(plain, ScaledDot().edge_scores(q, k, Edges(*g.edge_index, g)))
    no_attr = score.dense(q.transpose(0, 1), k.transpose(0, 1), DenseContext(pos, pos))
    torch.testing.assert_close(
        no_attr, ScaledDot().dense(q.transpose(0, 1), k.transpose(0, 1), None)
    )


def test_attn_mask_bias_rejects_bad_edge_attr() -> None:
    g = ga.complete_graph(3)
    edges = Edges(g.edge_index[0], g.edge_index[1], g, torch.zeros(9))
    with pytest.raises(ValueError, match=r"\[E, 1\] or \[E, H\], got \[9\]"):
        AttnMaskBias()(edges)


# ---------------------------------------------------------------------- encoder layer
def encoder_param_grads(layer: nn.TransformerEncoderLayer) -> list[Tensor]:
    rest = [p.grad for n, p in layer.named_parameters() if not n.startswith("self_attn.")]
    return mha_param_grads(layer.self_attn) + rest


@pytest.mark.parametrize(
    ("activation", "norm_first", "batch_first", "bias", "mask"),
    [
        ("relu", False, False, True, "attn_bool+kpm_bool"),
        ("gelu", True, True, True, "attn_float"),
        (F.silu, False, True, False, "causal+kpm"),
        (nn.GELU(approximate="tanh"), True, False, True, "none"),
    ],
)
def test_encoder_layer_equals_torch(
    activation: object, norm_first: bool, batch_first: bool, bias: bool, mask: str
) -> None:
    dtype = torch.float64
    ref = nn.TransformerEncoderLayer(
        C, H, 17, dropout=0.1, activation=activation, layer_norm_eps=1e-6,  # type: ignore[arg-type]
        batch_first=batch_first, norm_first=norm_first, bias=bias, dtype=dtype,
    ).eval()  # fmt: skip
    twin = ga.GraphTransformerEncoderLayer.from_torch(ref)
    assert twin.norm1.eps == 1e-6 and twin.batch_first == batch_first
    masks = cast(make_masks(mask, L, L), dtype)
    kw = {
        "src_mask": masks.get("attn_mask"),
        "src_key_padding_mask": masks.get("key_padding_mask"),
        "is_causal": masks.get("is_causal", False),
    }
    x = torch.randn((B, L, C) if batch_first else (L, B, C), dtype=dtype)
    outs, grads = [], []
    for model in (ref, twin):
        xx = x.clone().requires_grad_()
        out = model(xx, **kw)
        (out * torch.linspace(-1, 1, out.numel(), dtype=dtype).view(out.shape)).sum().backward()
        outs.append(out)
        grads.append(xx.grad)
    torch.testing.assert_close(outs[1], outs[0], atol=1e-10, rtol=0)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-10, rtol=0)
    mine = [p.grad for p in twin.parameters()]
    for a, b in zip(mine, encoder_param_grads(ref), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_encoder_layer_equals_torch_fused_fast_path_fp32(within_torch_error) -> None:
    # eval + no_grad + batch_first + even heads: torch runs its fused kernel; compare like for like.
    ref = nn.TransformerEncoderLayer(C, 2, 19, batch_first=True).eval()
    twin = ga.GraphTransformerEncoderLayer.from_torch(ref)
    x = torch.randn(B, L, C)
    with torch.no_grad():
        gold = copy.deepcopy(ref).double()(x.double())  # against the fp64 golden, as torch
        within_torch_error(twin(x), ref(x), gold, what="fused fast path")


def test_encoder_layer_gnn_form_equals_padded_dense() -> None:
    # [N, C] node features of two sequences (lengths 5 and 3) on a block-diagonal complete graph
    # equal torch's layer on the padded batch, at the real tokens.
    ref = nn.TransformerEncoderLayer(C, H, 17, batch_first=True, dtype=torch.float64).eval()
    twin = ga.GraphTransformerEncoderLayer.from_torch(ref)
    lengths = [5, 3]
    x = torch.randn(B, L, C, dtype=torch.float64)
    kpm = torch.arange(L)[None, :] >= torch.tensor(lengths)[:, None]
    dense = ref(x, src_key_padding_mask=kpm)  # [B, L, C]
    nodes = x[~kpm]  # [N, C]
    out = twin(nodes, graph=ga.complete_graph(lengths=lengths))  # [N, C]
    torch.testing.assert_close(out, dense[~kpm], atol=1e-10, rtol=0)


def test_encoder_layer_gnn_form_sparse_graph_equals_masked_dense() -> None:
    ref = nn.TransformerEncoderLayer(C, H, 17, dtype=torch.float64).eval()
    twin = ga.GraphTransformerEncoderLayer.from_torch(ref)
    allowed = (torch.arange(L)[:, None] - torch.arange(L)[None, :]).abs() <= 1  # window 1
    x = torch.randn(L, C, dtype=torch.float64)
    dense = ref(x.unsqueeze(1), src_mask=~allowed).squeeze(1)  # torch: True = not allowed
    out = twin(x, graph=ga.from_mask(allowed))
    torch.testing.assert_close(out, dense, atol=1e-10, rtol=0)


def test_encoder_layer_dropout_in_training() -> None:
    layer = ga.GraphTransformerEncoderLayer(C, H, 17, dropout=0.3).double()
    x = torch.randn(L, B, C, dtype=torch.float64)
    ev = layer.eval()(x)
    tr = layer.train()(x)
    assert (tr - ev).abs().max() > 1e-3


def test_encoder_layer_bad_input() -> None:
    layer = ga.GraphTransformerEncoderLayer(C, H, 17)
    with pytest.raises(AssertionError, match="only bool and floating types of src_key_padding"):
        layer(torch.randn(L, B, C), src_key_padding_mask=torch.zeros(B, L, dtype=torch.uint8))
    with pytest.raises(ValueError, match="'swish'"):
        ga.GraphTransformerEncoderLayer(C, H, activation="swish")
    with pytest.raises(TypeError, match="a string or a callable, got 3"):
        ga.GraphTransformerEncoderLayer(C, H, activation=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="nn.TransformerEncoderLayer"):
        ga.GraphTransformerEncoderLayer.from_torch(nn.Linear(2, 2))  # type: ignore[arg-type]
    layer = ga.GraphTransformerEncoderLayer(C, H, 17)
    with pytest.raises(ValueError, match="the graph is the mask"):
        layer(torch.randn(L, C), torch.zeros(L, L, dtype=torch.bool), graph=ga.complete_graph(L))


def test_encoder_layer_inside_torch_transformer_encoder_and_unbatched() -> None:
    ref_layer = nn.TransformerEncoderLayer(C, H, 17, dtype=torch.float64)
    ref = nn.TransformerEncoder(ref_layer, 2, enable_nested_tensor=False).eval()
    twin_layer = ga.GraphTransformerEncoderLayer.from_torch(ref_layer)
    twin = nn.TransformerEncoder(twin_layer, 2, enable_nested_tensor=False).eval()
    twin.load_state_dict(ref.state_dict())  # the same names as torch: self_attn.in_proj_weight...
    x = torch.randn(L, B, C, dtype=torch.float64)
    kpm = kpm_bool(B, L)
    torch.testing.assert_close(
        twin(x, src_key_padding_mask=kpm), ref(x, src_key_padding_mask=kpm), atol=1e-10, rtol=0
    )
    one = torch.randn(L, C, dtype=torch.float64)  # unbatched [L, C] without a graph
    torch.testing.assert_close(twin.layers[0](one), ref.layers[0](one), atol=1e-10, rtol=0)


@given(
    batch=st.integers(1, 3),
    tgt=st.integers(1, 6),
    src=st.integers(1, 6),
    heads=st.sampled_from([1, 2, 3]),
    kinds=st.sets(st.sampled_from(["kpm", "attn", "heads", "float"])),
    seed=st.integers(0, 2**31 - 1),
)
def test_mha_random_masks_equal_torch(
    batch: int, tgt: int, src: int, heads: int, kinds: set[str], seed: int
) -> None:
    # Random sizes and masks, fully masked queries included: outputs equal torch's SDPA path
    # (need_weights=False); weights equal torch's wherever torch's are not NaN.
    g = torch.Generator().manual_seed(seed)
    c = 2 * heads
    mha = nn.MultiheadAttention(c, heads, kdim=5, vdim=3, batch_first=True).double().eval()
    twin = ga.GraphMultiheadAttention.from_torch(mha)
    q = torch.randn(batch, tgt, c, generator=g, dtype=torch.float64)
    k = torch.randn(batch, src, 5, generator=g, dtype=torch.float64)
    v = torch.randn(batch, src, 3, generator=g, dtype=torch.float64)
    kw: dict[str, Tensor] = {}
    if "kpm" in kinds:
        kw["key_padding_mask"] = torch.rand(batch, src, generator=g) < 0.3
    if "attn" in kinds or "heads" in kinds:
        shape = (batch * heads, tgt, src) if "heads" in kinds else (tgt, src)
        kw["attn_mask"] = torch.rand(*shape, generator=g) < 0.3
    if "float" in kinds:  # the same masks as additive floats, plus a random bias
        kw = {name: to_float(m) for name, m in kw.items()}
        if "attn_mask" in kw:
            kw["attn_mask"] = kw["attn_mask"] + torch.randn(
                kw["attn_mask"].shape, generator=g, dtype=torch.float64
            )
    ref = mha(q, k, v, need_weights=False, **kw)[0]
    _, ref_w = mha(q, k, v, average_attn_weights=False, **kw)
    out, w = twin(q, k, v, average_attn_weights=False, **kw)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    assert w is not None and torch.isfinite(w).all()
    ok = ~torch.isnan(ref_w)
    torch.testing.assert_close(w[ok], ref_w[ok], atol=1e-10, rtol=0)
    assert (w[~ok] == 0).all()


@pytest.mark.parametrize("kind", [m for m in MASKS if m != "none"])
@pytest.mark.parametrize("need_weights", [False, True])
def test_every_mask_kind_runs_on_the_dense_backend(kind: str, need_weights: bool) -> None:
    # Boolean masks (and 0 / -inf float padding, as torch's encoder hands it over) become the
    # mask graph (plan "mask"); float and per-head masks, or any mask with weights, the full
    # graph with a per-edge bias (plan "scatter"). Either way: one SDPA call.
    masks = cast(make_masks(kind, L, S if "causal" not in kind else L), torch.float32)
    src = L if "causal" in kind else S
    causal = bool(masks.get("is_causal")) and "key_padding_mask" not in masks and not need_weights
    graph, bias = attention_graph(
        B, H, L, src, key_padding_mask=masks.get("key_padding_mask"),  # type: ignore[arg-type]
        attn_mask=None if causal else masks.get("attn_mask"),  # type: ignore[arg-type]
        causal=causal, need_weights=need_weights, dtype=torch.float32,
        device=torch.device("cpu"),
    )  # fmt: skip
    q, k = torch.zeros(B * L, H, C // H), torch.zeros(B * src, H, C // H)
    score = ScaledDot() if bias is None else ScaledDot() + AttnMaskBias()
    p = Problem(q, k, k, graph, score, bias)
    name, why = select_backend("auto", p)
    assert name == "dense", why
    if kind in ("kpm_bool", "kpm_float", "attn_bool", "attn_bool+kpm_bool") and not need_weights:
        assert bias is None and graph.structure == "masked"


def _empty_case_masks(b: int, lq: int, ls: int) -> dict[str, dict[str, Tensor]]:
    return {
        "none": {},
        "kpm": {"key_padding_mask": torch.zeros(b, ls, dtype=torch.bool)},
        "bool": {"attn_mask": torch.zeros(lq, ls, dtype=torch.bool)},
        "float": {"attn_mask": torch.zeros(lq, ls, dtype=torch.float64)},
        "per_head": {"attn_mask": torch.zeros(b * H, lq, ls, dtype=torch.bool)},
    }


@pytest.mark.parametrize(
    ("lq", "ls", "b"), [(0, S, B), (L, 0, B), (L, S, 0), (0, 0, B), (0, S, 0), (0, 0, 0)]
)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("mask", ["none", "kpm", "bool", "float", "per_head"])
@pytest.mark.parametrize("need_weights", [False, True])
def test_empty_inputs_equal_torch(
    lq: int, ls: int, b: int, batch_first: bool, mask: str, need_weights: bool
) -> None:
    """L = 0, S = 0 and B = 0 used to fail with "cannot reshape tensor of 0 elements"; torch
    accepts them. Outputs (out_proj's bias where no key exists), weights, their shapes, and the
    parameter gradients equal torch's."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(C, H, batch_first=batch_first).double()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()  # a query without keys outputs this bias
    twin = ga.GraphMultiheadAttention.from_torch(mha)
    q = torch.randn(lq, b, C, dtype=torch.float64)
    k = torch.randn(ls, b, C, dtype=torch.float64)
    if batch_first:
        q, k = q.transpose(0, 1), k.transpose(0, 1)
    kwargs = {**_empty_case_masks(b, lq, ls)[mask], "need_weights": need_weights}
    try:
        want = mha(q, k, k, **kwargs)
    except RuntimeError:  # torch's own reshape fails on some empty masks: they mask nothing,
        want = mha(q, k, k, need_weights=need_weights)  # so its unmasked call is the answer
    got = twin(q, k, k, **kwargs)
    assert got[0].shape == want[0].shape
    torch.testing.assert_close(got[0], want[0], atol=1e-12, rtol=0)
    if need_weights:
        assert got[1] is not None and want[1] is not None and got[1].shape == want[1].shape
        torch.testing.assert_close(got[1], want[1], atol=1e-12, rtol=0)
    else:
        assert got[1] is None and want[1] is None
    want[0].sum().backward()
    got[0].sum().backward()
    for p_twin, p_torch in zip(twin.parameters(), mha.parameters()):
        assert p_twin.grad is not None and p_torch.grad is not None
        torch.testing.assert_close(p_twin.grad, p_torch.grad, atol=1e-12, rtol=0)


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("mask", ["none", "kpm"])
def test_double_backward_equals_torch(need_weights: bool, mask: str) -> None:
    """A gradient penalty (the gradient of ‖∂out/∂x‖²) equals torch's own module's, for the
    input and every parameter. It used to fail on the default (SDPA) path with "derivative for
    aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented"."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(C, H).double()
    twin = ga.GraphMultiheadAttention.from_torch(mha)
    kpm = kpm_bool(B, L) if mask == "kpm" else None

    def penalty(model: nn.Module) -> list[Tensor]:
        x = torch.randn(L, B, C, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        x.requires_grad_()
        # torch itself has no double backward with need_weights=False (its fused SDPA): its
        # need_weights=True path (the math formula) is the reference, the weights unused
        wanted = need_weights or model is mha
        out, w = model(x, x, x, key_padding_mask=kpm, need_weights=wanted)
        total = out.sin().sum() + (w.pow(2).sum() if need_weights else 0)
        (gx,) = torch.autograd.grad(total, x, create_graph=True)
        return list(torch.autograd.grad(gx.pow(2).sum(), [x, *model.parameters()]))

    for a, b in zip(penalty(twin), penalty(mha)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
