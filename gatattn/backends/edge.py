"""The edge backend: the literal graph-attention formula on any graph and any score function.

    α_e     = w(dst(e), src(e))                          scores [E, H]        (eq. 1)
    Attn_e  = softmax of α over the edges into dst(e)    weights [E, H]       (eq. 2)
    out_i   = Σ_{e: dst(e)=i} Attn_e · v_{src(e)}        [N_t, H, D]          (eq. 3)

Memory is O(E·H + N·H·D): scores come from ``ScoreFunction.edge_scores`` (chunked or
node-factorised) and the weighted sum from ``ops.edge_aggregate`` (chunked, custom backward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..graph import TokenGraph
from ..kernels import edge_aggregate, neighbourhood_softmax
from ..scores import Edges, ScoreFunction
from .types import BackendOutput

__all__ = ["edge_attention", "edge_scores_and_weights"]

_HALF = (torch.float16, torch.bfloat16)


def edge_scores_and_weights(
    q: Tensor, k: Tensor, graph: TokenGraph, score: ScoreFunction, edge_attr: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Per-edge α [E, H] (eq. 1) and Attn [E, H] (eq. 2) for q [N_t, H, D], k [N_s, H, D]."""
    src, dst = graph.edge_index[0], graph.edge_index[1]
    alpha = score.edge_scores(q, k, Edges(src, dst, graph, edge_attr))  # [E, H]
    if tuple(alpha.shape) != (src.numel(), q.size(1)):
        raise ValueError(
            f"score function {score.name!r} returned shape {tuple(alpha.shape)}; expected "
            f"(E, H) = ({src.numel()}, {q.size(1)})"
        )
    return alpha, neighbourhood_softmax(alpha, dst, graph.num_dst)  # [E, H], [E, H]


def edge_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    graph: TokenGraph,
    score: ScoreFunction,
    *,
    edge_attr: Tensor | None = None,
    dropout: float = 0.0,
    training: bool = False,
    need_weights: bool = False,
) -> BackendOutput:
    """Graph attention by the literal formula (eqs. 1-3), on any graph.

    Args:
        q: queries [N_t, H, D].  k: keys [N_s, H, D].  v: values [N_s, H, D].
        graph: the TokenGraph (edge_index [2, E]).
        score: the ScoreFunction w(i, j).
        edge_attr: optional edge features [E, F] for scores/biases that use them.
        dropout: dropout probability on the attention weights, applied when ``training``.
        need_weights: also return α and Attn [E, H].

    Shapes:
        -> out [N_t, H, D], scores [E, H] | None, weights [E, H] | None.
    """
    alpha, weights = edge_scores_and_weights(q, k, graph, score, edge_attr)
    w = F.dropout(weights, dropout, training) if dropout > 0 else weights  # [E, H]
    if v.dtype in _HALF:  # accumulate half-precision sums in fp32, as SDPA does
        out = edge_aggregate(
            w.float(), v.float(), graph.edge_index[0], graph.edge_index[1], graph.num_dst
        ).to(v.dtype)
    else:
        out = edge_aggregate(w, v, graph.edge_index[0], graph.edge_index[1], graph.num_dst)
    if need_weights:
        return BackendOutput(out, alpha, weights)
    return BackendOutput(out, None, None)
