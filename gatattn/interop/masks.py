"""nn.MultiheadAttention masks -> a token graph plus an additive per-edge bias (docs/interop.md).

    M[b, h, i, j] = attn_mask[(b·H + h) | ·, i, j] + key_padding_mask[b, j]      (0 / -inf / float)
    N(i) = { j : M[b, h, i, j] > -inf for some head h }                          (edges)
    α_ij = <q_i, k_j> / √D + M[b, h, i, j]                                       (bias on each edge)

Boolean masks follow nn.MultiheadAttention: ``True`` means *not allowed* (the opposite of SDPA and
``gatattn.from_mask``), so a True entry becomes -inf. Float masks are added to the scores. Entries
that are -inf in every head are no edge at all; -inf in some heads only stays as a per-head bias,
which the neighbourhood softmax turns into weight 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..graph import TokenGraph
from ..patterns import bipartite_graph, causal_graph, complete_graph
from ..scores import DenseContext, Edges, ScoreBias

__all__ = ["AttnMaskBias", "additive_mask", "attention_graph", "mask_graph"]


class AttnMaskBias(ScoreBias):
    """An additive per-edge bias read from ``edge_attr``: b(i, j) = M_ij (per head or shared).

    .. math:: \\alpha_{ij} = w(i, j) + M_{ij}

    It carries nn.MultiheadAttention's float ``attn_mask`` (and per-head boolean masks as 0/-inf)
    onto the edges of the graph. Without ``edge_attr`` the bias is 0.

    Shapes:
        edge_attr [E, 1] or [E, H] -> bias [E, 1] or [E, H] (broadcast over heads);
        dense: ctx.edge_attr [L_q, L_k, 1 | H] -> [1 | H, L_q, L_k].
    """

    name = "attn_mask"

    def forward(self, edges: Edges) -> Tensor:
        attr = edges.input("attn_mask", "AttnMaskBias")
        if attr is None:
            return torch.zeros((), device=edges.src.device)  # 0-d: keeps the scores' dtype
        if attr.dim() != 2:
            raise ValueError(
                f"AttnMaskBias needs edge_attr [E, 1] or [E, H], got {list(attr.shape)}"
            )
        return attr  # [e, 1 | H]

    def dense(self, ctx: DenseContext) -> Tensor:
        if ctx.edge_attr is None:
            return torch.zeros((), device=ctx.pos_q.device)
        return ctx.edge_attr.permute(2, 0, 1)  # [1 | H, L_q, L_k]


def _as_additive(mask: Tensor, name: str, dtype: torch.dtype) -> Tensor:
    """bool (True = masked out) -> 0 / -inf; float -> cast to ``dtype``; else TypeError."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a Tensor or None, got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        zeros = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return zeros.masked_fill(mask, float("-inf"))
    if mask.is_floating_point():
        return mask.to(dtype)
    raise TypeError(
        f"{name} must be boolean (True = not allowed) or floating point (added to the scores), "
        f"got dtype {mask.dtype}"
    )


