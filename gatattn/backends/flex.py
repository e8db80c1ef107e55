"""The flex backend: ``torch.nn.attention.flex_attention`` with a BlockMask built from the tiles.

    out = softmax(s · Q Kᵀ + M) V,   M_ij = 0 if (j, i) is an edge else −∞        (eqs. 1-3)

FlexAttention (Dong et al. 2024, "Flex Attention: A Programming Model for Generating Optimized
Attention Kernels") skips the tiles of M that are fully masked, like the block backend, in fused
Triton kernels. Its ``BlockMask`` is built from the graph's ``BlockLayout`` with S×S tiles
(S = FLEX_BLOCK, the kernels' block size), never from an [N_t, N_s] mask:

    kv_num_blocks, kv_indices             partial tiles (some entries are edges) per row-block
    full_kv_num_blocks, full_kv_indices   full tiles (every entry an edge): no mask_mod at all
    mask_mod(q_idx, kv_idx)               bit (q_idx mod S, kv_idx mod S) of the tile's bit table

The bit tables hold the partial tiles only, S²/8 bytes each, gathered through a [⌈N_t/S⌉,
⌈N_s/S⌉] table of tile slots (FlexAttention's own BlockMask keeps arrays of that size too).
Building the mask costs O(E + nb·S²) memory instead of O(N_t·N_s) (docs/benchmarks.md,
"Flex masks from tiles"). Each (i, j) pair is attended once, so a graph with duplicate edges is
refused (the edge and block backends count them). CUDA only: on CPU FlexAttention has no
backward. FlexAttention is imported inside functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..graph import TokenGraph
from .base import Backend, BackendOutput, Problem
from .block import block_layout, tile_reasons

__all__ = ["FLEX_BLOCK", "FlexBackend", "block_mask_for", "flex_available", "flex_forward"]

FLEX_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: Tile side of the BlockMask: FlexAttention's default block size, which its kernels divide.
FLEX_BLOCK = 128
#: FlexAttention's kernels need a head size of at least this.
MIN_HEAD_DIM = 16


def has_duplicates(graph: TokenGraph) -> bool:
    """True when some (j, i) pair has more than one edge (cached in the graph)."""

    def find() -> bool:
        keys = graph.edge_index[1] * graph.num_src + graph.edge_index[0]  # [E]
        return bool(torch.unique(keys).numel() != keys.numel())

    return graph.derived("has_duplicates", find)


def flex_available() -> bool:
    """FlexAttention importable in this torch."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _ordered(rows: Tensor, cols: Tensor, nr: int, nc: int) -> tuple[Tensor, Tensor]:
    """Tiles (rows, cols sorted by row, then column) -> (count per row-block [nr] int32,
    column-blocks per row-block [nr, nc] int32, the first count of each row used)."""
    num = torch.bincount(rows, minlength=nr)  # [nr]
    slot = torch.arange(rows.numel(), device=rows.device) - (torch.cumsum(num, 0) - num)[rows]
    idx = torch.zeros(nr, nc, dtype=torch.int32, device=rows.device)
    idx[rows, slot] = cols.to(torch.int32)  # [nr, nc]
    return num.to(torch.int32), idx


