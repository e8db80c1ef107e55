"""Dense attention written plainly, on the full N_t × N_s matrix, for tests and ``gatattn verify``.

    A = w(Q, K)                       [H, N_t, N_s]   (the score's ``dense`` formula)
    P = softmax over j where mask     (a fully masked row gives 0, as SDPA)
    out = P V                         [H, N_t, D]

Edge multiplicities are honoured: a pair (j, i) with c parallel edges contributes c·exp(α_ij) to
the denominator, and each edge gets weight exp(α_ij) / Σ_k c_ik exp(α_ik).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from .graph import TokenGraph, as_token_graph
from .nn.inputs import check_graph_device, split_sources
from .scores import DenseContext

if TYPE_CHECKING:
    from .nn import GraphAttention

__all__ = ["DenseResult", "dense_attention", "dense_reference"]


class DenseResult(NamedTuple):
    """out [N_t, C]; scores and weights per edge [E, H], in the graph's edge order."""

    out: Tensor
    scores: Tensor
    weights: Tensor


def dense_attention(
    v: Tensor, logits: Tensor, counts: Tensor, sinks: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Masked softmax attention with edge multiplicities (and attention sinks).

    .. math::
        P_{ij} = \\frac{\\exp \\alpha_{ij}}{[\\exp s_h] + \\sum_k c_{ik} \\exp \\alpha_{ik}}

    Args:
        v: values [H, N_s, D].
        logits: α [H, N_t, N_s].
        counts: edge multiplicities c_ij [N_t, N_s] (0 = masked).
        sinks: sink logits s [H] (a key of value 0 that every query sees), or None.

    Returns:
        out [H, N_t, D] and the per-edge weight matrix [H, N_t, N_s] (0 where masked).
    """
    work = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    c = counts.to(work.dtype)
    masked = work.masked_fill(counts == 0, float("-inf"))
    m = masked.amax(-1, keepdim=True)  # [H, N_t, 1]
    if sinks is not None:
        m = torch.maximum(m, sinks.to(work.dtype).detach()[:, None, None])
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = (masked - m).exp()  # [H, N_t, N_s]
    denom = (c * e).sum(-1, keepdim=True)  # [H, N_t, 1]
    if sinks is not None:
        denom = denom + (sinks.to(work.dtype)[:, None, None] - m).exp()
    p = torch.where(
        denom > 0, e / denom.clamp_min(torch.finfo(work.dtype).tiny), torch.zeros_like(e)
    )
    out = (c * p).to(v.dtype) @ v  # [H, N_t, D]
    return out, p.to(logits.dtype)


def dense_reference(
    layer: GraphAttention,
    x: Tensor,
    graph: TokenGraph | Tensor,
    *,
    x_src: Tensor | tuple[Tensor, Tensor] | None = None,
    edge_attr: Tensor | None = None,
    pos: Tensor | None = None,
    pos_src: Tensor | None = None,
) -> DenseResult:
    """Run ``layer``'s projections and score function densely (no message passing).

    Uses ``layer.score.dense`` on the full matrix, masks by the graph's edge multiplicities, and
    reads per-edge scores and weights back at the graph's edges. Grouped keys and values
    (``num_kv_heads``) are repeated for their query heads; ``layer.sinks`` join every softmax;
    ``pos``/``pos_src`` replace the token positions (``pos_src`` defaults to ``pos``).
    """
    xk, xv = split_sources(x, x_src, (layer.embed_dim, layer.kdim, layer.vdim))
    check_graph_device(graph, x, "dense_reference")
    g = as_token_graph(graph, num_src=xk.size(0), num_dst=x.size(0))
    q, k, v = (t.transpose(0, 1) for t in layer.project(x, xk, xv))  # [H | H_kv, N, D]
    if k.size(0) != q.size(0):  # query head h reads key/value head h // G
        k, v = (t.repeat_interleave(q.size(0) // t.size(0), 0) for t in (k, v))  # [H, N_s, D]
    dense_attr = None
    if edge_attr is not None:
        attr = edge_attr if edge_attr.dim() == 2 else edge_attr.unsqueeze(-1)
        dense_attr = attr.new_zeros(g.num_dst, g.num_src, attr.size(-1))  # [N_t, N_s, F]
        dense_attr[g.edge_index[1], g.edge_index[0]] = attr
    pq = g.positions("dst") if pos is None else pos
    pk = g.positions("src") if pos is None else (pos if pos_src is None else pos_src)
    ctx = DenseContext(pq, pk, dense_attr)
    logits = layer.score.dense(q, k, ctx)  # [H, N_t, N_s]
    out, p = dense_attention(v, logits, g.edge_counts(), getattr(layer, "sinks", None))
    y = layer.out_proj(out.transpose(0, 1).reshape(-1, layer.embed_dim))  # [N_t, C]
    src, dst = g.edge_index
    return DenseResult(y, logits[:, dst, src].T, p[:, dst, src].T)
