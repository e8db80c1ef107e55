"""``add_bias_kv`` and ``add_zero_attn`` as graphs: extra key nodes joined to every query.

nn.MultiheadAttention appends, per sequence, a key/value pair (bias_k, bias_v) and/or a zero key
and value, and pads every mask with an allowed column for each. The twin adds those key nodes to
every sequence's key set, with an edge to each query of the sequence. Compared with torch in fp64
(1e-10): outputs, returned weights (S + extra columns), gradients of the inputs and of every
parameter (bias_k and bias_v included), for every mask combination. Sizes: B=2, L=5, S=7, H=3,
D=4 (C=12), kdim=9, vdim=11.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import gatattn as ga

B, L, S, H, C = 2, 5, 7, 3, 12
F64 = torch.float64
OPTIONS = [(True, False), (False, True), (True, True)]  # (add_bias_kv, add_zero_attn)


def masks(kind: str, tgt: int, src: int) -> dict[str, object]:
    """torch's mask arguments (True = not allowed); rows may end up with only the extra keys."""
    g = torch.Generator().manual_seed(2)
    banned = torch.rand(tgt, src, generator=g) < 0.5
    banned_h = torch.rand(B * H, tgt, src, generator=g) < 0.5
    kpm = torch.arange(src)[None, :] >= torch.tensor([src - 3, src])[:, None]  # [B, S]
    kpm_all = kpm.clone()
    kpm_all[0] = True  # a fully padded sequence: only the extra keys remain
    as_float = lambda m: torch.zeros(m.shape, dtype=F64).masked_fill(m, float("-inf"))  # noqa: E731
    bias = torch.randn(tgt, src, generator=g, dtype=F64)
    causal = torch.ones(tgt, src, dtype=torch.bool).triu(1)
    return {
        "none": {},
        "kpm": {"key_padding_mask": kpm},
        "kpm_all_padded": {"key_padding_mask": kpm_all},
        "kpm_float": {"key_padding_mask": as_float(kpm)},
        "attn2d_bool": {"attn_mask": banned},
        "attn2d_float": {"attn_mask": bias.masked_fill(banned, float("-inf"))},
        "attn3d_bool": {"attn_mask": banned_h},
        "attn3d_float": {"attn_mask": torch.randn(B * H, tgt, src, generator=g, dtype=F64)},
        "attn2d_bool+kpm": {"attn_mask": banned, "key_padding_mask": kpm},
        "attn3d_float+kpm_float": {
            "attn_mask": as_float(banned_h), "key_padding_mask": as_float(kpm),
        },
        "causal": {"attn_mask": causal, "is_causal": True},
        "causal+kpm": {"attn_mask": causal, "is_causal": True, "key_padding_mask": kpm},
    }[kind]  # fmt: skip


KINDS = [
    "none", "kpm", "kpm_all_padded", "kpm_float", "attn2d_bool", "attn2d_float", "attn3d_bool",
    "attn3d_float", "attn2d_bool+kpm", "attn3d_float+kpm_float", "causal", "causal+kpm",
]  # fmt: skip


def compare(
    mha: nn.MultiheadAttention,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    need_weights: bool,
    average: bool = True,
    **kw: object,
) -> None:
    twin = ga.GraphMultiheadAttention.from_torch(mha)
    res = []
    for model in (mha, twin):
        model.zero_grad()
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out, w = model(*leaves, need_weights=need_weights, average_attn_weights=average, **kw)
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=F64).view(out.shape)).sum()
        if w is not None:
            loss = loss + (w * torch.linspace(2, -1, w.numel(), dtype=F64).view(w.shape)).sum()
        loss.backward()
        grads = [t.grad for t in leaves] + [p.grad for p in model.parameters()]
        res.append((out, w, grads))
    (o1, w1, g1), (o2, w2, g2) = res
    torch.testing.assert_close(o2, o1, atol=1e-10, rtol=0)
    assert (w1 is None) == (w2 is None)
    if w1 is not None and w2 is not None:
        assert w2.shape == w1.shape
        torch.testing.assert_close(w2, w1, atol=1e-10, rtol=0)
    for a, b in zip(g2, g1, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("bias_kv", "zero_attn"), OPTIONS)
def test_self_attention_equals_torch(kind: str, bias_kv: bool, zero_attn: bool) -> None:
    mha = nn.MultiheadAttention(
        C, H, add_bias_kv=bias_kv, add_zero_attn=zero_attn, batch_first=True, dtype=F64
    ).eval()
    x = torch.randn(B, L, C, dtype=F64)
    kw = masks(kind, L, L)
    compare(mha, x, x, x, need_weights=True, **kw)
    compare(mha, x, x, x, need_weights=False, **kw)  # causal: torch's causal kernel path


@pytest.mark.parametrize("kind", [k for k in KINDS if "causal" not in k])
def test_cross_attention_kdim_vdim_equals_torch(kind: str) -> None:
    mha = nn.MultiheadAttention(
        C, H, add_bias_kv=True, add_zero_attn=True, kdim=9, vdim=11, dtype=F64
    ).eval()
    q = torch.randn(L, B, C, dtype=F64)
    k, v = torch.randn(S, B, 9, dtype=F64), torch.randn(S, B, 11, dtype=F64)
    compare(mha, q, k, v, need_weights=True, average=False, **masks(kind, L, S))


def test_unbatched_with_extra_keys_equals_torch() -> None:
    mha = nn.MultiheadAttention(C, H, add_bias_kv=True, add_zero_attn=True, dtype=F64).eval()
    x = torch.randn(L, C, dtype=F64)
    compare(mha, x, x, x, need_weights=True)
    compare(mha, x, x, x, need_weights=True, key_padding_mask=torch.rand(L) < 0.5)
    compare(mha, x, x, x, need_weights=True, attn_mask=torch.rand(H, L, L) < 0.5)


def test_extra_keys_are_nodes_of_the_graph() -> None:
    # The returned weights have S + 2 columns; a fully padded sequence attends only to the
    # extra keys: bias_k (weight by its score) and the zero key (score 0).
    mha = nn.MultiheadAttention(C, H, add_bias_kv=True, add_zero_attn=True, dtype=F64).eval()
    twin = ga.GraphMultiheadAttention.from_torch(mha)
    x = torch.randn(L, B, C, dtype=F64)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[1] = True
    _, w = twin(x, x, x, key_padding_mask=pad, average_attn_weights=False)
    assert w is not None and w.shape == (B, H, L, L + 2)
    assert (w[1, :, :, :L] == 0).all()
    torch.testing.assert_close(w[1].sum(-1), torch.ones(H, L, dtype=F64), atol=1e-12, rtol=0)


def test_training_dropout_with_extra_keys_is_reproducible() -> None:
    twin = ga.GraphMultiheadAttention(C, H, dropout=0.5, add_bias_kv=True, add_zero_attn=True)
    x = torch.randn(L, B, C)
    torch.manual_seed(5)
    a = twin(x, x, x, need_weights=False)[0]
    torch.manual_seed(5)
    b = twin(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(a, b)
    assert (a - twin.eval()(x, x, x)[0]).abs().max() > 1e-3
