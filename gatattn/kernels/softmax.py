"""The neighbourhood softmax (docs/math.md, eq. 2).

    Attn_ij = exp(α_ij) / Σ_{k ∈ N(i)} exp(α_ik)

computed stably as exp(α_ij − m_i) / Σ_k exp(α_ik − m_i) with m_i = max_{k ∈ N(i)} α_ik.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.utils import scatter

__all__ = ["neighbourhood_softmax"]


def neighbourhood_softmax(
    scores: Tensor, index: Tensor, num_nodes: int, sinks: Tensor | None = None
) -> Tensor:
    """Softmax of per-edge scores over the incoming edges of each target.

    .. math::
        \\mathrm{Attn}_{ij} = \\frac{\\exp(\\alpha_{ij} - m_i)}
        {\\sum_{k \\in N(i)} \\exp(\\alpha_{ik} - m_i)}, \\quad
        m_i = \\max_{k \\in N(i)} \\alpha_{ik}

    Duplicate edges are separate edges: each gets its own weight. A target whose scores are
    all -inf gets weight 0 on every edge, with finite gradients (SDPA does the same for fully
    masked rows). fp16/bf16 scores are reduced in fp32 and the result is cast back.

    Why not ``torch_geometric.utils.softmax`` as is: for an all -inf group it computes
    ``-inf - (-inf) = NaN``, and its ``+ 1e-16`` guard underflows to 0 in fp16. We reuse its
    building block (``torch_geometric.utils.scatter``) and fix both: a non-finite max becomes
    0, and the denominator is clamped at 1, which is exact because a group with a finite max
    always has a denominator >= 1 (its max term is exp(0)).

    With attention sinks (gpt-oss; Xiao et al. 2024, "Efficient Streaming Language Models with
    Attention Sinks"), every target also attends to a sink: an extra key with logit s_h and
    value 0, so the weights of its edges sum to less than 1:

    .. math::
        \\mathrm{Attn}_{ij} = \\frac{\\exp(\\alpha_{ij} - m_i)}
        {\\exp(s_h - m_i) + \\sum_{k \\in N(i)} \\exp(\\alpha_{ik} - m_i)}, \\quad
        m_i = \\max(s_h, \\max_{k \\in N(i)} \\alpha_{ik})

    Args:
        scores: α, [E, H] (or [E]).
        index: target node of each edge, LongTensor [E] (``edge_index[1]``), each in
            [0, num_nodes).
        num_nodes: N_t, the number of targets.
        sinks: the sink logits s [H] (finite), or None (default): no sink.

    Shapes:
        scores [E, H] -> weights [E, H].

    Raises:
        TypeError: ``scores`` is not a floating-point tensor, ``index`` is not a LongTensor,
            or ``num_nodes`` is not an int.
        ValueError: ``index`` is not 1-D with one entry per row of ``scores``, lives on
            another device, or holds a target outside [0, num_nodes) (the message names it
            and its edge); ``sinks`` is not [H] or not finite.
    """
    if not isinstance(index, Tensor) or index.dtype != torch.long:
        what = index.dtype if isinstance(index, Tensor) else type(index).__name__
        raise TypeError(f"index must be a LongTensor [E] of target nodes, got {what}")
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 0:
        raise TypeError(f"num_nodes must be an int >= 0, got {num_nodes!r}")
    if index.dim() != 1 or scores.dim() == 0 or scores.size(0) != index.numel():
        rows = scores.size(0) if scores.dim() else "no"
        raise ValueError(
            f"scores has {rows} rows but index has {index.numel()} edges (shape "
            f"{list(index.shape)}); index must be [E], one target per row of scores"
        )
    if not isinstance(scores, Tensor) or not scores.is_floating_point():
        what = scores.dtype if isinstance(scores, Tensor) else type(scores).__name__
        raise TypeError(f"scores must be a floating-point tensor [E, H], got {what}")
    if index.device != scores.device:  # (a tensor's device always carries its index)
        raise ValueError(f"index is on {index.device} but scores are on {scores.device}")
    if index.numel() and index.device.type != "meta" and not torch.compiler.is_compiling():
        low, high = (int(t) for t in torch.aminmax(index))
        if low < 0 or high >= num_nodes:
            bad = low if low < 0 else high
            edge = int((index == bad).nonzero()[0, 0])
            raise ValueError(
                f"index holds target {bad} (edge {edge}), outside [0, num_nodes={num_nodes})"
            )
    if sinks is not None and sinks.shape != scores.shape[1:] and sinks.shape != (1,):
        raise ValueError(
            f"sinks must hold one logit per head, shape {tuple(scores.shape[1:])} for scores "
            f"{tuple(scores.shape)}, got shape {tuple(sinks.shape)}"
        )
    if sinks is not None and sinks.device.type != "meta" and not torch.compiler.is_compiling():
        if not bool(torch.isfinite(sinks).all()):  # NaN gives NaN weights, ±inf no softmax
            raise ValueError(f"sinks must be finite, got {sinks.tolist()}")
    return softmax_by_target(scores, index, num_nodes, sinks)


def softmax_by_target(
    scores: Tensor, index: Tensor, num_nodes: int, sinks: Tensor | None = None
) -> Tensor:
    """``neighbourhood_softmax`` without its input checks, for callers whose ``index`` is a
    validated graph's targets (the edge backend). scores [E, H] -> weights [E, H]."""
    work = scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores
    return _softmax(work, index, num_nodes, sinks).to(scores.dtype)


def _group_max(work: Tensor, index: Tensor, num_nodes: int) -> Tensor:
    """max_{e→i} α_e for every target, -inf where i has no edge. [N, H]. (A scatter from a
    -inf start: about 3x faster on CPU than PyG's max, which excludes the start value.)"""
    at = index.view(-1, *([1] * (work.dim() - 1))).expand_as(work)  # [E, H]
    m = work.new_full((num_nodes, *work.shape[1:]), float("-inf"))  # [N, H]
    return m.scatter_reduce(0, at, work, "amax")


def _softmax(work: Tensor, index: Tensor, num_nodes: int, sinks: Tensor | None) -> Tensor:
    """The stable neighbourhood softmax (eq. 2, with an optional sink) as differentiable ops."""
    m = _group_max(work.detach(), index, num_nodes)  # [N, H]
    if sinks is not None:  # m_i = max(s_h, max_k α_ik): finite, as s_h is
        sink = sinks.to(work.dtype)  # [H]
        m = torch.maximum(m, sink.detach())  # [N, H] (-inf, no edge: s_h)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = (work - m.index_select(0, index)).exp()  # [E, H]
    denom = scatter(e, index, 0, dim_size=num_nodes, reduce="sum")  # [N, H]
    if sinks is not None:
        denom = denom + (sink - m).exp()  # + exp(s_h - m_i): the sink's share
    else:
        denom = denom.clamp_min(1.0)
    return e / denom.index_select(0, index)  # [E, H]
