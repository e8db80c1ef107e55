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

_STRUCTURES = ("complete", "causal", "bipartite")


def _score_parts(score: ScoreFunction) -> tuple[float | None, list] | None:
    """(SDPA scale, position biases) for a score SDPA can express, else None."""
    from ..scores import ALiBi, Biased, RelativePositionBias

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
    from ..scores import Biased

    if "dense" not in score.backends or _score_parts(score) is None:
        return (
            f"score {score.name!r} has no SDPA form (dense runs scaled_dot and dot, "
            "plus ALiBi / relative-position biases)"
        )
    if graph.structure not in _STRUCTURES:
        tag = graph.structure or "none (a raw edge_index)"
        return f"graph structure tag is {tag!r}, not 'complete', 'causal' or 'bipartite'"
    if graph.structure != "bipartite" and graph.num_src != graph.num_dst:
        return f"graph is bipartite (num_src={graph.num_src}, num_dst={graph.num_dst})"
    if graph.structure == "bipartite" and isinstance(score, Biased):
        return "position biases are not defined between query and key sets of a bipartite graph"
    return None


def _side(lengths: tuple[int, ...], n: int, device: torch.device) -> tuple[int, Tensor | None]:
    """(L_max, flat index [n] into B·L_max, or None when all lengths are equal: a plain view)."""
    L = max(lengths)
    if all(m == L for m in lengths):
        return L, None
    lens = torch.tensor(lengths, device=device)  # [B]
    seq = torch.arange(len(lengths), device=device).repeat_interleave(lens)  # [n]
    starts = torch.cumsum(lens, 0) - lens  # [B]
    pos = torch.arange(n, device=device) - starts.repeat_interleave(lens)  # [n]
    return L, seq * L + pos


def _lengths(graph: TokenGraph) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-sequence (query lengths, key lengths) of a complete, causal or bipartite graph."""
    q_len = graph.lengths or (graph.num_dst,)
    if graph.structure == "bipartite":
        kv = graph.params.get("kv_lengths")
        return q_len, tuple(kv) if kv else (graph.num_src,)
    return q_len, q_len


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
    q_len, k_len = _lengths(graph)
    B = len(q_len)
    # padding indices depend only on the graph: computed once per graph, reused by every layer
    key = ("dense_sides", q.device)
    if key not in graph._memo:
        graph._memo[key] = (
            _side(q_len, graph.num_dst, q.device),
            _side(k_len, graph.num_src, q.device),
        )
    (Lq, q_index), (L, k_index) = graph._memo[key]

    def pad(t: Tensor, index: Tensor | None, n: int) -> Tensor:  # [N, H, D] -> [B, H, n, D]
        if index is not None:
            t = t.new_zeros(B * n, H, D).index_copy(0, index, t)  # [B·n, H, D]
        return t.view(B, n, H, D).transpose(1, 2)

    causal = graph.structure == "causal"
    self_loops = bool(graph.params.get("self_loops", True))
    allowed: Tensor | None = None  # [.., L, L] boolean, True = may attend
    if causal and (not self_loops or biases):
        allowed = torch.ones(L, L, dtype=torch.bool, device=q.device).tril(0 if self_loops else -1)
    elif not self_loops:
        allowed = ~torch.eye(L, dtype=torch.bool, device=q.device)
    if k_index is not None and not causal:  # right padding: causal rows never see padded keys
        lens = torch.tensor(k_len, device=q.device)  # [B]
        keys = (torch.arange(L, device=q.device) < lens[:, None])[:, None, None, :]  # [B, 1, 1, L]
        allowed = keys if allowed is None else allowed & keys
    mask: Tensor | None = allowed
    if biases:
        pos = torch.arange(L, device=q.device)
        ctx = DenseContext(pos, pos)
        bias = sum(b.dense(ctx) for b in biases).to(q.dtype)  # [H, L, L]
        mask = bias if allowed is None else bias.masked_fill(~allowed, float("-inf"))
    out = F.scaled_dot_product_attention(
        pad(q, q_index, Lq),
        pad(k, k_index, L),
        pad(v, k_index, L),
        attn_mask=mask,
        dropout_p=dropout if training else 0.0,
        is_causal=causal and allowed is None,
        scale=scale if scale is not None else 1.0 / math.sqrt(D),
    )  # [B, H, L, D]
    out = out.transpose(1, 2).reshape(B * Lq, H, D)  # [B·L_q, H, D]
    if q_index is not None:
        out = out.index_select(0, q_index)  # [N_t, H, D]
    return BackendOutput(out, None, None)
