"""A banded graph over one long sequence, described by its parameters instead of its edges.

A rank that holds the targets [a, b) of a banded graph needs the sources

    [a − h_l(a), b + h_r(b)) ∩ [0, L)

only: a halo of h tokens on each side, not the whole sequence. ``BandedGraph`` knows its halo for
any slice and builds the slice's own graph with the ordinary builders (``ga.window_graph``,
``ga.bigbird_graph``). Three kinds:

    window          N(i) = { j : |i − j| ≤ w·d, d | (i − j) }                h_l = h_r = w·d
    causal_window   N(i) = { j : 0 ≤ i − j ≤ w·d, d | (i − j) }              h_l = w·d, h_r = 0
    block_banded    N(i) = { j : |⌊i/s⌋ − ⌊j/s⌋| ≤ k }, k = (window_blocks − 1)/2
                    (BigBird's window blocks alone: no global and no random blocks; the halo
                    reaches out to the k whole blocks beyond the blocks of a and b − 1)

Every kind is translation invariant (blocks: by multiples of s), so the graph of the slice
[a − h_l, b + h_r) restricted to the targets [a, b) is the global graph restricted to them, and
positions inside a slice differ exactly as they do in the whole sequence (relative-position
scores such as ALiBi and T5 buckets see the same j − i).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from ..graph import TokenGraph
from ..patterns import bigbird_graph, window_graph

__all__ = ["KINDS", "BandedGraph"]

#: The graph kinds that ``BandedGraph`` (and so a ``ShardedSequence``) describes.
KINDS = ("window", "causal_window", "block_banded")


def _int(value: object, name: str, minimum: int) -> int:
    """``value`` as an int: Python and numpy integers count (the house rule), bools do not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class BandedGraph:
    """A window, causal-window or block-banded graph over L tokens, given by its parameters.

    .. math::
        \\text{window: } N(i) = \\{ j : |i - j| \\le w d,\\ d \\mid i - j \\} \\qquad
        \\text{causal\\_window: } N(i) = \\{ j : 0 \\le i - j \\le w d,\\ d \\mid i - j \\}

        \\text{block\\_banded: } N(i) = \\{ j : |\\lfloor i/s \\rfloor - \\lfloor j/s \\rfloor|
        \\le (W - 1)/2 \\}

    Self-loops are included, as in the builders. For example ``BandedGraph("window", 65536,
    window=128)``, ``BandedGraph("causal_window", L, window=w)`` or ``BandedGraph("block_banded",
    L, block_size=64, window_blocks=3)``. The fields are checked on construction.

    Attributes:
        kind: one of ``"window"``, ``"causal_window"``, ``"block_banded"``.
        length: L, the tokens of the sequence.
        window: w, neighbours on each side (window kinds; 0 for block_banded).
        dilation: d, the gap between attended tokens (window kinds; 1 for block_banded).
        block_size: s, the block side (block_banded; 0 otherwise).
        window_blocks: W, odd, the blocks of the band (block_banded; 0 otherwise).

    Raises:
        ValueError: an unknown kind, a parameter out of range (length < 1, window < 0,
            dilation < 1, block_size < 1, an even window_blocks), or a parameter of the other
            kind (block_size for a window, window for a block band).

    Shapes:
        ``graph()`` edge_index [2, E] over L tokens; ``local_graph(start, stop)`` over the
        n = stop − start + h_l + h_r tokens of the slice with its halo.
    """

    kind: str
    length: int
    window: int = 0
    dilation: int = 1
    block_size: int = 0
    window_blocks: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {self.kind!r}")
        for field, minimum in (("length", 1), ("window", 0), ("dilation", 1),
                               ("block_size", 0), ("window_blocks", 0)):  # fmt: skip
            object.__setattr__(self, field, _int(getattr(self, field), field, minimum))
        if self.kind == "block_banded":
            _int(self.block_size, "block_size", 1)
            if _int(self.window_blocks, "window_blocks", 1) % 2 == 0:
                raise ValueError(f"window_blocks must be odd, got {self.window_blocks}")
            if self.window or self.dilation != 1:
                raise ValueError(
                    "a block_banded graph takes block_size and window_blocks, not window "
                    f"({self.window}) or dilation ({self.dilation})"
                )
        else:
            _int(self.window, "window", 0)
            _int(self.dilation, "dilation", 1)
            if self.block_size or self.window_blocks:
                raise ValueError(
                    f"a {self.kind} graph takes window and dilation, not block_size "
                    f"({self.block_size}) or window_blocks ({self.window_blocks})"
                )

    # ------------------------------------------------------------------ halos
    def halo(self, start: int, stop: int) -> tuple[int, int]:
        """(h_l, h_r): the source tokens left of ``start`` and right of ``stop`` that the
        targets [start, stop) attend to, clipped to the sequence.

        Raises:
            ValueError: not 0 <= start < stop <= L.
        """
        L = self.length
        ints = all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (start, stop)
        )
        if not (ints and 0 <= start < stop <= L):
            raise ValueError(f"need 0 <= start < stop <= length={L}, got [{start}, {stop})")
        start, stop = int(start), int(stop)
        if self.kind == "block_banded":
            s, k = self.block_size, self.window_blocks // 2
            first = max(0, (start // s - k) * s)  # first source: k blocks before start's block
            end = min(L, (-(-stop // s) + k) * s)  # one past the last source
            return start - first, end - stop
        reach = self.window * self.dilation
        left = min(reach, start)
        right = 0 if self.kind == "causal_window" else min(reach, L - stop)
        return left, right

    # ------------------------------------------------------------------ graphs
    def _build(self, n: int, device: object) -> TokenGraph:
        if self.kind == "block_banded":
            return bigbird_graph(
                n,
                block_size=self.block_size,
                window_blocks=self.window_blocks,
                global_blocks=0,
                random_blocks=0,
                seed=0,
                device=device,  # type: ignore[arg-type]
                max_edges=None,
            )
        causal = self.kind == "causal_window"
        return window_graph(
            n,
            self.window,
            causal=causal,
            dilation=self.dilation,
            device=device,  # type: ignore[arg-type]
            max_edges=None,
        )

    def graph(self, device: object = None) -> TokenGraph:
        """The whole graph over L tokens, built by ``ga.window_graph`` / ``ga.bigbird_graph``
        (what one process attends over).

        Shapes:
            edge_index [2, E], E ≤ L (2w + 1) for a window.
        """
        return self._build(self.length, device)

    def local_graph(self, start: int, stop: int, device: object = None) -> TokenGraph:
        """The graph over the slice [start − h_l, stop + h_r): the same builder on its
        n = stop − start + h_l + h_r tokens (a block_banded slice starts on a block boundary).
        Its targets h_l .. h_l + stop − start − 1 have exactly the global neighbourhoods of
        [start, stop), shifted by start − h_l; the halo targets' rows are not used.

        Shapes:
            edge_index [2, E_local] over n tokens.
        """
        left, right = self.halo(start, stop)
        return self._build(stop - start + left + right, device)

    def describe(self) -> str:
        """A short text such as ``"window(L=65536, w=128, d=1)"`` for messages and tables."""
        if self.kind == "block_banded":
            return f"block_banded(L={self.length}, s={self.block_size}, W={self.window_blocks})"
        return f"{self.kind}(L={self.length}, w={self.window}, d={self.dilation})"
