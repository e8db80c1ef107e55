"""BigBird's block-sparse pattern (Zaheer et al. 2020, "Big Bird: Transformers for Longer
Sequences", Sec. 2 and App. D), the ITC variant: global tokens are existing tokens."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..graph import TokenGraph
from ._common import MAX_EDGES, check_edge_cap, layout, positive_int, ragged

__all__ = ["bigbird_block_mask", "bigbird_graph"]


def bigbird_block_mask(
    num_blocks: int,
    window_blocks: int,
    global_blocks: int,
    random_blocks: int,
    generator: torch.Generator,
) -> Tensor:
    """Block-level BigBird mask [nb, nb] (row: query block, column: key block).

    .. math::
        M[a, b] = |a - b| \\le \\lfloor w/2 \\rfloor \\;\\lor\\; a \\in G \\;\\lor\\; b \\in G
        \\;\\lor\\; b \\in R(a)

    G is the first ⌈g/2⌉ and the last ⌊g/2⌋ blocks (for g = 2, the first and the last block, as
    in the reference implementation). R(a), for a non-global query block a, is ``random_blocks``
    key blocks drawn uniformly without replacement from those not already in row a (fewer if
    fewer remain), from ``generator``.
    """
    blk = torch.arange(num_blocks)  # [nb]
    mask = (blk[:, None] - blk[None, :]).abs() <= window_blocks // 2  # [nb, nb] window
    glob = torch.zeros(num_blocks, dtype=torch.bool)  # [nb]
    glob[: (global_blocks + 1) // 2] = True
    if global_blocks // 2:
        glob[-(global_blocks // 2) :] = True
    mask |= glob[:, None] | glob[None, :]
    if random_blocks:
        # Random keys of each row: the r smallest uniform draws among the blocks not yet in the row.
        draw = torch.rand(num_blocks, num_blocks, generator=generator)  # [nb, nb]
        draw = draw.masked_fill(mask, 2.0)  # taken blocks sort last and are never chosen
        r = min(random_blocks, num_blocks)
        val, col = draw.topk(r, dim=1, largest=False)  # [nb, r]
        rows = blk[:, None].expand(-1, r)  # [nb, r]
        keep = val < 1.0  # [nb, r]
        mask[rows[keep], col[keep]] = True
    return mask


def bigbird_graph(
    n: int | None = None,
    *,
    block_size: int,
    window_blocks: int = 3,
    global_blocks: int = 2,
    random_blocks: int = 3,
    seed: int,
    lengths: Sequence[int] | Tensor | None = None,
    device: torch.device | str | None = None,
    max_edges: int | None = MAX_EDGES,
) -> TokenGraph:
    """BigBird-ITC block-sparse attention: window + global + random blocks.

    Tokens are cut into blocks of b = ``block_size`` (the last one may be shorter); with
    β(i) = ⌊p_i / b⌋ and the block mask M of ``bigbird_block_mask``:

    .. math:: N(i) = \\{ j : M[\\beta(i), \\beta(j)] \\}

    Self-loops included (a block is in its own window). Reproducible: the random blocks come
    from ``torch.Generator().manual_seed(seed)``, drawn sequence by sequence. Tag ``"bigbird"``,
    params ``{"block_size", "window_blocks", "global_blocks", "random_blocks", "seed"}``.

    Args:
        block_size: b >= 1.  window_blocks: odd w >= 1, blocks in the sliding window (3 in the
        paper).  global_blocks: g >= 0.  random_blocks: r >= 0 per query block.  seed: int.

    Shapes:
        edge_index [2, E], sorted by target then source, no duplicate edges.
    """
    b = positive_int(block_size, "block_size")
    w = positive_int(window_blocks, "window_blocks")
    if w % 2 == 0:
        raise ValueError(f"window_blocks must be odd (a block and its neighbours), got {w}")
    g = positive_int(global_blocks, "global_blocks", minimum=0)
    r = positive_int(random_blocks, "random_blocks", minimum=0)
    seed = positive_int(seed, "seed", minimum=0)
    lay = layout(n, lengths, "bigbird_graph", device)
    gen = torch.Generator().manual_seed(seed)
    segments: list[tuple[Tensor, Tensor, Tensor]] = []
    start = 0
    for length in lay.seq:  # a loop per sequence; tokens are handled as tensors
        nb = -(-length // b)  # ceil
        mask = bigbird_block_mask(nb, w, g, r, gen).to(lay.idx.device)  # [nb, nb]
        pairs = mask.nonzero()  # [P, 2] (query block, key block), row-major: sorted
        per_row = mask.sum(1)  # [nb] key blocks of each query block
        row_ptr = torch.cumsum(per_row, 0) - per_row  # [nb]
        qblk = torch.arange(length, device=mask.device) // b  # [L] block of each token
        # one segment per (token, key block of its block), in token-then-key-block order
        seg = ragged(row_ptr[qblk], per_row[qblk])  # [2, S]: (pair index, token)
        kblk = pairs[seg[0], 1]  # [S]
        segments.append((start + kblk * b, torch.clamp(length - kblk * b, max=b), start + seg[1]))
        start += length
    check_edge_cap(sum(int(c.sum()) for _, c, _ in segments), max_edges, "bigbird_graph")
    first, count, target = (torch.cat(t) for t in zip(*segments))
    params = {
        "block_size": b,
        "window_blocks": w,
        "global_blocks": g,
        "random_blocks": r,
        "seed": seed,
    }
    return lay.graph(ragged(first, count, target=target), "bigbird", params)
