"""Edges grouped by target (or source), registered for a graph's own index tensors.

The weighted sum of eq. 3 over the edges of each target, per head,

    out_{i,h} = Σ_{e: dst(e)=i} w_{e,h} · v_{src(e),h}                  [N, H, D]

is one ``torch.nn.functional.embedding_bag`` call (mode "sum" with per-sample weights) when the
E·H (edge, head) pairs are listed bag by bag, bag (i, h) holding the pairs of the edges into i
for head h: the table is v viewed as [N·H, D] and pair (e, h) reads its row src(e)·H + h. One
fused gather-multiply-sum instead of a gathered [E, H, D] message, a broadcast multiply and a
scatter (about 3x faster on CPU for molecule-size graphs, benchmarks P6).

Listing the pairs needs a sort, which depends only on the graph. So the edge backend registers
the graph's index tensors once (``register``), and ``edge_aggregate`` looks them up
(``bags``): a hit needs the very tensor objects that were registered (held weakly, so an
entry leaves with them), at the version they had then (an in-place write to the edge_index
they view misses, as the graph's own cache does). Anything else (another tensor, a write,
torch.compile) takes the gather path, which needs no grouping.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["MAX_GROUPED_PAIRS", "Bags", "bags", "register"]

#: Graphs with more (edge, head) pairs than this are not grouped: the cached lists take
#: 2·E·H int32 per direction, and the peak of a call about 50 bytes per pair more than the
#: CSR path's (measured: +211 MiB at E·H = 2**22, benchmarks P4), which needs none. 2**19
#: pairs (E = 65,536 at H = 8) keeps P4's graphs (E·H >= 2**20) on the CSR path and adds at
#: most about 26 MiB, while the small graphs whose per-call costs the grouping cuts (P6:
#: E·H = 55,808) stay grouped.
MAX_GROUPED_PAIRS = 1 << 19


class Bags(NamedTuple):
    """The (edge, head) pairs listed bag by bag for H heads (bag b = i·H + h).

    Attributes:
        order: position of each listed pair in ``w.view(-1)`` (w [E, H]), int32 [E·H].
        rows: the table row each listed pair reads, src(e)·H + h, int32 [E·H].
        offsets: where each of the M·H bags starts in the lists, int32 [M·H].
    """

    order: Tensor
    rows: Tensor
    offsets: Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self)


class _Entry:
    """One registered pair (index_out, index_in): weak references, versions, bags per H."""

    def __init__(self, out: Tensor, inp: Tensor, size: int, drop: Callable[[Any], None]) -> None:
        self.out = weakref.ref(out, drop)
        self.inp = weakref.ref(inp, drop)
        self.versions = (out._version, inp._version)
        self.size = size
        self.per_heads: dict[tuple[int, int], Bags] = {}  # by (H, row stride)

    def matches(self, out: Tensor, inp: Tensor, size: int) -> bool:
        return (
            self.out() is out
            and self.inp() is inp
            and self.size == size
            and self.versions == (out._version, inp._version)
        )


_REGISTRY: dict[tuple[int, int], _Entry] = {}


def register(src: Tensor, dst: Tensor, num_src: int, num_dst: int) -> None:
    """Declare ``src``, ``dst`` (LongTensors [E]) the rows of a validated graph's edge_index,
    so that sums into its targets (``bags(dst, src, ...)``) and into its sources
    (``bags(src, dst, ...)``) may be grouped. The pair stays registered while both tensors
    live and keep their version. Graphs of more than MAX_GROUPED_PAIRS pairs per head are
    left out when looked up.
    """
    for out, inp, size in ((dst, src, num_dst), (src, dst, num_src)):
        key = (id(out), id(inp))

        def drop(_: object, key: tuple[int, int] = key) -> None:
            entry = _REGISTRY.get(key)
            if entry is not None and (entry.out() is None or entry.inp() is None):
                _REGISTRY.pop(key, None)

        _REGISTRY[key] = _Entry(out, inp, size, drop)


def bags(
    index_out: Tensor, index_in: Tensor, size: int, heads: int, row_stride: int | None = None
) -> Bags | None:
    """The pairs of the registered (index_out, index_in) listed by (index_out, head) bag, or
    None when the pair is not registered as it is now, or is too large (the caller gathers).

    Args:
        index_out: the bag (output row) of each edge, LongTensor [E], in [0, size).
        index_in: the table node of each edge, LongTensor [E].
        size: M, the number of output rows.
        heads: H.
        row_stride: rows of the table between two nodes (default H: a contiguous [N, H, D]
            table; a head-split view of a packed projection has more), so that pair (e, h)
            reads row index_in(e)·row_stride + h.
    """
    if torch.compiler.is_compiling():
        return None
    entry = _REGISTRY.get((id(index_out), id(index_in)))
    if entry is None or not entry.matches(index_out, index_in, size):
        return None
    if index_out.numel() * heads > MAX_GROUPED_PAIRS:
        return None
    stride = heads if row_stride is None else row_stride
    found = entry.per_heads.get((heads, stride))
    if found is None:
        base = entry.per_heads.get((heads, heads))
        if base is None:
            base = entry.per_heads[(heads, heads)] = _list(index_out, index_in, size, heads)
        if stride != heads:  # node j's rows start at j·stride instead of j·H
            rows = base.rows.long()
            rows = (rows // heads * stride + rows % heads).to(base.rows.dtype)  # [E·H]
            base = Bags(base.order, rows, base.offsets)
        found = entry.per_heads[(heads, stride)] = base
    return found


def _list(index_out: Tensor, index_in: Tensor, size: int, heads: int) -> Bags:
    """List the E·H pairs bag by bag, bag (i, h) holding the edges into i in edge order.

    One stable sort of the E edges by bag row; the pair of sorted edge p (into row i, which
    has c_i edges from position s_i) and head h goes to position s_i·H + h·c_i + (p - s_i).
    """
    E = index_out.numel()
    perm = torch.argsort(index_out, stable=True)  # [E] edges by output row
    counts = torch.bincount(index_out, minlength=size)  # [M] c_i
    starts = torch.cumsum(counts, 0) - counts  # [M] s_i
    row = index_out.index_select(0, perm)  # [E] row of each sorted edge
    s, c = starts.index_select(0, row), counts.index_select(0, row)  # [E], [E]
    h = torch.arange(heads, device=index_out.device).unsqueeze(1)  # [H, 1]
    p = torch.arange(E, device=index_out.device)  # [E]
    at = (s * (heads - 1) + p + h * c).view(-1)  # [H·E] (head-major: E is the long axis)
    order = torch.empty(E * heads, dtype=torch.long, device=index_out.device)
    order.scatter_(0, at, (perm * heads + h).view(-1))  # index into w.view(-1)
    rows = torch.empty_like(order)
    rows.scatter_(0, at, (index_in.index_select(0, perm) * heads + h).view(-1))
    h = h.view(-1)  # [H]
    offsets = (starts.unsqueeze(1) * heads + h * counts.unsqueeze(1)).view(-1)  # [M·H]
    i32 = torch.int32  # E·H <= MAX_GROUPED_PAIRS < 2**31 (and rows: checked by the caller)
    return Bags(order.to(i32), rows.to(i32), offsets.to(i32))
