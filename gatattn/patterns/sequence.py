"""Sequence patterns: causal, sliding/dilated window, global tokens, blocks, Sparse Transformer
strided/fixed, and Star-Transformer.

Notation in the set formulas: p_i is the position of token i within its sequence, L its
sequence's length, and every N(i) is restricted to the tokens of i's sequence (a batch given by
``lengths=[...]`` is block-diagonal).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..graph import TokenGraph
from ._common import (
    MAX_EDGES,
    Layout,
    check_edge_cap,
    layout,
    positive_int,
    ragged,
    sequence_lengths,
    union,
)

__all__ = [
    "block_graph",
    "causal_graph",
    "fixed_graph",
    "global_graph",
    "star_graph",
    "strided_graph",
    "window_graph",
]

Lengths = Sequence[int] | Tensor | None
Device = torch.device | str | None


def _window_segments(
    lay: Layout, window: int, dilation: int, causal: bool
) -> tuple[Tensor, Tensor]:
    """Segments of {j : |p_i − p_j| ≤ window·dilation, dilation | (p_i − p_j)} (j ≤ i if causal).

    j = i − dilation·t for t from t_max = min(window, ⌊p_i / d⌋) down to
    −min(window, ⌊(L − 1 − p_i) / d⌋) (0 if causal): ascending sources, step d.
    """
    up = (lay.pos // dilation).clamp(max=window)  # [N] t_max
    if causal:
        down = torch.zeros_like(up)  # [N]
    else:
        down = ((lay.length - 1 - lay.pos) // dilation).clamp(max=window)  # [N] −t_min
    return lay.idx - dilation * up, up + down + 1  # first [N], count [N]


def causal_graph(
    n: int | None = None,
    *,
    lengths: Lengths = None,
    device: Device = None,
    max_edges: int | None = MAX_EDGES,
) -> TokenGraph:
    """Causal (autoregressive) attention: each token attends to itself and the tokens before it.

    .. math:: N(i) = \\{ j : p_j \\le p_i \\} \\quad \\text{(self-loops included)}

    Source: the decoder mask of Vaswani et al. 2017, "Attention Is All You Need".
    Tag ``"causal"``, params ``{}``. Equal to SDPA with ``is_causal=True`` for one sequence.

    Args:
        n: number of tokens (or ``lengths=[L_1, ...]`` for a block-diagonal batch).
        device: where edge_index lives.  max_edges: edge cap (None: no cap).

    Shapes:
        edge_index [2, E], E = Σ_b L_b (L_b + 1) / 2, sorted by target then source.
    """
    seq = sequence_lengths(n, lengths, "causal_graph")
    num_edges = sum(m * (m + 1) // 2 for m in seq)
    check_edge_cap(num_edges, max_edges, "causal_graph")

    def build() -> Tensor:  # deferred: the dense backend never reads these edges
        lay = layout(n, lengths, "causal_graph", device)
        return ragged(lay.start, lay.pos + 1)  # in-degree p_i + 1

    return TokenGraph._deferred(
        build,
        sum(seq),
        sum(seq),
        num_edges,
        device=device,
        structure="causal",
        lengths=seq if lengths is not None else None,
        params={},
    )


def window_graph(
    n: int | None = None,
    window: int | None = None,
    *,
    causal: bool = False,
    dilation: int = 1,
    lengths: Lengths = None,
    device: Device = None,
    max_edges: int | None = MAX_EDGES,
) -> TokenGraph:
    """Sliding-window attention, optionally dilated (Beltagy et al. 2020, Longformer, Sec. 3.1).

    .. math::
        N(i) = \\{ j : |p_i - p_j| \\le w \\cdot d,\\; d \\mid (p_i - p_j) \\}
        \\;\\cap\\; \\{ j : p_j \\le p_i \\} \\text{ if causal}

    Self-loops included (offset 0). In-degree min(p_i, w) + min(L − 1 − p_i, w) + 1 for d = 1,
    i.e. 2w + 1 clipped at the sequence ends. Tag ``"window"``, params
    ``{"window": w, "dilation": d, "causal": causal}``.

    Args:
        n: number of tokens (or ``lengths=[...]``).  window: w >= 0 neighbours on each side.
        causal: keep only j <= i.  dilation: d >= 1, the gap between attended tokens.

    Shapes:
        edge_index [2, E] with E <= N (2w + 1), sorted by target then source.
    """
    if window is None:
        raise ValueError("window_graph needs window=<int >= 0>, the neighbours on each side")
    window = positive_int(window, "window", minimum=0)
    dilation = positive_int(dilation, "dilation")
    lay = layout(n, lengths, "window_graph", device)
    first, count = _window_segments(lay, window, dilation, causal)
    check_edge_cap(int(count.sum()), max_edges, "window_graph")
    params = {"window": window, "dilation": dilation, "causal": bool(causal)}
    return lay.graph(ragged(first, count, dilation), "window", params)


def block_graph(
    n: int | None = None,
    block_size: int | None = None,
    *,
    lengths: Lengths = None,
    device: Device = None,
    max_edges: int | None = MAX_EDGES,
) -> TokenGraph:
    """Block-local attention: tokens attend within fixed, non-overlapping blocks.

    .. math:: N(i) = \\{ j : \\lfloor p_j / b \\rfloor = \\lfloor p_i / b \\rfloor \\}

    Self-loops included; the last block of a sequence may be shorter. Source: the local
    attention of Parmar et al. 2018 (Image Transformer) and Qiu et al. 2020 (BlockBERT).
    Tag ``"block"``, params ``{"block_size": b}``.

    Shapes:
        edge_index [2, E], E <= N b, sorted by target then source.
    """
    if block_size is None:
        raise ValueError("block_graph needs block_size=<int >= 1>")
    b = positive_int(block_size, "block_size")
    lay = layout(n, lengths, "block_graph", device)
    bpos = (lay.pos // b) * b  # [N] position of the block's first token
    count = torch.clamp(lay.length - bpos, max=b)  # [N]
    check_edge_cap(int(count.sum()), max_edges, "block_graph")
    return lay.graph(ragged(lay.start + bpos, count), "block", {"block_size": b})


def global_graph(
    n: int | None = None,
    global_tokens: Sequence[int] | Tensor | None = None,
    *,
    window: int | None = None,
    lengths: Lengths = None,
    device: Device = None,
    max_edges: int | None = MAX_EDGES,
) -> TokenGraph:
    """Global tokens (Longformer's global attention, Beltagy et al. 2020, Sec. 3.1).

    With G the set of global positions (the same in every sequence, e.g. [CLS] at 0):

    .. math::
        N(i) = \\{ j : p_j \\in G \\} \\;\\cup\\; \\{ j : p_i \\in G \\}
        \\;\\cup\\; \\{ j : |p_i - p_j| \\le w \\} \\text{ if window is given}

    Global tokens attend to all and are attended by all. Self-loops: for global tokens, and for
    every token when ``window`` is given (window=0 adds only self-loops); with ``window=None`` a
    non-global token attends to the global tokens only. Tag ``"global"``, params
    ``{"global_tokens": tuple(sorted(G)), "window": w or None}``.

    Shapes:
        edge_index [2, E], sorted by target then source, no duplicate edges.
    """
    if global_tokens is None:
        raise ValueError("global_graph needs global_tokens=[positions], e.g. [0] for a [CLS] token")
    raw = global_tokens.tolist() if isinstance(global_tokens, Tensor) else list(global_tokens)
    if not raw:
        raise ValueError("global_tokens must name at least one position, got []")
    lay = layout(n, lengths, "global_graph", device)
    shortest = min(lay.seq)
    for g in raw:
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < shortest:
            raise ValueError(
                f"global token {g!r} is out of range for a sequence of length {shortest} "
                f"(valid positions 0..{shortest - 1})"
            )
    glob = torch.tensor(sorted(set(raw)), device=lay.idx.device)  # [G]
    is_global = torch.isin(lay.pos, glob)  # [N]
    segments: list[tuple[Tensor, Tensor, int]] = [
        (lay.start[is_global], lay.length[is_global], 1),  # global i: every j of its sequence
    ]
    if window is not None:
        w = positive_int(window, "window", minimum=0)
        first, count = _window_segments(lay, w, 1, False)
        segments.append((first, count, 1))
    total = lay.num_nodes * glob.numel() + sum(int(c.sum()) for _, c, _ in segments)
    check_edge_cap(total, max_edges, "global_graph")
    to_global = torch.stack(
        [
            (lay.start[:, None] + glob[None, :]).flatten(),  # [N G] every i attends to G
            lay.idx.repeat_interleave(glob.numel()),  # [N G]
        ]
    )
    parts = [to_global, ragged(*segments[0][:2], target=lay.idx[is_global])]
    if window is not None:
        parts.append(ragged(*segments[1][:2]))
    params = {"global_tokens": tuple(glob.tolist()), "window": window}
    return lay.graph(union(parts, lay.num_nodes), "global", params)


def strided_graph(
    n: int | None = None,
    stride: int | None = None,
    *,
    causal: bool = True,
    lengths: Lengths = None,
    device: Device = None,
    max_edges: int | None = MAX_EDGES,
) -> TokenGraph:
    """The Sparse Transformer's strided pattern (Child et al. 2019, Sec. 4.2, Fig. 3b).

    The union of its two factorised heads A(1) (the previous l tokens) and A(2) (every l-th):

    .. math::
        N(i) = \\{ j : |p_i - p_j| < l \\} \\;\\cup\\; \\{ j : l \\mid (p_i - p_j) \\}
        \\;\\;\\cap\\; \\{ j : p_j \\le p_i \\} \\text{ if causal (the paper's form)}

    Self-loops included. ``causal=False`` gives the bidirectional form. Tag ``"strided"``,
    params ``{"stride": l, "causal": causal}``.

    Shapes:
        edge_index [2, E], sorted by target then source, no duplicate edges.
    """
    if stride is None:
        raise ValueError("strided_graph needs stride=<int >= 1>")
    s = positive_int(stride, "stride")
    lay = layout(n, lengths, "strided_graph", device)
    local = _window_segments(lay, s - 1, 1, causal)  # |p_i − p_j| < l
    far = _window_segments(lay, max(lay.seq), s, causal)  # l | (p_i − p_j)
    check_edge_cap(int(local[1].sum() + far[1].sum()), max_edges, "strided_graph")
    edges = union([ragged(*local), ragged(*far, step=s)], lay.num_nodes)
    return lay.graph(edges, "strided", {"stride": s, "causal": bool(causal)})


def fixed_graph(
    n: int | None = None,
    stride: int | None = None,
    summary: int = 1,
    *,
    causal: bool = True,
    lengths: Lengths = None,
    device: Device = None,
    max_edges: int | None = MAX_EDGES,
) -> TokenGraph:
    """The Sparse Transformer's fixed pattern (Child et al. 2019, Sec. 4.2, Fig. 3c).

    The union of A(1) (the own block of l tokens) and A(2) (the last c "summary" tokens of
    every block):

    .. math::
        N(i) = \\{ j : \\lfloor p_j / l \\rfloor = \\lfloor p_i / l \\rfloor \\} \\;\\cup\\;
        \\{ j : p_j \\bmod l \\ge l - c \\}
        \\;\\;\\cap\\; \\{ j : p_j \\le p_i \\} \\text{ if causal (the paper's form)}

    Self-loops included. Tag ``"fixed"``, params ``{"stride": l, "summary": c, "causal": causal}``.

    Args:
        stride: l >= 1, the block length.  summary: c in 1..l, summary tokens per block.

    Shapes:
        edge_index [2, E], sorted by target then source, no duplicate edges.
    """
    if stride is None:
        raise ValueError("fixed_graph needs stride=<int >= 1>")
    s = positive_int(stride, "stride")
    c = positive_int(summary, "summary")
    if c > s:
        raise ValueError(f"summary={c} must be <= stride={s} (summary tokens per block)")
    lay = layout(n, lengths, "fixed_graph", device)
    bpos = (lay.pos // s) * s  # [N] position of the block's first token
    last = lay.pos if causal else (lay.length - 1)  # [N] largest allowed source position
    segments = [(lay.start + bpos, torch.clamp(last - bpos + 1, max=s))]  # own block (A1)
    for off in range(s - c, s):  # one segment per summary offset (a loop per offset, not per token)
        count = torch.where(last >= off, (last - off) // s + 1, 0)  # [N] summary tokens p ≡ off
        segments.append((lay.start + off, count))
    check_edge_cap(sum(int(cnt.sum()) for _, cnt in segments), max_edges, "fixed_graph")
    parts = [ragged(first, cnt, step=1 if k == 0 else s) for k, (first, cnt) in enumerate(segments)]
    params = {"stride": s, "summary": c, "causal": bool(causal)}
    return lay.graph(union(parts, lay.num_nodes), "fixed", params)


def star_graph(
    n: int | None = None,
    *,
    lengths: Lengths = None,
    device: Device = None,
    max_edges: int | None = MAX_EDGES,
) -> TokenGraph:
    """Star-Transformer (Guo et al. 2019): a relay node linked to every token, plus a ring.

    Position 0 of each sequence is the relay r (prepend a relay token, as a [CLS]); positions
    1..L−1 are the satellites, joined in a ring of m = L − 1 (the first and last satellites are
    neighbours, as in the paper):

    .. math::
        N(r) = \\{ j \\} \\text{ (the whole sequence)}, \\qquad
        N(i) = \\{ r, i, \\mathrm{prev}(i), \\mathrm{next}(i) \\} \\text{ for a satellite}

    with prev/next taken on the ring. Self-loops included. Tag ``"star"``, params ``{}``.

    Shapes:
        edge_index [2, E], E <= Σ_b (L_b + 4 (L_b − 1)), sorted by target then source.
    """
    lay = layout(n, lengths, "star_graph", device)
    relay = lay.pos == 0  # [N]
    sat = ~relay
    check_edge_cap(int(lay.length[relay].sum()) + 4 * int(sat.sum()), max_edges, "star_graph")
    i, start, a = lay.idx[sat], lay.start[sat], lay.pos[sat] - 1  # [S] a: index on the ring
    m = lay.length[sat] - 1  # [S] ring size
    ring = torch.stack(
        [
            torch.cat([start, i, start + 1 + (a - 1) % m, start + 1 + (a + 1) % m]),  # [4S]
            i.repeat(4),  # [4S]
        ]
    )
    hub = ragged(lay.start[relay], lay.length[relay], target=lay.idx[relay])
    return lay.graph(union([hub, ring], lay.num_nodes), "star", {})
