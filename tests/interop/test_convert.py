"""``ga.convert(model)`` equals the original model (docs/interop.md)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import gatattn as ga

C, H = 12, 3


def count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_convert_transformer_encoder_with_padding() -> None:
    layer = nn.TransformerEncoderLayer(C, H, 19, batch_first=True, dtype=torch.float64)
    ref = nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False).eval()
    twin = ga.convert(ref)
    assert count(ref, nn.MultiheadAttention) == 3  # the original is untouched
    assert count(twin, nn.MultiheadAttention) == 0
    assert count(twin, ga.GraphMultiheadAttention) == 3
    x = torch.randn(2, 6, C, dtype=torch.float64)
    kpm = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    outs, grads = [], []
    for model in (ref, twin):
        xx = x.clone().requires_grad_()
        out = model(xx, src_key_padding_mask=kpm)
        out.pow(2).sum().backward()
        outs.append(out)
        grads.append(xx.grad)
    torch.testing.assert_close(outs[1], outs[0], atol=1e-10, rtol=0)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-10, rtol=0)


# torch's own reference path (not the converted copy) builds a NestedTensor and warns about it.
@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_convert_skips_the_nested_tensor_fast_path(within_torch_error) -> None:
    # eval + no_grad + padding: torch's encoder packs a NestedTensor (padded outputs become 0);
    # the converted copy turns that path off and computes every position, so compare real tokens.
    layer = nn.TransformerEncoderLayer(C, 2, 19, batch_first=True)
    ref = nn.TransformerEncoder(layer, num_layers=2).eval()
    twin = ga.convert(ref)
    assert ref.use_nested_tensor and not twin.use_nested_tensor
    x = torch.randn(2, 6, C)
    kpm = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    with torch.no_grad():
        a, b = ref(x, src_key_padding_mask=kpm), twin(x, src_key_padding_mask=kpm)
        gold = copy.deepcopy(twin).double()(x.double(), src_key_padding_mask=kpm)  # fp64 golden
    within_torch_error(b[~kpm], a[~kpm], gold[~kpm], what="real tokens")


def test_convert_transformer_with_causal_mask_and_cross_attention() -> None:
    ref = nn.Transformer(
        d_model=C,
        nhead=2,  # even: an odd head count makes nn.Transformer warn at construction
        num_encoder_layers=2,
        num_decoder_layers=2,
        dim_feedforward=17,
        batch_first=True,
        dtype=torch.float64,
    ).eval()
    twin = ga.convert(ref)
    assert count(twin, nn.MultiheadAttention) == 0
    assert count(twin, ga.GraphMultiheadAttention) == 2 + 2 * 2  # enc self, dec self + cross
    src = torch.randn(3, 7, C, dtype=torch.float64)  # [B, S, C]
    tgt = torch.randn(3, 5, C, dtype=torch.float64)  # [B, T, C]
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.float64)
    src_kpm = torch.tensor([[False] * 7, [False] * 5 + [True] * 2, [False] * 6 + [True]])
    outs, grads = [], []
    for model in (ref, twin):
        s, t = src.clone().requires_grad_(), tgt.clone().requires_grad_()
        out = model(
            s,
            t,
            tgt_mask=tgt_mask,
            tgt_is_causal=True,
            src_key_padding_mask=src_kpm,
            memory_key_padding_mask=src_kpm,
        )
        out.pow(2).sum().backward()
        outs.append(out)
        grads.append((s.grad, t.grad))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-10, rtol=0)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_convert_keeps_sharing_training_mode_and_requires_grad() -> None:
    mha = nn.MultiheadAttention(C, H)
    mha.out_proj.weight.requires_grad_(False)
    model = nn.ModuleDict({"a": mha, "b": mha, "head": nn.Linear(C, 2)}).train()
    twin = ga.convert(model)
    assert twin["a"] is twin["b"]
    assert isinstance(twin["a"], ga.GraphMultiheadAttention) and twin["a"].training
    assert not twin["a"].out_proj.weight.requires_grad
    assert twin["a"].in_proj_weight.requires_grad
    assert twin["head"] is not model["head"]  # a deep copy


def test_convert_a_bare_mha_and_round_trip() -> None:
    mha = nn.MultiheadAttention(C, H, batch_first=True).double().eval()
    twin = ga.convert(mha)
    assert isinstance(twin, ga.GraphMultiheadAttention)
    x = torch.randn(2, 5, C, dtype=torch.float64)
    torch.testing.assert_close(twin(x, x, x)[0], mha(x, x, x)[0], atol=1e-10, rtol=0)
    back = twin.to_torch()
    torch.testing.assert_close(back(x, x, x)[0], mha(x, x, x)[0], atol=1e-10, rtol=0)


def test_convert_rejects_non_modules() -> None:
    with pytest.raises(TypeError, match="convert needs an nn.Module, got str"):
        ga.convert("model")  # type: ignore[arg-type]
