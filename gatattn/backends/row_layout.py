"""Which keys each target row reads: the layout that ``gatattn.backends.rows`` computes a block
of target (query) rows at a time.

Every row i of the token graph reads its in-neighbourhood N(i). The layouts, chosen per graph:

``intervals``  a trusted complete, causal or bipartite graph (``trusted_structure``): N(i) is
               the run of keys [lo_i, hi_i) of i's sequence (minus i itself for a complete
               graph without self-loops); no edge_index is ever made.
``mask``       a graph built from a dense mask (``from_mask``, ``from_padding_mask``):
               N(b·L_q + i) = { b·L_k + j : mask[b, i, j] }, read from the mask.
``scatter``    any other graph whose edges into each target have strictly ascending sources
               (no duplicate edges; every builder's graph): its CSR rows, placed into the
               block's [rows, keys] grid by their (target, source).
``csr``        everything else (duplicate edges, rows in another order): the CSR rows as a list.

In the first three, a row's edges in key order are its edges in the graph's own order, so the
grid of a block (columns = keys k0..k1-1) holds them in that order; ``lo``/``hi`` bound the keys
of each row: lo_i = min N(i), hi_i = max N(i) + 1 (lo_i = hi_i for a row without edges).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from ..graph import TokenGraph

__all__ = ["RowLayout", "row_blocks"]


class RowLayout:
    """The keys of each target row of ``graph`` (the module docstring's layouts).

    Args:
        graph: the token graph.
        by_id: per-edge inputs are read by edge id, so the rows must come from edge_index
            (``scatter`` or ``csr``).
        grid: a grid layout is wanted (``intervals``, ``mask`` or ``scatter``) when possible.

    Attributes:
        kind: ``"intervals"``, ``"mask"``, ``"scatter"`` or ``"csr"``.
        lo, hi: the key span [lo_i, hi_i) of each row, LongTensors [N_t] (``csr``: 0 and the
            in-degree, so a block's span is its widest row).
    """

    def __init__(self, graph: TokenGraph, *, by_id: bool, grid: bool) -> None:
        self.graph = graph
        dev = graph.device
        tag = None if by_id else graph.trusted_structure()
        if tag in ("complete", "causal", "bipartite"):
            self.kind = "intervals"
            q_len = torch.tensor(graph.sequence_lengths("dst"), device=dev)  # [B]
            k_len = torch.tensor(graph.sequence_lengths("src"), device=dev)  # [B]
            k_start = torch.cumsum(k_len, 0) - k_len  # [B]
            self.lo = k_start.repeat_interleave(q_len)  # [N_t] first key of i's sequence
            self.hi = self.lo + k_len.repeat_interleave(q_len)  # [N_t]
            if tag == "causal":
                self.hi = torch.minimum(self.hi, torch.arange(graph.num_dst, device=dev) + 1)
            self.no_loops = tag == "complete" and not graph.params.get("self_loops", True)
            return
        mask = None if by_id else graph.dense_mask(compact=True)
        if mask is not None:
            self.kind = "mask"
            self.mask: Tensor = mask  # [B, L_q | 1, L_k]
            B, Lk = mask.size(0), mask.size(2)
            self.Lq, self.Lk = graph.num_dst // B, Lk
            first = mask.byte().argmax(-1)  # [B, L_q | 1] (0 for an empty row)
            last = Lk - 1 - mask.flip(-1).byte().argmax(-1)  # [B, L_q | 1]
            live = mask.any(-1)  # [B, L_q | 1]
            base = torch.arange(B, device=dev)[:, None] * Lk  # [B, 1]
            lo = base + torch.where(live, first, 0)  # [B, L_q | 1]
            hi = torch.where(live, base + last + 1, lo)  # [B, L_q | 1]
            self.lo, self.hi = (x.expand(B, self.Lq).reshape(-1) for x in (lo, hi))  # [N_t]
            return
        self.rowptr, self.perm = graph.csr()  # [N_t + 1], [E]
        self.src = graph.edge_index[0].index_select(0, self.perm)  # [E] by target
        degree = self.rowptr.diff()  # [N_t]
        if grid and self.src.numel() and _ascending_rows(graph, self.src, self.rowptr):
            self.kind = "scatter"
            live = degree > 0  # [N_t]
            end = self.src.numel() - 1
            first = self.src[self.rowptr[:-1].clamp(max=end)]  # [N_t]
            last = self.src[(self.rowptr[1:] - 1).clamp(0, end)]  # [N_t]
            self.lo = torch.where(live, first, 0)  # [N_t]
            self.hi = torch.where(live, last + 1, self.lo)  # [N_t]
        else:
            self.kind = "csr"
            self.lo, self.hi = torch.zeros_like(degree), degree  # [N_t] each

    @property
    def is_grid(self) -> bool:
        """The rows can be laid out as a [rows, keys] grid in the graph's edge order."""
        return self.kind != "csr"

    def grid(self, a: int, b: int, k0: int, k1: int) -> tuple[Tensor, int, int]:
        """Which cells of the block (targets a..b-1) × (keys k0..k1-1) are edges j → i, and
        the columns [c0, c1) that are edges in every row (so only the others need a mask).

        Shapes:
            -> (bool [b - a, k1 - k0], c0, c1).
        """
        dev = self.graph.device
        R, W = b - a, k1 - k0
        t = torch.arange(a, b, device=dev)[:, None]  # [R, 1]
        if self.kind == "intervals" and not self.no_loops:
            # every row reads the keys max(lo)..min(hi)-1: only the columns left and right
            # of them are compared (for one causal sequence, the last R columns)
            lo, hi = self.lo[a:b, None] - k0, self.hi[a:b, None] - k0  # [R, 1] each
            c0, c1 = int(lo.max()), max(int(hi.min()), int(lo.max()))
            edge = torch.ones(R, W, dtype=torch.bool, device=dev)  # [R, W]
            left = torch.arange(c0, device=dev)  # [c0]
            right = torch.arange(c1, W, device=dev)  # [W - c1]
            edge[:, :c0] = (left >= lo) & (left < hi)
            edge[:, c1:] = (right >= lo) & (right < hi)
            return edge, c0, c1
        cols = torch.arange(k0, k1, device=dev)[None, :]  # [1, W]
        if self.kind == "intervals":  # complete graph without self-loops
            edge = (cols >= self.lo[a:b, None]) & (cols < self.hi[a:b, None])  # [R, W]
            return edge & (cols != t), 0, 0
        if self.kind == "mask":
            seq = t // self.Lq  # [R, 1]
            i = t % self.Lq if self.mask.size(1) > 1 else torch.zeros_like(t)  # [R, 1]
            j = cols - seq * self.Lk  # [R, W] key position in row i's sequence
            inside = (j >= 0) & (j < self.Lk)  # [R, W]
            return self.mask[seq, i, j.clamp(0, self.Lk - 1)] & inside, 0, 0
        src, dst, _ = self.edges(a, b, k0, k1)  # [e] each
        edge = torch.zeros(R, W, dtype=torch.bool, device=dev)  # [R, W]
        edge[dst - a, src - k0] = True
        return edge, 0, 0

    def edges(self, a: int, b: int, k0: int, k1: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """The edges into targets a..b-1 (whose keys lie in k0..k1-1) in the graph's order:
        (src [e], dst [e], edge ids [e] or None when the graph's edges are not read)."""
        if self.kind in ("intervals", "mask"):
            r, c = self.grid(a, b, k0, k1)[0].nonzero(as_tuple=True)  # [e] by row, then key
            return c + k0, r + a, None
        lo, hi = int(self.rowptr[a]), int(self.rowptr[b])
        ids = self.perm[lo:hi]  # [e]
        return self.src[lo:hi], self.graph.edge_index[1].index_select(0, ids), ids


def _ascending_rows(graph: TokenGraph, src: Tensor, rowptr: Tensor) -> bool:
    """The sources of each target's edges, in the graph's order, strictly increase (so there
    are no duplicate edges, and key order is edge order). Cached per graph, O(E)."""

    def check() -> bool:
        if src.numel() < 2:
            return True
        up = src[1:] > src[:-1]  # [E - 1]
        starts = rowptr[1:-1]  # [N_t - 1] first edge of targets 1.., where the order restarts
        starts = starts[(starts > 0) & (starts < src.numel())]
        up[starts - 1] = True
        return bool(up.all())

    return bool(graph.derived("rows_ascending", check))


def row_blocks(
    lo: Tensor, hi: Tensor, width: int, budget: int
) -> Iterator[tuple[int, int, int, int]]:
    """Runs of consecutive rows ``(a, b, k0, k1)`` whose block [b - a, k1 - k0, width] holds at
    most ``budget`` values ([k0, k1) covers the key spans [lo_i, hi_i) of its rows; a single
    row over the budget is a run of its own; runs without any key are not returned):

    .. math:: (b - a)(k_1 - k_0) \\cdot \\mathrm{width} \\le \\mathrm{budget}, \\quad
        k_0 = \\min_{a \\le i < b} lo_i, \\; k_1 = \\max_{a \\le i < b} hi_i

    Shapes:
        lo, hi [N_t] -> (first row, end row, first key, end key) per block.
    """
    los, his = lo.tolist(), hi.tolist()
    a, k0, k1 = 0, 0, 0
    empty = True
    for t, (lt, ht) in enumerate(zip(los, his, strict=True)):
        if lt >= ht:
            continue  # a row without keys widens nothing
        n0, n1 = (lt, ht) if empty else (min(k0, lt), max(k1, ht))
        if t > a and (t - a + 1) * (n1 - n0) * width > budget:
            if not empty:
                yield a, t, k0, k1
            a, n0, n1 = t, lt, ht
        k0, k1, empty = n0, n1, False
    if not empty:
        yield a, len(los), k0, k1
