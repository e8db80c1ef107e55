"""Input checks of ``GraphMultiheadAttention``, in nn.MultiheadAttention's order and classes.

Each check raises where torch raises, an exception that torch's callers still catch
(interop/errors.py), with a message that names the argument and its value and keeps torch's
wording. Legend: B batch, L query length, S key length, H heads, C = embed_dim.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .errors import (
    DeviceRuntimeError,
    DtypeAssertionError,
    ShapeAssertionError,
    ShapeRuntimeError,
)

__all__ = ["check_inputs", "check_mask_dtype", "check_mask_shapes"]


def _dims(t: Tensor) -> str:
    return f"{t.dim()}-D {list(t.shape)}"


def check_mask_dtype(mask: object, name: str, other: object = None) -> Tensor | None:
    """``mask`` is None or a bool / floating point tensor; warns as torch does when ``other``
    (the other mask) has another dtype.

    Raises:
        TypeError: not a tensor.  DtypeAssertionError: another dtype (torch: AssertionError).
    """
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise DtypeAssertionError(
            f"{name} has dtype {mask.dtype}: only bool and floating types of {name} are "
            "supported (bool: True = not allowed; float: added to the scores)"
        )
    if isinstance(other, Tensor) and other.dtype != mask.dtype:
        warnings.warn(
            f"Support for mismatched {name} and attn_mask is deprecated. Use same type for "
            "both instead.",
            UserWarning,
            stacklevel=4,
        )
    return mask


def check_inputs(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Tensor | None,
    attn_mask: Tensor | None,
    *,
    num_heads: int,
    dims: tuple[int, int, int],
) -> bool:
    """Ranks and widths of nn.MultiheadAttention's inputs; returns True for batched input.

    Args:
        query: [L, B, C] / [B, L, C] (batched) or [L, C].  key: [S, B, kdim] or [S, kdim].
        value: [S, B, vdim] or [S, vdim].
        key_padding_mask: [B, S] (batched) or [S].  attn_mask: [L, S] or [B·H, L, S]
            ([H, L, S] unbatched).
        num_heads: H.  dims: (embed_dim, kdim, vdim).

    Raises:
        TypeError: an input that is not a tensor.
        ShapeAssertionError: a rank or width torch asserts on.
        ShapeRuntimeError: key or value width differs from kdim / vdim (torch: a RuntimeError
            of the projection).
        DeviceRuntimeError: key, value or a mask on another device than query.
    """
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if t.is_nested:
            raise ShapeAssertionError(
                f"{name} is a NestedTensor: GraphMultiheadAttention takes dense [L, B, C] "
                "input with a key_padding_mask (MultiheadAttention does not support "
                "NestedTensor outside of its fast path); for ragged batches, run "
                "GraphAttention on the concatenated tokens with complete_graph(lengths=...)"
            )
    rank = query.dim()
    if rank == 3:
        kind, kpm_rank = "batched (3-D)", 2
    elif rank == 2:
        kind, kpm_rank = "unbatched (2-D)", 1
    else:
        raise ShapeAssertionError(
            f"query has shape {list(query.shape)}: query should be unbatched 2D or batched 3D "
            f"tensor but received {rank}-D query tensor"
        )
    if key.dim() != rank or value.dim() != rank:
        raise ShapeAssertionError(
            f"key is {_dims(key)} and value is {_dims(value)}: For {kind} `query`, expected "
            f"`key` and `value` to be {rank}-D but found {key.dim()}-D and {value.dim()}-D "
            "tensors respectively"
        )
    if key_padding_mask is not None and key_padding_mask.dim() != kpm_rank:
        raise ShapeAssertionError(
            f"key_padding_mask is {_dims(key_padding_mask)}: For {kind} `query`, expected "
            f"`key_padding_mask` to be `None` or {kpm_rank}-D but found "
            f"{key_padding_mask.dim()}-D tensor instead"
        )
    if attn_mask is not None:
        if attn_mask.dim() not in (2, 3):
            raise ShapeAssertionError(
                f"attn_mask is {_dims(attn_mask)}: For {kind} `query`, expected `attn_mask` "
                f"to be `None`, 2-D or 3-D but found {attn_mask.dim()}-D tensor instead"
            )
        if rank == 2 and attn_mask.dim() == 3:
            expected = (num_heads, query.size(0), key.size(0))
            if tuple(attn_mask.shape) != expected:
                raise ShapeAssertionError(
                    f"attn_mask of unbatched input must be [H, L, S]: Expected `attn_mask` "
                    f"shape to be {expected} but got {tuple(attn_mask.shape)}"
                )
    embed_dim, kdim, vdim = dims
    if query.size(-1) != embed_dim:
        raise ShapeAssertionError(
            f"query has {query.size(-1)} channels but embed_dim={embed_dim}: was expecting "
            f"embedding dimension of {embed_dim}, but got {query.size(-1)}"
        )
    if key.shape[:-1] != value.shape[:-1]:
        raise ShapeAssertionError(
            f"key {list(key.shape)} and value {list(value.shape)} must share sequence and batch "
            f"dims: key's sequence and batch dims {tuple(key.shape[:-1])} do not match value's "
            f"{tuple(value.shape[:-1])}"
        )
    for name, t, width, arg in (("key", key, kdim, "kdim"), ("value", value, vdim, "vdim")):
        if t.size(-1) != width:
            raise ShapeRuntimeError(f"{name} has {t.size(-1)} channels but {arg}={width}")
    others = (("key", key), ("value", value), ("key_padding_mask", key_padding_mask),
              ("attn_mask", attn_mask))  # fmt: skip
    for name, other in others:
        if other is not None and other.device != query.device:
            raise DeviceRuntimeError(
                f"{name} is on {other.device} but query is on {query.device}: Expected all "
                "tensors to be on the same device"
            )
    return rank == 3


def check_mask_shapes(
    key_padding_mask: Tensor | None,
    attn_mask: Tensor | None,
    *,
    batch: int,
    num_heads: int,
    tgt_len: int,
    src_len: int,
) -> None:
    """Mask shapes against the (batched) input, as torch checks them.

    Raises:
        ShapeRuntimeError: ``attn_mask`` is not [L, S] or [B·H, L, S] (torch: RuntimeError).
        ShapeAssertionError: ``key_padding_mask`` is not [B, S] (torch: AssertionError).
    """
    if attn_mask is not None:
        want = (tgt_len, src_len) if attn_mask.dim() == 2 else (batch * num_heads, tgt_len, src_len)
        if tuple(attn_mask.shape) != want:
            raise ShapeRuntimeError(
                f"attn_mask must have shape (L, S) = {(tgt_len, src_len)} or (B*H, L, S) = "
                f"{(batch * num_heads, tgt_len, src_len)}, got {tuple(attn_mask.shape)}: The "
                f"shape of the {attn_mask.dim()}D attn_mask is {attn_mask.shape}, but should be "
                f"{want}."
            )
    if key_padding_mask is not None:
        for axis, want_n in ((0, batch), (1, src_len)):
            if key_padding_mask.size(axis) != want_n:
                raise ShapeAssertionError(
                    f"key_padding_mask must have shape (B, S) = {(batch, src_len)}, got "
                    f"{tuple(key_padding_mask.shape)}: Expected key_padded_mask.shape[{axis}] "
                    f"to be {want_n}, but got {key_padding_mask.size(axis)}"
                )
