"""The edge backend: the literal graph-attention formula on any graph and any score function.

    α_e     = w(dst(e), src(e))                          scores [E, H]        (eq. 1)
    Attn_e  = softmax of α over the edges into dst(e)    weights [E, H]       (eq. 2)
              (and the sink logit s_h, when ``Problem.sinks`` is set)
    out_i   = Σ_{e: dst(e)=i} Attn_e · v_{src(e)}        [N_t, H, D]          (eq. 3)

With TransformerConv's edge modulation (``Problem.modulation``, Shi et al. 2021, eqs. 3-4) the
key and value of each edge carry its features: α_ij = w(q_i, k_j + W_e e_ij) and
out_i = Σ_j Attn_ij (v_j + W_e e_ij).

Memory is O(E·H + N·H·D): scores come from ``ScoreFunction.edge_scores`` (chunked or
node-factorised) and the weighted sum from ``kernels.edge_aggregate`` (chunked, custom backward).
This backend is the ground truth: every other backend is tested against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.utils import scatter

from ..graph import TokenGraph
from ..kernels import chunked_edge_map, edge_aggregate
from ..kernels.grouping import register
from ..kernels.softmax import softmax_by_target
from ..scores import Edges, check_scores
from .base import Backend, BackendOutput, EdgeModulation, Problem

__all__ = ["EdgeBackend", "edge_scores_and_weights"]

_HALF = (torch.float16, torch.bfloat16)


def edge_rows(graph: TokenGraph) -> tuple[Tensor, Tensor]:
    """(src [E], dst [E]) of ``graph``: in eager mode the same two tensors on every call,
    kept in the graph's cache and registered with the kernels (``kernels.grouping``), so
    that their sums run grouped by target or source, the same way on every call. Fresh views
    under torch.compile."""
    if torch.compiler.is_compiling():
        return graph.edge_index[0], graph.edge_index[1]

    def rows() -> tuple[Tensor, Tensor]:
        src, dst = graph.edge_index[0], graph.edge_index[1]  # [E], [E]
        register(src, dst, graph.num_src, graph.num_dst)
        return src, dst

    return graph.derived("edge_rows", rows)


def _edges(p: Problem, rows: tuple[Tensor, Tensor]) -> Edges:
    return Edges(rows[0], rows[1], p.graph, p.edge_attr, p.positions)


def _modulated_scores(p: Problem, mod: EdgeModulation, rows: tuple[Tensor, Tensor]) -> Tensor:
    """α_ij = w(q_i, k_j + W_e e_ij), chunked: no [E, H, D] tensor at once. -> [E, H]."""
    H, D = p.q.size(1), p.q.size(2)
    edges = _edges(p, rows)

    def chunk(s: int, t: int) -> Tensor:
        part = edges.slice(s, t)
        k_ij = p.k.index_select(0, part.src) + F.linear(mod.attr[s:t], mod.weight).view(-1, H, D)
        out = p.score(p.q.index_select(0, part.dst), k_ij, part)  # [e, H]
        return check_scores(p.score, out, t - s, H, p.q)

    return chunked_edge_map(chunk, p.graph.num_edges, H * D)


def _wide_scores_and_weights(
    p: Problem, rows: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """α and Attn [E, H]; fp32 when the score computes fp16/bf16 inputs in fp32 (edge_dot).
    ``rows``: the graph's (src, dst) from ``edge_rows`` (made here when None)."""
    g = p.graph
    rows = edge_rows(g) if rows is None else rows
    if p.modulation is not None:
        alpha = _modulated_scores(p, p.modulation, rows)
    else:
        alpha = p.score.edge_scores(p.q, p.k, _edges(p, rows))  # [E, H]
    if tuple(alpha.shape) != (g.num_edges, p.q.size(1)):
        raise ValueError(
            f"score function {p.score.name!r} returned shape {tuple(alpha.shape)}; expected "
            f"(E, H) = ({g.num_edges}, {p.q.size(1)})"
        )
    weights = softmax_by_target(alpha, rows[1], g.num_dst, p.sinks)  # [E, H]
    return alpha, weights


def edge_scores_and_weights(p: Problem) -> tuple[Tensor, Tensor]:
    """Per-edge α [E, H] (eq. 1) and Attn [E, H] (eq. 2) of ``p``, by the literal formula.

    Both come back in the dtype of ``p.q``. For fp16/bf16 inputs the dot-product scores are
    computed in fp32 and the softmax runs on those fp32 scores, so the weights are finite
    wherever the output is, even when a logit is beyond the half range (it is then ±inf in
    the returned scores, which is its value in that dtype).
    """
    alpha, weights = _wide_scores_and_weights(p)
    return alpha.to(p.q.dtype), weights.to(p.q.dtype)


class EdgeBackend(Backend):
    """Graph attention by the literal formula (eqs. 1-3): any graph, any score, every option."""

    name = "edge"

    def supports(self, p: Problem) -> tuple[str, ...]:
        return ()

    def explain(self, p: Problem) -> str:
        return "the reference formula, which runs every graph, score and option"

    def run(self, p: Problem) -> BackendOutput:
        g = p.graph
        src, dst = edge_rows(g)
        alpha, weights = _wide_scores_and_weights(p, (src, dst))
        w = F.dropout(weights, p.dropout, p.training) if p.dropout > 0 else weights  # [E, H]
        half = p.v.dtype in _HALF  # accumulate half-precision sums in fp32, as SDPA does
        wa, va = (w.float(), p.v.float()) if half else (w, p.v)
        if p.aggregate is not None:
            out = p.aggregate(wa, va)  # [N_t, H, D]
        else:
            out = edge_aggregate(wa, va, src, dst, g.num_dst)  # [N_t, H, D]
        if p.modulation is not None:
            # Σ_j Attn_ij W_e e_ij = W_e Σ_j Attn_ij e_ij per head: sum the F-wide features first.
            H, D = p.q.size(1), p.q.size(2)
            attr = p.modulation.attr.to(wa.dtype)  # [E, F]
            agg = scatter(wa.unsqueeze(-1) * attr.unsqueeze(1), dst, 0, dim_size=g.num_dst)
            w_e = p.modulation.weight.to(wa.dtype).view(H, D, -1)  # [H, D, F]
            out = out + torch.einsum("nhf,hdf->nhd", agg, w_e)  # agg [N_t, H, F]
        out = out.to(p.v.dtype)
        if p.need_weights:
            return BackendOutput(out, alpha.to(p.q.dtype), weights.to(p.q.dtype))
        return BackendOutput(out, None, None)
