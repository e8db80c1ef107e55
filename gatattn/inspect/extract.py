"""Sparse attention graphs of long inputs, computed a block of query rows at a time.

For each run of targets (query rows) i, and only for the edges j → i of the token graph:

    α^h_ij  = w(i, j)                                      (eq. 1, the layer's score function)
    Attn^h_ij = exp(α^h_ij) / Σ_{k ∈ N(i)} exp(α^h_ik)     (eq. 2, over ALL of N(i))
    keep the top-k / above-threshold pairs (gatattn.inspect.sparse), drop the rest

Every target's whole neighbourhood is in its block, so the kept weights are the model's exact
weights; only O(rows · max in-degree · H) values exist at once (``ROW_BUDGET``), never the
[E, H] weights of the layer nor a dense [H, L, L]. The edges of a block come from the graph's
structure when it has one (complete, causal, a mask graph: no edge_index is ever made) and
from its CSR otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..backends import EdgeInput
from ..graph import TokenGraph
from ..kernels import neighbourhood_softmax
from ..patterns._common import ragged
from ..scores import Edges, ScoreFunction, check_scores
from .sparse import (
    ROW_BUDGET,
    SparseAttention,
    assemble,
    check_kv_heads,
    check_sparsify,
    iter_row_chunks,
    keep_chunk,
)

__all__ = ["extract_sparse"]


class _RowEdges:
    """The incoming edges of any run of targets, sorted by target, and every target's degree."""

    def __init__(self, graph: TokenGraph, by_id: bool) -> None:
        self.graph = graph
        tag = None if by_id else graph.trusted_structure()  # by_id: per-edge inputs need ids
        self.kind = "csr"
        if tag in ("complete", "causal") and graph.num_src == graph.num_dst:
            self.kind = tag
            lens = torch.tensor(graph.sequence_lengths("dst"), device=graph.device)  # [B]
            starts = torch.cumsum(lens, 0) - lens  # [B]
            self.first = starts.repeat_interleave(lens)  # [N] first key of i's sequence
            self.pos = graph.positions("dst")  # [N]
            self.loops = bool(graph.params.get("self_loops", True))
            if tag == "complete":
                self.degree = lens.repeat_interleave(lens) - (0 if self.loops else 1)  # [N]
            else:
                self.degree = self.pos + 1  # [N]
        elif not by_id and (mask := graph.dense_mask(compact=True)) is not None:
            self.kind = "mask"
            self.mask: Tensor = mask  # [B, L_q | 1, L_k]
            B = self.mask.size(0)
            self.Lq, self.Lk = graph.num_dst // B, self.mask.size(2)
            self.degree = self.mask.sum(-1).expand(B, self.Lq).reshape(-1)  # [N_t]
        else:
            self.rowptr, self.perm = graph.csr()  # [N_t + 1], [E]
            self.degree = self.rowptr.diff()  # [N_t]

    def edges(self, rows: range) -> tuple[Tensor, Tensor, Tensor | None]:
        """(src [e], dst [e], the graph's edge ids [e] or None) of the edges into ``rows``."""
        dev = self.graph.device
        t = torch.arange(rows.start, rows.stop, device=dev)  # [R]
        if self.kind in ("complete", "causal"):
            count = self.degree[t] + (0 if self.loops or self.kind == "causal" else 1)  # [R]
            src, dst = ragged(self.first[t], count, target=t)  # [e] each
            if self.kind == "complete" and not self.loops:
                keep = src != dst  # [e]
                src, dst = src[keep], dst[keep]
            return src, dst, None
        if self.kind == "mask":
            b = t // self.Lq  # [R]
            i = t % self.Lq if self.mask.size(1) > 1 else torch.zeros_like(t)  # [R]
            r, j = self.mask[b, i].nonzero(as_tuple=True)  # [e] each, by row then key
            return b[r] * self.Lk + j, t[r], None
        ids = self.perm[self.rowptr[rows.start] : self.rowptr[rows.stop]]  # [e]
        ei = self.graph.edge_index
        return ei[0, ids], ei[1, ids], ids


def _slice_attr(attr: EdgeInput | None, ids: Tensor | None) -> EdgeInput | None:
    if attr is None or ids is None:
        return attr
    if isinstance(attr, Tensor):
        return attr[ids]
    return {name: t[ids] for name, t in attr.items()}