def block_mask_for(graph: TokenGraph, device: torch.device) -> Any:
    """FlexAttention BlockMask of the graph (cached in the graph, per device), from its tiles.

    Full tiles go to ``full_kv_*`` (no mask_mod there), partial tiles to ``kv_*`` with a
    mask_mod that reads one bit per (i, j) from the tile's bit table. A tile is full when all
    its S² entries are edges (a tile cut by N_t or N_s is never full, as in
    ``create_block_mask``).

    Shapes:
        BlockMask of shape (1, 1, N_t, N_s) with S×S blocks, S = FLEX_BLOCK.
    """
    from torch.nn.attention.flex_attention import BlockMask

    def build() -> Any:
        g = graph.to(device)
        lay = block_layout(g, FLEX_BLOCK)
        S, nr, nc = lay.size, lay.num_row_blocks, lay.num_col_blocks
        filled = lay.counts != 0  # [nb, S, S]
        full = filled.flatten(1).all(1)  # [nb]
        part = ~full
        kv_num, kv_idx = _ordered(lay.rows[part], lay.cols[part], nr, nc)
        full_num, full_idx = _ordered(lay.rows[full], lay.cols[full], nr, nc)
        # bit tables: slot 0 = an empty tile, 1 = a full tile, 2.. = the partial tiles
        entries = filled[part].view(-1, S, S // 8, 8)  # [P, S, S/8, 8]
        bits = torch.zeros(entries.size(0) + 2, S, S // 8, dtype=torch.uint8, device=g.device)
        bits[1] = 255
        for bit in range(8):  # byte m of a row holds the entries 8m .. 8m + 7
            bits[2:] |= entries[..., bit].to(torch.uint8) << bit  # [P, S, S/8]
        slots = torch.zeros(nr * nc, dtype=torch.int32, device=g.device)  # [nr·nc]
        tiles = lay.rows * nc + lay.cols  # [nb]
        slots[tiles[full]] = 1
        slots[tiles[part]] = torch.arange(2, 2 + int(part.sum()), device=g.device).int()
        slots = slots.view(nr, nc)  # [nr, nc]

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            tile = slots[q_idx // S, kv_idx // S]
            byte = bits[tile, q_idx % S, (kv_idx % S) // 8]
            return ((byte.to(torch.int32) >> (kv_idx % 8).to(torch.int32)) & 1) != 0

        return BlockMask.from_kv_blocks(
            kv_num[None, None],  # [1, 1, nr]
            kv_idx[None, None],  # [1, 1, nr, nc]
            full_num[None, None],
            full_idx[None, None],
            BLOCK_SIZE=S,
            mask_mod=mask_mod,
            seq_lengths=(graph.num_dst, graph.num_src),
        )

    return graph.derived("flex_block_mask", build, device)


def flex_forward(
    q: Tensor, k: Tensor, v: Tensor, graph: TokenGraph, scale: float, kernel: Callable[..., Any]
) -> Tensor:
    """out_i = Σ_{j ∈ N(i)} softmax_j(s·<q_i, k_j>) v_j by ``kernel`` (``flex_attention``, or
    its compiled form) over the graph's BlockMask; 0 for a target without edges.

    Shapes:
        q [N_t, H, D], k and v [N_s, H, D] -> out [N_t, H, D].
    """
    out = kernel(
        q.transpose(0, 1).unsqueeze(0),  # [1, H, N_t, D]
        k.transpose(0, 1).unsqueeze(0),  # [1, H, N_s, D]
        v.transpose(0, 1).unsqueeze(0),
        block_mask=block_mask_for(graph, q.device),
        scale=scale,
    )  # [1, H, N_t, D]
    out = out[0].transpose(0, 1)  # [N_t, H, D]
    isolated = graph.derived("has_isolated", lambda: bool((graph.in_degree() == 0).any()))
    if isolated:  # a target with no edges outputs 0 (docs/math.md), whatever the kernel does
        deg = graph.in_degree().to(out.device)  # [N_t]
        out = torch.where((deg > 0)[:, None, None], out, torch.zeros_like(out))
    return out


class FlexBackend(Backend):
    """Graph attention by FlexAttention over the graph's BlockMask (``flex_forward``).

    Runs a score that declares an ``sdpa_scale`` and carries no bias, on CUDA, in
    fp16/bf16/fp32, with D >= 16, without attention dropout, on graphs without duplicate
    edges. ``backend="auto"`` picks it when the tiles pay (``block.tile_reasons``).
    Returns out [N_t, H, D]; scores and weights are None.
    """

    name = "flex"

    def __init__(self) -> None:
        self._fn: Any = None

    def _cheap_reasons(self, p: Problem) -> list[str]:
        base, biases = p.score.parts()
        why = []
        if base.sdpa_scale(p.q.size(-1)) is None:
            why.append(
                f"score {base.name!r} is not s·<q_i, k_j> (it declares no sdpa_scale), which "
                "FlexAttention computes here"
            )
        if biases:
            names = [b.name for b in biases]
            why.append(f"score {p.score.name!r} carries the biases {names}: flex runs none")
        why += self.per_edge_reasons(p)
        if p.sinks is not None:
            why.append("attention sinks: the edge and dense backends add the sink")
        if p.q.device.type != "cuda":
            why.append(
                f"FlexAttention needs CUDA (it has no CPU backward), and the input is on "
                f"{p.q.device.type}"
            )
        if p.q.dtype not in FLEX_DTYPES:
            why.append(f"FlexAttention runs fp16/bf16/fp32, not {p.q.dtype}")
        if p.q.size(-1) < MIN_HEAD_DIM:
            why.append(f"head size D={p.q.size(-1)} < {MIN_HEAD_DIM}, which its kernels need")
        if p.training and p.dropout > 0:
            why.append("no attention dropout here (the layer is training with dropout > 0)")
        if p.graph.num_edges == 0:
            why.append("graph has no edges")
        if not why and not flex_available():
            why.append(f"torch {torch.__version__} has no torch.nn.attention.flex_attention")
        return why

    def supports(self, p: Problem) -> tuple[str, ...]:
        why = self._cheap_reasons(p)
        if not why and has_duplicates(p.graph):  # O(E), cached: only once the rest passed
            why.append("graph has duplicate edges, which FlexAttention's mask cannot count")
        return tuple(why)

    def auto_reasons(self, p: Problem) -> tuple[str, ...]:
        why = self._cheap_reasons(p)
        if why:
            return tuple(why)
        return tile_reasons(p.graph) or self.supports(p)

    def explain(self, p: Problem) -> str:
        lay = block_layout(p.graph)
        dens = f"tile density {lay.density:.2f} with {lay.size}x{lay.size} tiles"
        return f"block-structured graph on CUDA ({dens}): FlexAttention"

    def _kernel(self) -> Any:
        from torch.nn.attention.flex_attention import flex_attention

        if self._fn is None:
            self._fn = torch.compile(flex_attention, dynamic=False)
        return self._fn

    def run(self, p: Problem) -> BackendOutput:
        self.refuse(p)
        scale = p.score.parts()[0].sdpa_scale(p.q.size(-1))
        assert scale is not None
        return BackendOutput(
            flex_forward(p.q, p.k, p.v, p.graph, scale, self._kernel()), None, None
        )
