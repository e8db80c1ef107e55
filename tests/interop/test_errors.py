"""Bad input to the drop-ins raises what torch raises, and a ValueError / TypeError too.

Every case runs nn.MultiheadAttention first (the class and message torch gives), then the twin:
its exception is an instance of torch's class *and* of gatattn's ValueError / TypeError, its
message matches torch's wording and also names the argument (gatattn's part).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import gatattn as ga
from gatattn.interop import (
    DeviceRuntimeError,
    DtypeAssertionError,
    ShapeAssertionError,
    ShapeRuntimeError,
)

B, L, S, H, C = 2, 5, 7, 3, 12
Call = Callable[[nn.Module], object]


def batched(
    q: Tensor | None = None, k: Tensor | None = None, v: Tensor | None = None, **kw: object
) -> Call:
    x = torch.randn(L, B, C)
    y = torch.randn(S, B, C)
    q, k, v = (x if q is None else q), (y if k is None else k), (y if v is None else v)
    return lambda m: m(q, k, v, **kw)


def unbatched(**kw: object) -> Call:
    x = torch.randn(L, C)
    return lambda m: m(x, x, x, **kw)


# (call, gatattn class, torch class, torch's message, gatattn's part of the message)
CASES: dict[str, tuple[Call, type[Exception], type[Exception], str, str]] = {
    "query 4-D": (
        batched(q=torch.randn(1, L, B, C)),
        ShapeAssertionError,
        AssertionError,
        "query should be unbatched 2D or batched 3D tensor but received 4-D",
        r"query has shape",
    ),
    "key 2-D": (
        batched(k=torch.randn(S, C)),
        ShapeAssertionError,
        AssertionError,
        "expected `key` and `value` to be 3-D but found 2-D and 3-D",
        r"key is 2-D \[7, 12\]",
    ),
    "value 2-D, unbatched key 3-D": (
        unbatched(),
        ShapeAssertionError,
        AssertionError,
        "",
        "",
    ),
    "kpm 1-D": (
        batched(key_padding_mask=torch.zeros(S, dtype=torch.bool)),
        ShapeAssertionError,
        AssertionError,
        "expected `key_padding_mask` to be `None` or 2-D but found 1-D",
        r"key_padding_mask is 1-D \[7\]",
    ),
    "attn_mask 1-D": (
        batched(attn_mask=torch.zeros(S, dtype=torch.bool)),
        ShapeAssertionError,
        AssertionError,
        "expected `attn_mask` to be `None`, 2-D or 3-D but found 1-D",
        r"attn_mask is 1-D",
    ),
    "unbatched kpm 2-D": (
        unbatched(key_padding_mask=torch.zeros(1, L, dtype=torch.bool)),
        ShapeAssertionError,
        AssertionError,
        "expected `key_padding_mask` to be `None` or 1-D but found 2-D",
        r"key_padding_mask is 2-D",
    ),
    "unbatched attn_mask 3-D": (
        unbatched(attn_mask=torch.zeros(H + 1, L, L, dtype=torch.bool)),
        ShapeAssertionError,
        AssertionError,
        r"Expected `attn_mask` shape to be \(3, 5, 5\)",
        r"must be \[H, L, S\]",
    ),
    "embed_dim": (
        batched(q=torch.randn(L, B, C + 1)),
        ShapeAssertionError,
        AssertionError,
        "was expecting embedding dimension of 12, but got 13",
        "query has 13 channels",
    ),
    "key vs value": (
        batched(v=torch.randn(S + 1, B, C)),
        ShapeAssertionError,
        AssertionError,
        r"key shape .* does not match value shape|do not match value's",
        "must share sequence",
    ),
    "attn_mask 2-D shape": (
        batched(attn_mask=torch.zeros(L, S + 1, dtype=torch.bool)),
        ShapeRuntimeError,
        RuntimeError,
        r"The shape of the 2D attn_mask is torch.Size\(\[5, 8\]\), but should be "
        r"\(5, 7\)",
        r"attn_mask must have shape \(L, S\)",
    ),
    "attn_mask 3-D shape": (
        batched(attn_mask=torch.zeros(H, L, S, dtype=torch.bool)),
        ShapeRuntimeError,
        RuntimeError,
        r"The shape of the 3D attn_mask is .*, but should be \(6, 5, 7\)",
        r"\(B\*H, L, S\) = \(6, 5, 7\)",
    ),
    "kpm shape": (
        batched(key_padding_mask=torch.zeros(B, S + 1, dtype=torch.bool)),
        ShapeAssertionError,
        AssertionError,
        r"Expected key_padded_mask.shape\[1\] to be 7, but got 8",
        r"key_padding_mask must have shape \(B, S\) = \(2, 7\)",
    ),
    "kpm batch": (
        batched(key_padding_mask=torch.zeros(B + 1, S, dtype=torch.bool)),
        ShapeAssertionError,
        AssertionError,
        r"Expected key_padded_mask.shape\[0\] to be 2, but got 3",
        r"got \(3, 7\)",
    ),
    "kpm dtype": (
        batched(key_padding_mask=torch.zeros(B, S, dtype=torch.uint8)),
        DtypeAssertionError,
        AssertionError,
        "only bool and floating types of key_padding_mask are supported",
        "key_padding_mask has dtype torch.uint8",
    ),
    "attn_mask dtype": (
        batched(attn_mask=torch.zeros(L, S, dtype=torch.int32)),
        DtypeAssertionError,
        AssertionError,
        "only bool and floating types of attn_mask are supported",
        "attn_mask has dtype torch.int32",
    ),
    "is_causal without mask": (
        batched(is_causal=True),
        ShapeRuntimeError,
        RuntimeError,
        "Need attn_mask if specifying the is_causal hint",
        "is_causal=True needs attn_mask",
    ),
}
CASES["value 2-D, unbatched key 3-D"] = (
    lambda m: m(torch.randn(L, C), torch.randn(L, B, C), torch.randn(L, C)),
    ShapeAssertionError, AssertionError,
    "expected `key` and `value` to be 2-D but found 3-D and 2-D", r"key is 3-D",
)  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_raises_torchs_class_and_a_value_or_type_error(case: str) -> None:
    call, ours, theirs, torch_msg, our_msg = CASES[case]
    mha = nn.MultiheadAttention(C, H)
    with pytest.raises(theirs, match=torch_msg):
        call(mha)
    twin = ga.GraphMultiheadAttention.from_torch(mha)
    with pytest.raises(ours, match=torch_msg) as info:
        call(twin)
    assert isinstance(info.value, theirs)
    assert isinstance(info.value, (ValueError, TypeError))
    assert info.match(our_msg)  # and gatattn's own words


def test_error_classes() -> None:
    assert issubclass(ShapeAssertionError, ValueError) and issubclass(
        ShapeAssertionError, AssertionError
    )
    assert issubclass(ShapeRuntimeError, ValueError) and issubclass(ShapeRuntimeError, RuntimeError)
    assert issubclass(DtypeAssertionError, TypeError) and issubclass(
        DtypeAssertionError, AssertionError
    )


def test_constructor_errors_like_torch() -> None:
    for args in ((0, 2), (4, 0), (-4, 2)):
        with pytest.raises(ValueError, match="must be greater than 0"):
            nn.MultiheadAttention(*args)
        with pytest.raises(ValueError, match="must be a positive int"):
            ga.GraphMultiheadAttention(*args)
    with pytest.raises(AssertionError, match="embed_dim must be divisible by num_heads"):
        nn.MultiheadAttention(10, 3)
    with pytest.raises(ShapeAssertionError, match="embed_dim must be divisible by num_heads"):
        ga.GraphMultiheadAttention(10, 3)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\], got 1.5"):
        ga.GraphMultiheadAttention(C, H, dropout=1.5)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        ga.GraphMultiheadAttention(C, H, backend="fast")


def test_other_bad_inputs() -> None:
    twin = ga.GraphMultiheadAttention(C, H, kdim=9, vdim=11)
    x, k, v = torch.randn(L, B, C), torch.randn(S, B, 9), torch.randn(S, B, 11)
    with pytest.raises(TypeError, match="key must be a Tensor, got list"):
        twin(x, [[0.0]], v)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="attn_mask must be a Tensor or None, got list"):
        twin(x, k, v, attn_mask=[[True]])  # type: ignore[arg-type]
    with pytest.raises(ShapeRuntimeError, match="key has 10 channels but kdim=9"):
        twin(x, torch.randn(S, B, 10), v)
    with pytest.raises(ShapeRuntimeError, match="query has batch size 2 but key and value have 3"):
        twin(x, torch.randn(S, B + 1, 9), torch.randn(S, B + 1, 11))
    nested = torch.nested.nested_tensor([torch.randn(4, C), torch.randn(6, C)], layout=torch.jagged)
    with pytest.raises(ShapeAssertionError, match="NestedTensor outside of its fast path"):
        ga.GraphMultiheadAttention(C, H, batch_first=True)(nested, nested, nested)


def test_inputs_masks_and_graphs_on_another_device_are_named() -> None:
    """A mask or graph on another device (here meta) used to fail deep inside with
    "Tensor.item() cannot be called on meta tensors"."""
    twin = ga.GraphMultiheadAttention(C, H)
    x = torch.randn(L, B, C)
    meta = {
        "key_padding_mask": torch.zeros(B, L, dtype=torch.bool, device="meta"),
        "attn_mask": torch.zeros(L, L, dtype=torch.bool, device="meta"),
    }
    for name, mask in meta.items():
        with pytest.raises(DeviceRuntimeError, match=f"{name} is on meta but query is on cpu"):
            twin(x, x, x, **{name: mask})
    with pytest.raises(RuntimeError, match="key is on meta but query is on cpu"):
        twin(x, x.to("meta"), x)
    graph = ga.complete_graph(L, device="meta")
    match = "GraphMultiheadAttention: the graph is on meta but the features are on cpu"
    with pytest.raises(ValueError, match=match):
        twin.graph_forward(torch.randn(L, C), graph)
    layer = ga.GraphTransformerEncoderLayer(C, H, 17)
    with pytest.raises(ValueError, match=match):
        layer(torch.randn(L, C), graph=graph)


def test_mismatched_mask_dtypes_warn_like_torch() -> None:
    mha = nn.MultiheadAttention(C, H).double()
    twin = ga.GraphMultiheadAttention.from_torch(mha)
    x = torch.randn(L, B, C, dtype=torch.float64)
    kpm = torch.zeros(B, L, dtype=torch.bool)
    am = torch.zeros(L, L, dtype=torch.float64)
    for model in (mha, twin):
        with pytest.warns(
            UserWarning, match="Support for mismatched key_padding_mask and attn_mask"
        ):
            model(x, x, x, key_padding_mask=kpm, attn_mask=am)


def test_torchscript_is_refused_with_a_clear_error() -> None:
    layer = ga.GraphTransformerEncoderLayer(C, H, 17)
    for module, name in (
        (ga.GraphMultiheadAttention(C, H), "GraphMultiheadAttention"),
        (layer, "GraphTransformerEncoderLayer"),
        (
            nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
            "GraphTransformerEncoderLayer",
        ),
        (ga.convert(nn.TransformerEncoderLayer(C, H, 17)), "GraphMultiheadAttention"),
    ):
        with pytest.raises(
            TypeError, match=f"{name} cannot be compiled by TorchScript.*torch.compile"
        ):
            torch.jit.script(module)
