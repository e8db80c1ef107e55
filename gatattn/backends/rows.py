"""Attention a block of target (query) rows at a time: α and Attn of every edge into the rows,
never the [E, H] weights of the whole graph nor a dense [H, L, L].

For the targets i of one block, over the WHOLE in-neighbourhood N(i) of each:

    α^h_ij    = w(i, j)                                     (eq. 1, the layer's score function)
    Attn^h_ij = exp(α^h_ij) / Σ_{k ∈ N(i)} exp(α^h_ik)      (eq. 2)

so each block's weights are the model's exact weights, and a consumer (``gatattn.inspect``'s
``extract_sparse``) keeps what it needs of each block before the next one is computed. Two paths,
chosen per graph and score (``AttentionRows.path``):

``grid``   the rows' edges lie in a [rows, keys] grid in the graph's own edge order
           (``row_layout``: complete, causal, bipartite, mask graphs and any graph without
           duplicate edges whose rows are bands) and the score has a dense form: the block's
           logits [H', R, W] = the score's dense form on (q_rows, k_keys) (s·Q Kᵀ, one matmul,
           for scaled dot products), plus the position biases' dense forms and the per-edge
           biases placed at their edges, masked to the edges; then the softmax over each row
           (a row without edges, or whose scores are all −∞, gets weights 0, never NaN).
``edges``  otherwise (duplicate edges, a score without a dense form, rows scattered over
           far-apart keys): the edges into the rows as a list [e], scored edge by edge
           (``edge_scores``) and normalised by ``neighbourhood_softmax``, as the edge backend.

A block holds at most ``budget`` values: [H', R, W] (× D for a pairwise dense form) on the grid,
the gathered [e, H, D] on the edge list.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ..graph import TokenGraph
from ..kernels import CHUNK_ELEMENTS, neighbourhood_softmax
from ..scores import POSITION, DenseContext, Edges, ScoreBias, ScoreFunction, check_scores
from ..validation import check_heads
from .base import EdgeInput
from .row_layout import RowLayout, row_blocks

__all__ = ["ROW_BUDGET", "AttentionRows", "RowBlock", "attention_rows"]

#: Values per block of rows (2**22 fp32 values are 16 MiB, as ``kernels.CHUNK_ELEMENTS``).
ROW_BUDGET = CHUNK_ELEMENTS
#: The grid path is taken for an edge-list graph only if its blocks hold at most this many
#: cells per edge (the rest are non-edges that are computed and masked).
MAX_GRID_CELLS_PER_EDGE = 4
_HALF = (torch.float16, torch.bfloat16)


class RowBlock(NamedTuple):
    """α and Attn of the edges into the targets ``rows``, in one of two layouts.

    Grid (``edge`` is a tensor): column c is key ``src[c]``, row r is target rows.start + r;
    ``edge[r, c]`` says whether j → i is an edge; scores and weights [H', R, W] (non-edges:
    score −∞, weight 0). Columns are in key order, which is each row's edge order.
    Edges (``edge`` is None): ``src``/``dst`` [e] sorted by target (in the graph's order);
    scores and weights [e, H'].

    Heads: H' = the extracted heads (``AttentionRows.heads``), in that order.
    """

    rows: range
    src: Tensor
    dst: Tensor | None
    scores: Tensor
    weights: Tensor
    edge: Tensor | None


def _is_position(bias: ScoreBias) -> bool:
    """The bias reads positions only, so ``dense(ctx)`` gives it on every (i, j)."""
    return bias.kind == POSITION


class AttentionRows:
    """The attention of a layer, a block of target rows at a time (module docstring).

    .. math::
        \\mathrm{Attn}^h_{ij} = \\mathrm{softmax}_{j \\in N(i)} w_h(i, j),
        \\quad i \\in \\text{rows } a..b-1 \\text{ of one block}

    Iterating yields ``RowBlock``s, each target in exactly one block, in target order. The
    attributes say what the blocks describe: ``num_nodes`` (N_t), ``num_heads`` (H),
    ``num_kv_heads`` (H_kv), ``heads`` (the heads computed, None: all), ``lengths`` and
    ``structure`` (the graph's), and ``path`` (``"grid"`` or ``"edges"``).
    """

    def __init__(
        self,
        q: Tensor,
        k: Tensor,
        graph: TokenGraph,
        score: ScoreFunction,
        *,
        heads: Sequence[int] | None,
        edge_attr: EdgeInput | None,
        targets: Tensor | None,
        budget: int,
        positions: tuple[Tensor, Tensor] | None = None,
        sinks: Tensor | None = None,
    ) -> None:
        H, kv = q.size(1), k.size(1)
        if kv < 1 or H % kv:
            raise ValueError(
                f"num_kv_heads must be a positive int dividing the {H} heads, got {kv!r}"
            )
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ValueError(f"budget must be a positive int, got {budget!r}")
        self.heads = check_heads(heads, H)
        after = score.after_transform()
        if after is not None:  # rotary: φ(q), ψ(k) once per node (O(N)), then w'
            pos = positions or (graph.positions("dst"), graph.positions("src"))
            q, k = score.transform_nodes(q, k, pos[0], pos[1])
            score = after
        self.q, self.k, self.graph, self.score = q, k, graph, score
        self.positions, self.sinks = positions, sinks
        self.edge_attr, self.budget = edge_attr, budget
        self.targets = None if targets is None else targets.to(graph.device, torch.bool)
        self.num_nodes, self.num_heads, self.num_kv_heads = graph.num_dst, H, kv
        self.lengths, self.structure = graph.lengths, graph.structure
        self.sel = list(self.heads if self.heads is not None else range(H))
        self.wide = torch.float32 if q.dtype in _HALF else q.dtype
        base, biases = score.parts()
        self.base, self.biases = base, biases
        dense = base.has_dense
        per_edge = [b for b in biases if not _is_position(b)]
        by_id = edge_attr is not None or bool(per_edge)
        self.layout = RowLayout(graph, by_id=by_id, grid=dense)
        self.path = "grid" if dense and self.layout.is_grid else "edges"
        if self.path == "grid" and self.layout.kind == "scatter" and not self._dense_enough():
            self.path = "edges"

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the blocks' scores and weights (q's)."""
        return self.q.dtype

    @property
    def device(self) -> torch.device:
        return self.q.device

    def _grid_width(self) -> int:
        """Values per grid cell: the heads computed (all H when the score has per-head
        parameters and only some heads are extracted), × D for a pairwise dense form."""
        heads = (
            len(self.sel) if self.base.sdpa_scale(self.q.size(2)) is not None else self.num_heads
        )
        return heads * (self.q.size(2) if getattr(self.base, "pairwise_dense", False) else 1)

    def _dense_enough(self) -> bool:
        lay = self.layout
        cells = sum(
            (b - a) * (k1 - k0)
            for a, b, k0, k1 in row_blocks(lay.lo, lay.hi, self._grid_width(), self.budget)
        )
        return cells <= MAX_GRID_CELLS_PER_EDGE * self.graph.num_edges + self.num_nodes

    def __iter__(self) -> Iterator[RowBlock]:
        lay = self.layout
        lo, hi = lay.lo, lay.hi
        if self.targets is not None:  # rows outside the targets read no key
            hi = torch.where(self.targets, hi, lo)
        if self.path == "grid":
            self._grid_setup()
            for a, b, k0, k1 in row_blocks(lo, hi, self._grid_width(), self.budget):
                yield self._grid_block(a, b, k0, k1)
        else:
            width = self.num_heads * self.q.size(2)  # the gathered q_i, k_j [e, H, D]
            for a, b, k0, k1 in row_blocks(lo, hi, width, self.budget):
                block = self._edge_block(a, b, k0, k1)
                if block is not None:
                    yield block

    def _grid_setup(self) -> None:
        """What every grid block shares: the scale, the heads computed and their kv heads,
        and the token positions (for dense forms that read them)."""
        H, D = self.num_heads, self.q.size(2)
        self.scale = self.base.sdpa_scale(D)
        # s·<q_i, k_j> has no per-head parameters: only the extracted heads are computed
        heads = self.sel if self.scale is not None else list(range(H))
        group = H // self.num_kv_heads
        self.kv_of: Tensor | None = None
        if heads != list(range(H)) or group != 1:
            self.qh_of = torch.tensor(heads, device=self.q.device)  # [H'']
            self.kv_of = torch.div(self.qh_of, group, rounding_mode="floor")  # [H'']
        self.pos_q: Tensor | None = None
        self.pos_k: Tensor | None = None
        if self.scale is None or self.biases:
            self.pos_q, self.pos_k = self.positions or (
                self.graph.positions("dst"),
                self.graph.positions("src"),
            )
        self.sink: Tensor | None = None
        if self.sinks is not None:
            self.sink = self.sinks.to(self.wide)[self.sel].view(-1, 1, 1)  # [H', 1, 1]

    def _grid_block(self, a: int, b: int, k0: int, k1: int) -> RowBlock:
        """α, Attn [H', R, W] of targets a..b-1 over keys k0..k1-1 (the grid path)."""
        g, sel = self.graph, self.sel
        edge, c0, c1 = self.layout.grid(a, b, k0, k1)  # [R, W]; columns c0..c1-1 all edges
        if self.targets is not None and not bool(self.targets[a:b].all()):
            edge &= self.targets[a:b, None]
            c0 = c1 = 0
        H = self.num_heads
        qh = self.q[a:b].to(self.wide).transpose(0, 1)  # [H, R, D]
        kh = self.k[k0:k1].to(self.wide).transpose(0, 1)  # [H_kv, W, D]
        if self.kv_of is not None:  # the computed heads, and the kv head each one reads
            qh, kh = qh[self.qh_of], kh.index_select(0, self.kv_of)  # [H'', R | W, D]
        ctx = None
        if self.pos_q is not None and self.pos_k is not None:
            ctx = DenseContext(self.pos_q[a:b], self.pos_k[k0:k1])
        if self.scale is not None:  # s·Q Kᵀ: one batched matmul, s applied to the R·D queries
            alpha = torch.bmm(qh * self.scale, kh.transpose(1, 2))  # [H', R, W]
        else:
            assert ctx is not None
            alpha = self.base.dense(qh, kh, ctx).to(self.wide)  # [H, R, W]
            alpha = alpha if len(sel) == H else alpha[sel]  # [H', R, W]
        for bias in self.biases:
            if _is_position(bias):
                assert ctx is not None
                alpha += bias.dense(ctx).to(self.wide).expand(H, -1, -1)[sel]  # [H', R, W]
        per_edge = [bias for bias in self.biases if not _is_position(bias)]
        if per_edge:  # per-edge values at their cells (the scatter layout has the edge ids)
            src, dst, ids = self.layout.edges(a, b, k0, k1)  # [e] each
            keep = edge[dst - a, src - k0]  # [e] (targets)
            src, dst, ids = src[keep], dst[keep], None if ids is None else ids[keep]
            edges = Edges(src, dst, g, _slice_attr(self.edge_attr, ids), self.positions)
            vals = sum((bias(edges) for bias in per_edge), torch.zeros((), device=src.device))
            vals = torch.as_tensor(vals).to(self.wide)
            vals = vals.reshape(-1, 1) if vals.dim() < 2 else vals  # [e | 1, H | 1]
            vals = vals.expand(src.numel(), H)[:, sel]  # [e, H']
            alpha[:, dst - a, src - k0] += vals.t()  # one cell per edge: no repeats here
        for lo, hi in ((0, c0), (c1, k1 - k0)):  # the columns where some row has no edge
            if hi > lo:
                alpha[..., lo:hi].masked_fill_(~edge[:, lo:hi], float("-inf"))
        if self.sink is None:
            w = torch.softmax(alpha, -1)  # [H', R, W]; non-edges get exactly 0
            empty = w[..., 0].isnan()  # [H', R]: every score −∞ (or no edge): a NaN row
            if bool(empty.any()):
                w[empty] = 0.0  # the neighbourhood softmax of an empty or all −∞ set
        else:  # one more key, the sink (logit s_h, value 0): m = max(s_h, max α), finite
            m = torch.maximum(alpha.amax(-1, keepdim=True), self.sink)  # [H', R, 1]
            w = (alpha - m).exp_()  # [H', R, W]
            w /= w.sum(-1, keepdim=True) + (self.sink - m).exp()
        keys = torch.arange(k0, k1, device=edge.device)  # [W]
        return RowBlock(range(a, b), keys, None, alpha.to(self.dtype), w.to(self.dtype), edge)

    def _edge_block(self, a: int, b: int, k0: int, k1: int) -> RowBlock | None:
        """α, Attn [e, H'] of the edges into targets a..b-1 (the edge path)."""
        src, dst, ids = self.layout.edges(a, b, k0, k1)  # [e] each
        if self.targets is not None:
            keep = self.targets[dst]  # [e]
            src, dst, ids = src[keep], dst[keep], None if ids is None else ids[keep]
        if src.numel() == 0:
            return None
        H = self.num_heads
        k = self.k
        if self.num_kv_heads != H:  # head h reads kv head h // (H / H_kv), per node
            k = k.repeat_interleave(H // self.num_kv_heads, dim=1)  # [N_s, H, D]
        edges = Edges(src, dst, self.graph, _slice_attr(self.edge_attr, ids), self.positions)
        like = self.q.new_empty(0, dtype=self.wide)  # half inputs: softmax in fp32 (edge backend)
        alpha = check_scores(
            self.score, self.score.edge_scores(self.q, k, edges), len(edges), H, like
        )
        alpha = alpha[:, self.sel]  # [e, H']
        sinks = None if self.sinks is None else self.sinks[self.sel]  # [H']
        weights = neighbourhood_softmax(alpha, dst - a, b - a, sinks)  # [e, H']
        return RowBlock(range(a, b), src, dst, alpha.to(self.dtype), weights.to(self.dtype), None)


def _slice_attr(attr: EdgeInput | None, ids: Tensor | None) -> EdgeInput | None:
    if attr is None or ids is None:
        return attr
    if isinstance(attr, Tensor):
        return attr[ids]
    return {name: t[ids] for name, t in attr.items()}


def attention_rows(
    q: Tensor,
    k: Tensor,
    graph: TokenGraph,
    score: ScoreFunction,
    *,
    heads: Sequence[int] | None = None,
    edge_attr: EdgeInput | None = None,
    targets: Tensor | None = None,
    budget: int = ROW_BUDGET,
    positions: tuple[Tensor, Tensor] | None = None,
    sinks: Tensor | None = None,
) -> AttentionRows:
    """A layer's α and Attn a block of target rows at a time (eqs. 1-2 over each whole N(i)).

    .. math::
        \\mathrm{Attn}^h_{ij} = \\frac{\\exp w_h(i, j)}{\\sum_{k \\in N(i)} \\exp w_h(i, k)},
        \\quad i \\in \\text{one block of rows}

    Nothing is computed until the result is iterated; each ``RowBlock`` holds at most
    ``budget`` values (a single row over it is a block of its own). The weights equal the edge
    backend's for every edge. Grouped-query keys (k with H_kv < H heads): head h reads key
    head h // (H / H_kv), as the model.

    Args:
        q: queries [N_t, H, D].  k: keys [N_s, H_kv, D].
        graph: the token graph N(i).  score: w(i, j), the layer's score function.
        heads: the heads to compute (None: all).
        edge_attr: per-edge inputs of the score, one row per edge of ``graph``.
        targets: bool [N_t]: the targets to compute (None: all); the others get no edge.
        budget: values per block.
        positions: node positions (targets, sources) for position-aware scores (rotary,
            whose node transform runs once per node here) and biases; None: token positions.
        sinks: attention-sink logits [H] (one more key per target, value 0): the weights of
            a target's edges then sum to less than 1, as on the edge backend.

    Shapes:
        q [N_t, H, D], k [N_s, H_kv, D] -> blocks of α, Attn ([H', R, W] or [e, H']).

    Raises:
        ValueError: H_kv does not divide H, a bad head list, or a budget that is not a
            positive int.
    """
    return AttentionRows(
        q,
        k,
        graph,
        score,
        heads=heads,
        edge_attr=edge_attr,
        targets=targets,
        budget=budget,
        positions=positions,
        sinks=sinks,
    )
