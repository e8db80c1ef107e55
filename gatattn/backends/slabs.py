"""The block backend's SDPA path: the active tiles of each row-block as one key/value slab.

For s·<q_i, k_j> without biases, the W active tiles of row-block r are laid side by side as a
slab of W·S keys, and one batched ``F.scaled_dot_product_attention`` call runs every row-block,
with the tile multiplicities as the additive mask log C (log 1 = 0, log 0 = −∞):

    out_r = softmax(s · Q_r K_slab(r)ᵀ + log C_r) V_slab(r)               (docs/math.md, eq. 4)

exp(α + log c) = c·exp(α), so duplicate edges count as separate edges, exactly as in the edge
backend, and SDPA's fused kernel does the softmax and its backward. Two slab forms:

* band: every active tile (r, c) lies on the diagonals c − r ∈ [o, o + W) (windows, dilated or
  causal windows, block-diagonal graphs). Slot w of row-block r is column tile r + o + w, so
  the slabs are strided views of K and V (``band_view``, no copy), and their gradient is the
  overlap-add of the slab gradients (``band_sum``). Hand-written because gathering the slabs
  (``index_select``) copies K and V W times and its backward scatters them back: about 20 % of
  P2's attention time on CPU (docs/benchmarks.md, issue 23).
* gather: any other layout whose row-blocks hold about equally many tiles. Slot w of row-block
  r is its w-th active tile (``table``), gathered with ``index_select``.

A layout that fits neither (padding beyond MAX_SLAB_PADDING) takes the generic tile softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..graph import TokenGraph
from .sdpa import sdpa

__all__ = [
    "BAND_FORM",
    "MAX_SLAB_PADDING",
    "Slabs",
    "band_sum",
    "band_view",
    "slab_attention",
    "slabs",
]

#: The SDPA slab path runs when padding every row-block to W tiles costs at most this factor.
MAX_SLAB_PADDING = 1.5
#: Try the band form first (False: the gather form only; the tests compare the two).
BAND_FORM = True


@dataclass(frozen=True, eq=False)
class Slabs:
    """How the active tiles of each row-block form its slab.

    Attributes:
        mask: log multiplicities of every slab entry, float64 [nr, 1, S, W·S] (−∞: no edge).
        width: W, tiles per slab.
        offset: band form: slot w of row-block r is column tile r + offset + w.
        table: gather form: the column tile of each slot, LongTensor [nr, W] (num_col_blocks:
            an empty tile); None for the band form.
    """

    mask: Tensor
    width: int
    offset: int
    table: Tensor | None


def slabs(
    rows: Tensor, cols: Tensor, counts: Tensor, num_row_blocks: int, num_col_blocks: int
) -> Slabs | None:
    """The slab form of a tiling (band when it fits, else gather), or None when every form
    pads the row-blocks beyond MAX_SLAB_PADDING × the active tiles.

    Shapes:
        rows, cols: row-block and column-block of each active tile [nb]; counts [nb, S, S].
    """
    nr, nb, S = num_row_blocks, rows.numel(), counts.size(-1)
    if nb == 0:
        return None
    diag = cols - rows  # [nb] diagonal of each tile
    offset = int(diag.min())
    width = int(diag.max()) - offset + 1
    table: Tensor | None = None
    if BAND_FORM and nr * width <= MAX_SLAB_PADDING * nb:
        slot = diag - offset  # [nb]
    else:
        per_row = torch.bincount(rows, minlength=nr)  # [nr]
        width = int(per_row.max())
        if nr * width > MAX_SLAB_PADDING * nb:
            return None
        start = (torch.cumsum(per_row, 0) - per_row).index_select(0, rows)  # [nb]
        slot = torch.arange(nb, device=rows.device) - start  # position within its row-block
        table = torch.full((nr, width), num_col_blocks, dtype=torch.long, device=rows.device)
        table[rows, slot] = cols  # [nr, W]
    cnt = torch.zeros(nr, width, S, S, dtype=torch.float64, device=rows.device)
    cnt[rows, slot] = counts.double()  # [nr, W, S, S]; fp64 so log 2, 3.. are exact
    mask = cnt.log().permute(0, 2, 1, 3).reshape(nr, 1, S, width * S)  # [nr, 1, S, W·S]
    return Slabs(mask, width, offset, table)


def _band_pads(n: int, nr: int, size: int, offset: int, width: int) -> tuple[int, int]:
    """Zero rows (before, after) a [n, ...] tensor so every band slot lies inside it."""
    return max(0, -offset) * size, max(0, (nr - 1 + offset + width) * size - n)


class _BandView(torch.autograd.Function):
    """t [N, H, D] -> slabs [nr, H, W·S, D]: slab r holds rows (r + o)·S .. (r + o + W)·S − 1
    of t (zeros outside [0, N)). A strided view of one padded copy of t."""

    @staticmethod
    def forward(t: Tensor, nr: int, size: int, offset: int, width: int) -> Tensor:  # type: ignore[override]
        n, H, D = t.shape
        before, after = _band_pads(n, nr, size, offset, width)
        padded = t.new_empty(before + n + after, H, D)  # contiguous: as_strided reads storage
        padded[:before].zero_()
        padded[before : before + n] = t
        padded[before + n :].zero_()
        start = padded.storage_offset() + (offset * size + before) * H * D
        shape, stride = (nr, width * size, H, D), (size * H * D, H * D, D, 1)
        return padded.as_strided(shape, stride, start).transpose(1, 2)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        t, _, size, offset, _ = inputs
        ctx.meta = (t.size(0), size, offset)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:  # type: ignore[override]
        n, size, offset = ctx.meta
        return band_sum(grad, n, size, offset), None, None, None, None


class _BandSum(torch.autograd.Function):
    """The adjoint of ``_BandView``: slabs [nr, H, W·S, D] -> [N, H, D], each slab's rows added
    back where they came from (overlap-add)."""

    @staticmethod
    def forward(g: Tensor, n: int, size: int, offset: int) -> Tensor:  # type: ignore[override]
        nr, H, ws, D = g.shape
        width = ws // size
        before, after = _band_pads(n, nr, size, offset, width)
        acc = g.new_zeros((before + n + after) // size + 1, size, H, D)  # [tiles, S, H, D]
        tiles = g.unflatten(2, (width, size))  # [nr, H, W, S, D] (a view when g is contiguous)
        first = offset + before // size  # padded tile of slot 0 of row-block 0
        for w in range(width):  # W adds of [nr, S, H, D]: slot w of every row-block at once
            acc[first + w : first + w + nr] += tiles[:, :, w].transpose(1, 2)
        return acc.view(-1, H, D)[before : before + n]  # [N, H, D]

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        g, _, size, offset = inputs
        ctx.meta = (g.size(0), size, offset, g.size(2) // size)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:  # type: ignore[override]
        nr, size, offset, width = ctx.meta
        return band_view(grad, nr, size, offset, width), None, None, None


def band_view(t: Tensor, nr: int, size: int, offset: int, width: int) -> Tensor:
    """The band slabs of ``t``: ``out[r, h, w·S + a] = t[(r + offset + w)·S + a, h]`` (zero
    where that row is outside ``t``). Differentiable to any order (its adjoint is ``band_sum``).

    Shapes:
        t [N, H, D] -> [nr, H, W·S, D] (a strided view of one padded copy of t).
    """
    out: Tensor = _BandView.apply(t, nr, size, offset, width)
    return out


def band_sum(g: Tensor, n: int, size: int, offset: int) -> Tensor:
    """The adjoint of ``band_view``: ``out[m] = Σ_{(r, w, a): (r + offset + w)·S + a = m}
    g[r, :, w·S + a]`` (rows outside [0, n) dropped).

    Shapes:
        g [nr, H, W·S, D] -> [n, H, D].
    """
    out: Tensor = _BandSum.apply(g, n, size, offset)
    return out


def slab_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    graph: TokenGraph,
    size: int,
    num_col_blocks: int,
    scale: float,
    slab: Slabs,
    dropout: float,
) -> Tensor:
    """One batched SDPA over row-blocks (module docstring); q [N_t, H, D], k, v [N_s, H, D]
    -> [N_t, H, D]."""
    S, H, D, nc, W = size, q.size(1), q.size(2), num_col_blocks, slab.width
    nr = slab.mask.size(0)
    table = slab.table

    def gather(t: Tensor) -> Tensor:  # [N_s, H, D] -> [nr, H, W·S, D]
        assert table is not None
        t = F.pad(t, (0, 0, 0, 0, 0, (nc + 1) * S - t.size(0)))  # + one empty tile
        t = t.view(nc + 1, S, H, D).index_select(0, table.view(-1))  # [nr·W, S, H, D]
        return t.view(nr, W * S, H, D).transpose(1, 2)

    def band(t: Tensor) -> Tensor:
        return band_view(t, nr, S, slab.offset, W)

    form = band if table is None else gather
    mask = graph.derived(("block_slab_mask", S, q.dtype), lambda: slab.mask.to(q.dtype))
    if q.size(0) != nr * S:  # pad the queries to whole row-blocks (else a view of q)
        q = F.pad(q, (0, 0, 0, 0, 0, nr * S - q.size(0)))
    qt = q.unflatten(0, (nr, S)).transpose(1, 2)  # [nr, H, S, D]
    out = sdpa(  # F.scaled_dot_product_attention, differentiable twice
        qt, form(k), form(v), attn_mask=mask, dropout_p=dropout, scale=scale
    )  # [nr, H, S, D]
    return out.transpose(1, 2).reshape(nr * S, H, D)[: graph.num_dst]