@torch.no_grad()
def extract_sparse(
    q: Tensor,
    k: Tensor,
    graph: TokenGraph,
    score: ScoreFunction,
    *,
    top_k: int | None = None,
    threshold: float | None = None,
    heads: Sequence[int] | None = None,
    renormalize: bool = False,
    edge_attr: EdgeInput | None = None,
    targets: Tensor | None = None,
    layer: int | None = None,
    budget: int = ROW_BUDGET,
) -> SparseAttention:
    """One layer's sparse attention graph from its queries and keys, without the [E, H] weights.

    .. math::
        K_h(i) = \\mathrm{top}_k \\{ j \\in N(i) : \\mathrm{Attn}^h_{ij} \\ge \\tau \\}, \\quad
        \\mathrm{Attn}^h_{ij} = \\mathrm{softmax}_{j \\in N(i)} w_h(i, j)

    The rows are computed a block at a time (at most ``budget`` gathered values [e, H, D] each),
    and each block keeps only its selected pairs: peak memory O(budget + N·k·H) for top-k,
    whatever E is.
    The kept scores and weights equal the full computation's (the edge backend's) for those
    edges; weights are not renormalised unless ``renormalize=True``. Grouped-query keys
    (k with H_kv < H heads) are shared as in the model: head h reads key head h // (H / H_kv).

    Args:
        q: queries [N_t, H, D].  k: keys [N_s, H_kv, D].
        graph: the token graph N(i).  score: w(i, j), the layer's score function.
        top_k: keep the k largest weights per target and head.  threshold: keep weights >= τ.
        heads: the heads to extract (None: all).  renormalize: rescale the kept weights.
        edge_attr: per-edge inputs of the score, one row per edge of ``graph``.
        targets: bool [N_t]: compute these targets only (None: all).
        layer: recorded in the result.  budget: gathered values per block of rows.

    Shapes:
        q [N_t, H, D], k [N_s, H_kv, D] -> SparseAttention with K <= N_t·k·H rows.

    Raises:
        ValueError: a bad option (``check_sparsify``), or k with a head count not dividing H.
    """
    H = q.size(1)
    chosen = check_sparsify(top_k, threshold, heads, H) or tuple(range(H))
    kv = check_kv_heads(k.size(1), H)
    if kv != H:
        k = k.repeat_interleave(H // kv, dim=1)  # [N_s, H, D]: head h reads kv head h // (H/H_kv)
    rows_of = _RowEdges(graph, by_id=edge_attr is not None)
    degree = rows_of.degree
    if targets is not None:
        degree = torch.where(targets.to(degree.device), degree, torch.zeros_like(degree))
    sel = list(chosen)
    wide = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    like = q.new_empty(0, dtype=wide)  # scores are softmaxed in fp32 for half inputs (edge backend)
    parts = []
    for rows in iter_row_chunks(degree, H * q.size(2), budget):  # gathers [e, H, D] <= budget
        live = degree[rows.start : rows.stop]  # [R]
        if not bool(live.any()):
            continue
        src, dst, ids = rows_of.edges(rows)  # [e] each
        if targets is not None:
            keep = targets[dst]  # [e]
            src, dst, ids = src[keep], dst[keep], None if ids is None else ids[keep]
        edges = Edges(src, dst, graph, _slice_attr(edge_attr, ids))
        alpha = check_scores(score, score.edge_scores(q, k, edges), src.numel(), H, like)
        alpha = alpha[:, sel]  # [e, H']
        weights = neighbourhood_softmax(alpha, dst - rows.start, len(rows))  # [e, H']
        a, w = alpha.to(q.dtype), weights.to(q.dtype)  # as the edge backend returns them
        parts.append(keep_chunk(rows, src, dst, a, w, sel, top_k, threshold, renormalize))
    return assemble(
        parts,
        q,
        num_nodes=graph.num_dst,
        num_heads=H,
        num_kv_heads=kv,
        lengths=graph.lengths,
        heads=None if heads is None else chosen,
        top_k=top_k,
        threshold=threshold,
        renormalized=renormalize,
        layer=layer,
        structure=graph.structure,
    )