def additive_mask(
    batch: int,
    num_heads: int,
    tgt_len: int,
    src_len: int,
    *,
    key_padding_mask: Tensor | None,
    attn_mask: Tensor | None,
    is_causal: bool,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor | None:
    """nn.MultiheadAttention's merged additive mask M [B, 1 | H, L, S], or None without masks.

    Args:
        key_padding_mask: [B, S]; True (or -inf) marks padding keys.
        attn_mask: [L, S] shared, or [B·H, L, S] per sequence and head; True = not allowed.
        is_causal: without ``attn_mask``, add the causal mask (j <= i, top-left aligned as SDPA).
            With ``attn_mask`` it is only a hint that the mask is causal, as in torch.

    Raises:
        TypeError: a mask that is neither boolean nor floating point.
        ValueError: a mask whose shape does not match (B, S), (L, S) or (B·H, L, S).
    """
    merged: Tensor | None = None
    if attn_mask is not None:
        am = _as_additive(attn_mask, "attn_mask", dtype)
        if am.dim() == 2 and tuple(am.shape) == (tgt_len, src_len):
            merged = am.view(1, 1, tgt_len, src_len)  # [1, 1, L, S]
        elif am.dim() == 3 and tuple(am.shape) == (batch * num_heads, tgt_len, src_len):
            merged = am.view(batch, num_heads, tgt_len, src_len)  # [B, H, L, S]
        else:
            raise ValueError(
                f"attn_mask must have shape (L, S) = {(tgt_len, src_len)} or (B*H, L, S) = "
                f"{(batch * num_heads, tgt_len, src_len)}, got {tuple(am.shape)}"
            )
    elif is_causal:
        causal = torch.ones(tgt_len, src_len, dtype=torch.bool, device=device).triu(1)
        merged = _as_additive(causal, "causal mask", dtype).view(1, 1, tgt_len, src_len)
    if key_padding_mask is not None:
        kpm = _as_additive(key_padding_mask, "key_padding_mask", dtype)
        if tuple(kpm.shape) != (batch, src_len):
            raise ValueError(
                f"key_padding_mask must have shape (B, S) = {(batch, src_len)}, "
                f"got {tuple(kpm.shape)}"
            )
        kpm = kpm.view(batch, 1, 1, src_len)  # [B, 1, 1, S]
        merged = kpm if merged is None else merged + kpm
    return merged


def mask_graph(
    batch: int,
    tgt_len: int,
    src_len: int,
    merged: Tensor | None,
    *,
    has_float: bool,
    device: torch.device,
) -> tuple[TokenGraph, Tensor | None]:
    """The block-diagonal graph of B sequences and the per-edge bias for a merged mask.

    Target node b·L + i attends to source node b·S + j iff M[b, h, i, j] > -inf for some h.
    The bias is returned only when it is not all zero by construction: for float masks
    (``has_float``) or per-head masks.

    Shapes:
        merged [B, 1 | H, L, S] -> edge_index [2, E] (sorted by target, then source),
        bias [E, 1 | H] or None.
    """
    if merged is None:  # tagged graphs: the dense backend runs them with one SDPA call
        if tgt_len == src_len:
            return complete_graph(lengths=[tgt_len] * batch, device=device), None
        return bipartite_graph([tgt_len] * batch, [src_len] * batch, device=device), None
    merged = merged.expand(batch, -1, tgt_len, src_len)  # [B, 1 | H, L, S]
    allowed = torch.isfinite(merged).any(1)  # [B, L, S]; NaN or -inf in all heads: no edge
    b, i, j = allowed.nonzero(as_tuple=True)  # [E] each, sorted by (b, i, j)
    edge_index = torch.stack([b * src_len + j, b * tgt_len + i])  # [2, E] (source, target)
    graph = TokenGraph(
        edge_index,
        batch * src_len,
        batch * tgt_len,
        lengths=[tgt_len] * batch if tgt_len == src_len else None,
        validate=False,
    )
    bias = None
    if has_float or merged.size(1) > 1:
        bias = merged.permute(0, 2, 3, 1)[b, i, j]  # [E, 1 | H]
    return graph, bias


def attention_graph(
    batch: int,
    num_heads: int,
    tgt_len: int,
    src_len: int,
    *,
    key_padding_mask: Tensor | None,
    attn_mask: Tensor | None,
    is_causal: bool,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[TokenGraph, Tensor | None]:
    """nn.MultiheadAttention's masks -> (graph over B·S sources and B·L targets, bias or None).

    Without masks the graph is tagged (complete, bipartite, or causal for ``is_causal`` alone),
    so a fast backend can run it; otherwise it is built from the merged mask (``mask_graph``).

    Shapes:
        key_padding_mask [B, S], attn_mask [L, S] or [B·H, L, S] -> edge_index [2, E],
        bias [E, 1 | H] or None.
    """
    if is_causal and attn_mask is None and key_padding_mask is None and tgt_len == src_len:
        return causal_graph(lengths=[tgt_len] * batch, device=device), None
    merged = additive_mask(
        batch,
        num_heads,
        tgt_len,
        src_len,
        key_padding_mask=key_padding_mask,
        attn_mask=attn_mask,
        is_causal=is_causal,
        dtype=dtype,
        device=device,
    )  # [B, 1 | H, L, S] or None
    has_float = any(
        isinstance(m, Tensor) and m.is_floating_point() for m in (key_padding_mask, attn_mask)
    )
    return mask_graph(batch, tgt_len, src_len, merged, has_float=has_float, device=device)
