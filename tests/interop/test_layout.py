"""The drop-ins keep torch's parameter layout: names, shapes, order, attributes (docs/interop.md).

state_dicts load both ways with strict=True, parameters() come in torch's order (so optimiser
states move over), the same seed gives the same initial weights, and ``ga.convert`` keeps every
state_dict key. Sizes: C=12, H=3 (D=4), kdim=9, vdim=11, L=5, B=2.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

import gatattn as ga

C, H, L, B = 12, 3, 5, 2
MHA_OPTIONS: list[dict[str, Any]] = [
    {},
    {"bias": False},
    {"kdim": 9, "vdim": 11},
    {"kdim": 9, "vdim": 11, "bias": False},
    {"add_bias_kv": True},
    {"add_bias_kv": True, "add_zero_attn": True, "kdim": 9, "vdim": 9},
    {"add_zero_attn": True, "batch_first": True, "dropout": 0.25},
]
ATTRIBUTES = [
    "embed_dim", "kdim", "vdim", "_qkv_same_embed_dim", "num_heads", "dropout", "batch_first",
    "head_dim", "add_zero_attn",
]  # fmt: skip


def layout(m: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, tuple(p.shape)) for n, p in m.named_parameters()]


def randomise(m: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


@pytest.mark.parametrize("options", MHA_OPTIONS, ids=str)
def test_mha_layout_and_strict_round_trips(options: dict[str, Any]) -> None:
    ref = nn.MultiheadAttention(C, H, **options)
    twin = ga.GraphMultiheadAttention(C, H, **options)
    assert layout(twin) == layout(ref)  # names, shapes, order
    assert list(twin.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in twin.named_modules()] == [n for n, _ in ref.named_modules()]
    assert type(twin.out_proj) is NonDynamicallyQuantizableLinear
    for name in ATTRIBUTES:
        assert getattr(twin, name) == getattr(ref, name), name
    for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                 "in_proj_bias", "bias_k", "bias_v"):  # fmt: skip
        assert (getattr(twin, name) is None) == (getattr(ref, name) is None), name
    # torch -> gatattn and gatattn -> torch, strict
    randomise(ref, 1)
    assert not twin.load_state_dict(ref.state_dict(), strict=True).missing_keys
    for a, b in zip(twin.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)
    randomise(twin, 2)
    back = nn.MultiheadAttention(C, H, **options)
    back.load_state_dict(twin.state_dict(), strict=True)
    for a, b in zip(twin.parameters(), back.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("options", MHA_OPTIONS[:2] + MHA_OPTIONS[4:6], ids=str)
def test_mha_same_seed_same_weights(options: dict[str, Any]) -> None:
    torch.manual_seed(7)
    ref = nn.MultiheadAttention(C, H, **options)
    torch.manual_seed(7)
    twin = ga.GraphMultiheadAttention(C, H, **options)
    for a, b in zip(twin.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)


def test_in_proj_weight_can_be_assigned_and_bias_exists() -> None:
    twin = ga.GraphMultiheadAttention(C, H)
    assert twin.in_proj_bias is not None and twin.in_proj_bias.shape == (3 * C,)
    twin.in_proj_weight = nn.Parameter(torch.ones(3 * C, C))
    twin.out_proj.weight = nn.Parameter(torch.ones(C, C))
    assert next(n for n, _ in twin.named_parameters()) == "in_proj_weight"
    assert twin.state_dict()["in_proj_weight"].eq(1).all()
    no_bias = ga.GraphMultiheadAttention(C, H, bias=False)
    assert no_bias.in_proj_bias is None and no_bias.out_proj.bias is None


def encoder_pair(**kw: Any) -> tuple[nn.TransformerEncoderLayer, ga.GraphTransformerEncoderLayer]:
    ref = nn.TransformerEncoderLayer(C, H, 17, **kw)
    return ref, ga.GraphTransformerEncoderLayer(C, H, 17, **kw)


@pytest.mark.parametrize(
    "options",
    [{}, {"bias": False, "norm_first": True}, {"activation": "gelu", "batch_first": True},
     {"activation": nn.GELU()}, {"activation": F.silu}],
    ids=["default", "no-bias-pre-norm", "gelu", "GELU-module", "silu"],
)  # fmt: skip
def test_encoder_layer_layout_and_strict_round_trips(options: dict[str, Any]) -> None:
    ref, twin = encoder_pair(**options)
    assert layout(twin) == layout(ref)
    assert list(twin.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in twin.named_children()] == [n for n, _ in ref.named_children()]
    for name in ("norm_first", "activation_relu_or_gelu"):
        assert getattr(twin, name) == getattr(ref, name), name
    assert twin.batch_first == ref.self_attn.batch_first
    randomise(ref, 3)
    twin.load_state_dict(ref.state_dict(), strict=True)
    randomise(twin, 4)
    back = nn.TransformerEncoderLayer(C, H, 17, **options)
    back.load_state_dict(twin.state_dict(), strict=True)
    for a, b in zip(twin.parameters(), back.parameters(), strict=True):
        assert torch.equal(a, b)


def test_encoder_layer_same_seed_same_weights() -> None:
    torch.manual_seed(11)
    ref = nn.TransformerEncoderLayer(C, H, 17)
    torch.manual_seed(11)
    twin = ga.GraphTransformerEncoderLayer(C, H, 17)
    for a, b in zip(twin.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)


def test_optimizer_state_moves_between_torch_and_gatattn() -> None:
    # Train the torch encoder two Adam steps, move model + optimiser state to gatattn, take a
    # third step on each: the parameters stay equal (fp64).
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(C, H, 17, dropout=0.0, dtype=torch.float64)
    x = torch.randn(L, B, C, dtype=torch.float64)
    kpm = torch.tensor([[False] * L, [False] * 3 + [True] * 2])

    def step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad()
        model(x, src_key_padding_mask=kpm).pow(2).mean().backward()
        opt.step()

    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-2)
    step(ref, opt_ref)
    step(ref, opt_ref)
    twin = ga.GraphTransformerEncoderLayer(C, H, 17, dropout=0.0, dtype=torch.float64)
    twin.load_state_dict(ref.state_dict(), strict=True)
    opt_twin = torch.optim.Adam(twin.parameters(), lr=1e-2)
    opt_twin.load_state_dict(copy.deepcopy(opt_ref.state_dict()))  # as if saved to disk
    step(ref, opt_ref)
    step(twin, opt_twin)
    for a, b in zip(twin.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    # and back: gatattn's optimiser state into a fresh torch optimiser
    back = nn.TransformerEncoderLayer(C, H, 17, dropout=0.0, dtype=torch.float64)
    back.load_state_dict(twin.state_dict(), strict=True)
    opt_back = torch.optim.Adam(back.parameters(), lr=1e-2)
    opt_back.load_state_dict(copy.deepcopy(opt_twin.state_dict()))
    step(back, opt_back)
    step(twin, opt_twin)
    for a, b in zip(twin.parameters(), back.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_convert_keeps_every_state_dict_key() -> None:
    model = nn.Transformer(C, 2, 2, 2, 17, batch_first=True, dtype=torch.float64)
    twin = ga.convert(model)
    assert list(twin.state_dict()) == list(model.state_dict())
    assert layout(twin) == layout(model)
    for a, b in zip(twin.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    model.load_state_dict(randomise(twin, 5).state_dict(), strict=True)


def test_gatattn_010_drop_in_state_dicts_still_load() -> None:
    ref = randomise(ga.GraphMultiheadAttention(C, H), 6)
    sd = ref.state_dict()
    w = sd.pop("in_proj_weight").chunk(3)
    b = sd.pop("in_proj_bias").chunk(3)
    old = {f"attn.{n}_proj.weight": t for n, t in zip("qkv", w)}
    old.update({f"attn.{n}_proj.bias": t for n, t in zip("qkv", b)})
    old.update({f"attn.out_proj.{k}": sd[f"out_proj.{k}"] for k in ("weight", "bias")})
    twin = ga.GraphMultiheadAttention(C, H)
    twin.load_state_dict(old, strict=True)
    for a, b_ in zip(twin.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b_)


def test_hooks_and_requires_grad_survive_from_torch() -> None:
    mha = nn.MultiheadAttention(C, H, add_bias_kv=True)
    mha.bias_k.requires_grad_(False)
    twin = ga.GraphMultiheadAttention.from_torch(mha.eval())
    assert not twin.training and twin.bias_k is not None and not twin.bias_k.requires_grad
    assert twin.to_torch().bias_k is not None and not twin.to_torch().training
