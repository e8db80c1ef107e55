"""The dense backend: ``F.scaled_dot_product_attention`` for complete and causal graphs.

On the complete graph of one sequence, graph attention is dense attention (docs/math.md, eq. 4):

    out = softmax(s · Q Kᵀ + B) V,   s = 1/√D (scaled_dot) or 1 (dot)      [H, L, D]

B is 0, or the dense form of position biases (ALiBi, relative position), or −∞ outside the
graph (causal, no self-loops, padding). A block-diagonal batch (``graph.lengths``) runs without a
Python loop over sequences: tokens are scattered into a padded [B, H, L_max, D] tensor with one
``index_copy`` (sequences of one length need no padding at all, and their output is a view), then
one SDPA call runs every sequence, and padded keys are masked out.

Which graphs: only builder-tagged ones (``structure`` "complete" or "causal"); a raw edge_index is
never tagged, so dispatch routes it elsewhere. The tag is trusted, not re-checked.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..graph import TokenGraph
from ..scores import DenseContext, Dot, ScaledDot, ScoreFunction
from .types import BackendOutput

__all__ = ["dense_attention_sdpa", "dense_unsupported"]

_STRUCTURES = ("complete", "causal")


def _score_parts(score: ScoreFunction) -> tuple[float | None, list] | None:
    """(SDPA scale, position biases) for a score SDPA can express, else None."""
    from ..biases import ALiBi, Biased, RelativePositionBias

    biases: list = []
    base = score
    if isinstance(score, Biased):
        base, biases = score.score, score.biases_list()
        if not all(isinstance(b, (ALiBi, RelativePositionBias)) for b in biases):
            return None
    if type(base) is ScaledDot:
        return None, biases  # SDPA's default scale 1/√D
    if type(base) is Dot:
        return 1.0, biases
    return None


def dense_unsupported(score: ScoreFunction, graph: TokenGraph) -> str | None:
    """Why the dense backend cannot run ``score`` on ``graph``, or None when it can."""
    if "dense" not in score.backends or _score_parts(score) is None:
        return (
            f"score {score.name!r} has no SDPA form (dense runs scaled_dot and dot, "
            "plus ALiBi / relative-position biases)"
        )
    if graph.structure not in _STRUCTURES:
        tag = graph.structure or "none (a raw edge_index)"
        return f"graph structure tag is {tag!r}, not 'complete' or 'causal'"
    if graph.num_src != graph.num_dst:
        return f"graph is bipartite (num_src={graph.num_src}, num_dst={graph.num_dst})"
    return None


def _layout(
    graph: TokenGraph, device: torch.device
) -> tuple[int, int, Tensor | None, Tensor | None]:
    """(B, L_max, flat index [N] into B·L_max or None, key-valid mask [B, L_max] or None)."""
    lengths = graph.lengths or (graph.num_dst,)
    B, L = len(lengths), max(lengths)
    if all(n == L for n in lengths):
        return B, L, None, None  # equal lengths: a plain view, no padding
    lens = torch.tensor(lengths, device=device)  # [B]
    seq = torch.arange(B, device=device).repeat_interleave(lens)  # [N]
    starts = torch.cumsum(lens, 0) - lens  # [B]
    pos = torch.arange(graph.num_dst, device=device) - starts.repeat_interleave(lens)  # [N]
    valid = torch.arange(L, device=device) < lens[:, None]  # [B, L_max]
    return B, L, seq * L + pos, valid


def dense_attention_sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    graph: TokenGraph,
    score: ScoreFunction,
    *,
    dropout: float = 0.0,
    training: bool = False,
) -> BackendOutput:
    """Graph attention on a complete or causal (batched) graph by one SDPA call.

    .. math::
        \\mathrm{out} = \\mathrm{softmax}(s\\,QK^\\top + B + M)\\,V

    with M = 0 on edges and −∞ elsewhere (Vaswani et al. 2017, "Attention Is All You Need").

    Args:
        q, k, v: [N, H, D] (self-attention, N = Σ lengths).
        graph: a TokenGraph tagged "complete" or "causal" (params ``self_loops``), optional lengths.
        score: scaled_dot or dot, optionally + ALiBi / relative-position biases.
        dropout, training: SDPA's ``dropout_p`` on the attention weights in training mode.

    Shapes:
        -> out [N, H, D]; scores and weights are None (the layer recovers them per edge).
    """
    parts = _score_parts(score)
    if parts is None:  # dispatch checks this first; keep the backend honest when called directly
        raise ValueError(f"dense backend cannot run score {score.name!r}")
    scale, biases = parts
    H, D = q.size(1), q.size(2)
    B, L, index, valid = _layout(graph, q.device)

    def pad(t: Tensor) -> Tensor:  # [N, H, D] -> [B, H, L, D]
        if index is not None:
            t = t.new_zeros(B * L, H, D).index_copy(0, index, t)  # [B·L, H, D]
        return t.view(B, L, H, D).transpose(1, 2)

    causal = graph.structure == "causal"
    self_loops = bool(graph.params.get("self_loops", True))
    allowed: Tensor | None = None  # [.., L, L] boolean, True = may attend
    if causal and (not self_loops or biases):
        allowed = torch.ones(L, L, dtype=torch.bool, device=q.device).tril(0 if self_loops else -1)
    elif not self_loops:
        allowed = ~torch.eye(L, dtype=torch.bool, device=q.device)
    if valid is not None and not causal:  # right padding: causal rows never see padded keys
        keys = valid[:, None, None, :]  # [B, 1, 1, L]
        allowed = keys if allowed is None else allowed & keys
    mask: Tensor | None = allowed
    if biases:
        pos = torch.arange(L, device=q.device)
        ctx = DenseContext(pos, pos)
        bias = sum(b.dense(ctx) for b in biases).to(q.dtype)  # [H, L, L]
        mask = bias if allowed is None else bias.masked_fill(~allowed, float("-inf"))
    out = F.scaled_dot_product_attention(
        pad(q),
        pad(k),
        pad(v),
        attn_mask=mask,
        dropout_p=dropout if training else 0.0,
        is_causal=causal and allowed is None,
        scale=scale if scale is not None else 1.0 / math.sqrt(D),
    )  # [B, H, L, D]
    out = out.transpose(1, 2).reshape(B * L, H, D)  # [B·L, H, D]
    if index is not None:
        out = out.index_select(0, index)  # [N, H, D]
    return BackendOutput(out, None, None)
