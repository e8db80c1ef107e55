"""nn.MultiheadAttention masks -> a token graph plus an additive per-edge bias (docs/interop.md).

    M[b, h, i, j] = attn_mask[(b·H + h) | ·, i, j] + key_padding_mask[b, j]      (0 / -inf / float)

Boolean masks follow nn.MultiheadAttention: ``True`` means *not allowed* (the opposite of SDPA and
``gatattn.from_mask``), so a True entry becomes -inf. Three graphs, from cheapest to most general:

* no mask: the complete (or, for L != S, complete bipartite) graph of every sequence, tagged, so
  the dense backend runs it with one SDPA call; ``is_causal`` alone: the causal graph.
* boolean masks shared by the heads: N(i) = { j : M[b, i, j] = 0 }, the batched ``from_mask``
  graph of the allowed [B, L, S] mask ([B, 1, S] for padding alone); the dense backend hands
  that mask to SDPA and the edges are never made.
* float or per-head masks, or any mask when the weights are returned: every (i, j) of a
  sequence is an edge and M rides on it as a bias (``gatattn.scores.AttnMaskBias``),
  α_ij = <q_i, k_j>/√D + M[b, h, i, j]; an entry of -inf gives weight 0. The graph has a fixed
  size (B·L·S edges, no data-dependent shapes, so torch.compile traces it). M is handed over
  as a grid (``GridInput``): the dense backend gives it to SDPA as its mask, read straight from
  the masks ([1 | B, 1 | H, L, S], boolean when every mask is), and neither the edges nor M per
  edge [B·L·S, 1 | H] are made unless a per-edge path (returned weights, the edge backend)
  reads them.

The extra keys of ``add_bias_kv`` / ``add_zero_attn`` are nodes of each sequence's key set, joined
to every query of that sequence: the caller pads the masks with allowed (0 / False) columns.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..graph import TokenGraph
from ..patterns import causal_graph
from ..patterns.complete import masked_graph
from ..scores import AttnMaskBias
from ..scores.grid import GridInput

__all__ = ["additive_mask", "attention_graph", "mask_grid", "pad_keys"]


def as_additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """bool (True = masked out) -> 0 / -inf in ``dtype``; float -> cast to ``dtype``."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf")
        )
    return mask.to(dtype)


def pad_keys(mask: Tensor | None, extra: int) -> Tensor | None:
    """Append ``extra`` allowed key columns (False / 0.0) to a mask [..., S] -> [..., S + extra]."""
    if mask is None or extra == 0:
        return mask
    return torch.nn.functional.pad(mask, (0, extra))


def additive_mask(
    batch: int,
    num_heads: int,
    tgt_len: int,
    src_len: int,
    *,
    key_padding_mask: Tensor | None,
    attn_mask: Tensor | None,
    dtype: torch.dtype,
) -> Tensor:
    """nn.MultiheadAttention's merged additive mask M [B, 1 | H, L, S] (shapes checked before).

    Args:
        key_padding_mask: [B, S] or None; True (or -inf) marks padding keys.
        attn_mask: [L, S] shared, [B·H, L, S] per sequence and head, or None.
    """
    if attn_mask is None and key_padding_mask is None:
        return torch.zeros((), dtype=dtype).expand(batch, 1, tgt_len, src_len)
    # derived from the grid, so the two never disagree: a boolean grid (True = may attend)
    # becomes 0 / -inf, a float grid is already M
    grid = mask_grid(
        batch, num_heads, tgt_len, src_len,
        key_padding_mask=key_padding_mask, attn_mask=attn_mask, dtype=dtype,
    )  # fmt: skip
    if grid.dtype == torch.bool:
        grid = torch.zeros(grid.shape, dtype=dtype, device=grid.device).masked_fill_(
            ~grid, float("-inf")
        )
    return grid.expand(batch, -1, tgt_len, src_len)  # [B, 1 | H, L, S]


def mask_grid(
    batch: int,
    num_heads: int,
    tgt_len: int,
    src_len: int,
    *,
    key_padding_mask: Tensor | None,
    attn_mask: Tensor | None,
    dtype: torch.dtype,
) -> Tensor:
    """The merged mask on SDPA's grid, broadcast where it can be, read straight from the masks:

        allowed[b, h, i, j] = not (attn_mask[(b·H + h) | ·, i, j] or key_padding_mask[b, j])

    when every given mask is boolean (True = masked out, torch's convention), else the
    additive M of ``additive_mask`` (the same values, summed in the same order), never
    expanded: SDPA broadcasts it.

    Shapes:
        key_padding_mask [B, S], attn_mask [L, S] or [B·H, L, S]
        -> [1 | B, 1 | H, L | 1, S]: bool (True = may attend, SDPA's convention) or ``dtype``.
    """
    floats = any(m is not None and m.is_floating_point() for m in (attn_mask, key_padding_mask))
    grid: Tensor | None = None
    if attn_mask is not None:
        am = as_additive(attn_mask, dtype) if floats else attn_mask
        grid = (
            am.view(1, 1, tgt_len, src_len)
            if am.dim() == 2
            else am.view(batch, num_heads, tgt_len, src_len)
        )  # [1 | B, 1 | H, L, S]
    if key_padding_mask is not None:
        kpm = as_additive(key_padding_mask, dtype) if floats else key_padding_mask
        kpm = kpm.view(batch, 1, 1, src_len)  # [B, 1, 1, S]
        grid = kpm if grid is None else (grid + kpm if floats else grid | kpm)
    assert grid is not None
    return grid if floats else ~grid  # [1 | B, 1 | H, L | 1, S]


