"""Shared machinery of the pattern builders: sequence layout, the edge cap, ragged ranges, union.

Every sequence builder describes N(i) of each target i as one or more arithmetic ranges of
source indices ("segments"): ``first[i] + step · t`` for ``t < count[i]``. ``ragged`` turns the
segments into edge_index [2, E] with one in-place running sum, no Python loop per token; the
segments of one builder are listed by target and ascending source, so the edges come out sorted
by target, then source. Builders whose N(i) is a union of ranges with different steps concatenate
the parts and sort them once with ``union`` (``torch.unique`` on the key i·N_s + j).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..graph import TokenGraph, check_lengths
from ..validation import is_int

__all__ = [
    "MAX_EDGES",
    "Layout",
    "check_edge_cap",
    "is_int",
    "layout",
    "positive_int",
    "ragged",
    "sequence_lengths",
    "union",
]

#: Default edge cap of every builder. A builder that would create more edges raises a ValueError
#: naming the count; pass ``max_edges=<larger int>`` (or ``max_edges=None``) to allow it. At
#: 50 million edges, edge_index alone takes 800 MB (two int64 rows).
MAX_EDGES = 50_000_000


def positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """Check that ``value`` is an integer >= ``minimum`` (Python or numpy; bools rejected)
    and return it as an int."""
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


class Layout(NamedTuple):
    """Per-node view of a block-diagonal batch of sequences (all LongTensors [N]).

    ``idx`` global node index, ``pos`` position within its sequence, ``start`` global index of
    its sequence's first token, ``length`` its sequence's length.
    """

    seq: tuple[int, ...]
    batched: bool
    idx: Tensor
    pos: Tensor
    start: Tensor
    length: Tensor

    @property
    def num_nodes(self) -> int:
        return int(self.idx.numel())

    def graph(self, edge_index: Tensor, structure: str, params: dict[str, Any]) -> TokenGraph:
        """Wrap sorted edges [2, E] in a TokenGraph with this layout's lengths."""
        n = self.num_nodes
        lengths = self.seq if self.batched else None
        return TokenGraph(
            edge_index,
            n,
            n,
            structure=structure,
            lengths=lengths,
            params=params,
            validate=False,
            verified=True,
        )


def sequence_lengths(
    n: int | None, lengths: Sequence[int] | Tensor | None, name: str
) -> tuple[int, ...]:
    """Resolve ``n`` (one sequence) or ``lengths=[L_1, ..., L_B]`` into the tuple of lengths."""
    if (n is None) == (lengths is None):
        raise ValueError(f"{name} takes either n or lengths=[...], not both and not neither")
    if n is not None:
        return (positive_int(n, "n"),)
    assert lengths is not None
    return check_lengths(lengths)


def layout(
    n: int | None,
    lengths: Sequence[int] | Tensor | None,
    name: str,
    device: torch.device | str | None = None,
) -> Layout:
    """Resolve ``n`` (one sequence) or ``lengths=[L_1, ..., L_B]`` (a batch) into a Layout."""
    seq = sequence_lengths(n, lengths, name)
    lens = torch.tensor(seq, device=device)  # [B]
    starts = torch.cumsum(lens, 0) - lens  # [B]
    length = lens.repeat_interleave(lens)  # [N]
    start = starts.repeat_interleave(lens)  # [N]
    idx = torch.arange(int(lens.sum()), device=device)  # [N]
    return Layout(seq, lengths is not None, idx, idx - start, start, length)


def check_edge_cap(count: int, max_edges: int | None, name: str) -> None:
    """Raise if a builder would create more than ``max_edges`` edges (None: no cap)."""
    if max_edges is not None and count > max_edges:
        raise ValueError(
            f"{name} would create {count:,} edges, more than max_edges={max_edges:,} "
            f"(default gatattn.patterns.MAX_EDGES); pass max_edges={count} or max_edges=None "
            "to allow it"
        )


def ragged(first: Tensor, count: Tensor, step: int = 1, target: Tensor | None = None) -> Tensor:
    """Edges of arithmetic source ranges, vectorised: segment s gives the edges
    ``(first[s] + step · t) → target[s]`` for t = 0 .. count[s] − 1.

    Args:
        first: first source index of each segment, LongTensor [S].
        count: number of sources of each segment, LongTensor [S] (>= 0).
        step: source stride (int).
        target: target node of each segment [S]; default ``arange(S)`` (segment s is target s).

    Returns:
        edge_index [2, E] with E = Σ count, in segment order.

    Each row is written as a running sum of its increments (``step`` inside a segment, a jump
    at each segment start), in place: no E-sized temporary besides the result, which matters
    at 10⁸ edges (hand-written because ``repeat_interleave`` + gathers allocate 3 more).
    """
    device = first.device
    total = int(count.sum())
    ei = torch.empty(2, total, dtype=torch.long, device=device)  # [2, E]
    if total == 0:
        return ei
    live = count > 0  # [S] segments that own edges
    first, count = first[live], count[live]  # [S']
    dst = target[live] if target is not None else torch.arange(live.numel(), device=device)[live]
    starts = torch.cumsum(count, 0) - count  # [S'] first edge of each segment
    last_src = first + step * (count - 1)  # [S'] source of each segment's last edge
    src_jump = first.clone()  # [S'] increment at each segment start
    src_jump[1:] -= last_src[:-1]
    dst_jump = dst.clone()  # [S']
    dst_jump[1:] -= dst[:-1]
    ei[0].fill_(step)
    ei[0][starts] = src_jump
    ei[1].zero_()
    ei[1][starts] = dst_jump
    return ei.cumsum_(1)  # [2, E] running sums: first + step · t, and target


def union(parts: Sequence[Tensor], num_src: int) -> Tensor:
    """Union of edge sets [2, E_p]: concatenated, duplicates removed, sorted by target then source.

    Uses ``torch.unique`` on the key ``i · N_s + j`` (sorted, so target-major order).
    """
    src, dst = torch.cat(list(parts), dim=1)  # [E_total] each
    keys = torch.unique(dst * num_src + src)  # [E] sorted
    return torch.stack([keys % num_src, keys // num_src])