def as_bool(mask: Tensor | None) -> Tensor | None:
    """A float mask whose entries are all 0 or -inf as the boolean mask it encodes (True =
    -inf, not allowed); any other mask as it is. nn.TransformerEncoder(Layer) turns a boolean
    padding mask into such a float mask before calling attention; as a boolean mask it is a
    graph, which the dense backend runs without per-edge biases. The check reads the values,
    so it is skipped under torch.compile (the float path is exact too)."""
    if mask is None or not mask.is_floating_point() or torch.compiler.is_compiling():
        return mask
    banned = torch.isneginf(mask)
    return banned if bool((banned | (mask == 0)).all()) else mask


def full_graph(batch: int, tgt_len: int, src_len: int, device: torch.device) -> TokenGraph:
    """Every query of sequence b joined to every key of sequence b, tagged complete (L = S) or
    bipartite, so the dense backend runs it without reading the edges.

    .. math:: N(b, i) = \\{ (b, j) : 0 \\le j < S \\}

    The same graph as ``complete_graph(lengths=[L] * B)`` / ``bipartite_graph``, with edges made
    only when read, and from sizes that do not depend on data (torch.compile traces them).

    Shapes:
        edge_index [2, B·L·S], sorted by target, then source.
    """

    def build() -> Tensor:
        dst = torch.arange(batch * tgt_len, device=device).repeat_interleave(src_len)  # [E]
        first = (dst // tgt_len) * src_len  # [E] first key of the query's sequence
        src = first + torch.arange(src_len, device=device).repeat(batch * tgt_len)  # [E]
        return torch.stack([src, dst])

    complete = tgt_len == src_len
    return TokenGraph._deferred(
        build,
        batch * src_len,
        batch * tgt_len,
        batch * tgt_len * src_len,
        device=device,
        structure="complete" if complete else "bipartite",
        lengths=(tgt_len,) * batch,
        params={"self_loops": True} if complete else {"kv_lengths": (src_len,) * batch},
    )


def attention_graph(
    batch: int,
    num_heads: int,
    tgt_len: int,
    src_len: int,
    *,
    key_padding_mask: Tensor | None,
    attn_mask: Tensor | None,
    causal: bool,
    need_weights: bool,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[TokenGraph, GridInput | None]:
    """nn.MultiheadAttention's masks -> (graph over B·S sources and B·L targets, bias or None).

    Source b·S + j is key j of sequence b, target b·L + i query i of sequence b.

    Args:
        key_padding_mask: [B, S] (True or -inf = padding) or None.
        attn_mask: [L, S] or [B·H, L, S] (True = not allowed, or additive float) or None.
        causal: torch's causal kernel (``is_causal`` without padding mask or weights): key j
            is allowed for query i iff j <= i (top-left aligned, as SDPA); the masks are unused.
        need_weights: the caller wants per-edge weights. Boolean masks then also take the
            fixed-size graph with a 0 / -inf bias, whose edge_index needs no data-dependent
            ``nonzero`` (torch.compile) and costs what torch's dense weights cost.

    Shapes:
        -> edge_index [2, E]; bias, or None: a ``GridInput`` holding "attn_mask", the grid
        [1 | B, 1 | H, L, S] (``mask_grid``) and, made when read, M per edge [E, 1 | H] in edge
        order (sorted by target, then source).
    """
    if causal:
        if tgt_len == src_len and batch and tgt_len:  # (causal_graph needs a sequence >= 1)
            return causal_graph(lengths=[tgt_len] * batch, device=device), None
        tril = torch.ones(tgt_len, src_len, dtype=torch.bool, device=device).tril()
        return masked_graph(tril.expand(batch, tgt_len, src_len), tgt_len, True), None
    if attn_mask is None and key_padding_mask is None:
        return full_graph(batch, tgt_len, src_len, device), None
    per_head = attn_mask is not None and attn_mask.dim() == 3
    if not (per_head or need_weights):  # torch's layers hand over bool masks as 0 / -inf floats
        key_padding_mask, attn_mask = as_bool(key_padding_mask), as_bool(attn_mask)
    floats = any(m is not None and m.is_floating_point() for m in (attn_mask, key_padding_mask))
    if not (floats or per_head or need_weights):  # one boolean pattern: the graph is the mask
        if attn_mask is None:  # padding only: the same keys for every query, [B, 1, S]
            assert key_padding_mask is not None
            allowed = ~key_padding_mask.view(batch, 1, src_len)
        else:
            banned = attn_mask.view(1, tgt_len, src_len)  # [1, L, S]
            if key_padding_mask is not None:
                banned = banned | key_padding_mask.view(batch, 1, src_len)  # [B, L, S]
            allowed = (~banned).expand(batch, tgt_len, src_len)  # [B, L, S]
        return masked_graph(allowed, tgt_len, True), None  # kept by the graph, never changed
    kpm, am = key_padding_mask, attn_mask

    def per_edge() -> Tensor:  # [B·L·S, 1 | H] in edge order, only when a per-edge path reads it
        merged = additive_mask(
            batch, num_heads, tgt_len, src_len, key_padding_mask=kpm, attn_mask=am, dtype=dtype
        )  # [B, 1 | H, L, S]
        return merged.permute(0, 2, 3, 1).reshape(-1, merged.size(1))

    grid = mask_grid(
        batch, num_heads, tgt_len, src_len, key_padding_mask=kpm, attn_mask=am, dtype=dtype
    )  # [1 | B, 1 | H, L, S]
    bias = GridInput({AttnMaskBias.name: (grid, per_edge)})
    return full_graph(batch, tgt_len, src_len, device), bias
