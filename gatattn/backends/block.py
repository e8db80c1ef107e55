"""The block backend: block-sparse attention in pure torch, for banded and block-structured graphs.

The N_t × N_s adjacency is cut into S×S tiles. Only the tiles that hold an edge ("active blocks")
are computed, each one densely with the score's own ``dense`` formula:

    A_b   = w(Q_{r(b)}, K_{c(b)})                       logits of block b       [nb, H, S, S]
    m_i   = max over the edges into i of A              (over all blocks of row-block r)
    P_b   = C_b ⊙ exp(A_b − m) / Σ_{b' in row r} Σ_j C_b' ⊙ exp(A_b' − m)          (eq. 2)
    out_r = Σ_{b in row r} P_b V_{c(b)}                                             (eq. 3)

C_b [S, S] holds the edge multiplicities inside the tile (0 = no edge), so duplicate edges count
as separate edges exactly as in the edge backend. The layout is derived from ``edge_index`` alone
(never from the structure tag) and cached per graph. Memory is O(nb·S²·H + nb·S·H·D), i.e.
O(E·H / density): dispatch picks this backend only when the tiles are dense enough.

Fast path for scaled_dot / dot (backends/slabs.py): when every row-block has about the same
number of active tiles, the tiles of row-block r form one key/value slab of W·S columns (a
strided view of K and V for banded graphs, a gather otherwise) and a single batched
``F.scaled_dot_product_attention`` call runs all row-blocks, with the multiplicities as an
additive mask log C (log 1 = 0, log 0 = −∞): exp(α + log c) = c·exp(α), so duplicates stay exact
and SDPA's fused kernel does the softmax and its backward.

Hand-written because no torch / PyG op does block-sparse softmax attention with a custom score on
CPU (FlexAttention has no CPU backward and no multiplicities).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.utils import scatter

from ..graph import TokenGraph
from ..kernels import CHUNK_ELEMENTS
from ..scores import POSITION, DenseContext, Edges
from .base import Backend, BackendOutput, Problem
from .slabs import Slabs, slab_attention, slabs

__all__ = [
    "MIN_BLOCK_EDGES",
    "MIN_DENSITY",
    "BlockBackend",
    "BlockLayout",
    "block_layout",
    "estimate_density",
    "tile_reasons",
]

#: Tile sizes tried, and the density (E / computed entries) below which block does not pay.
#: Measured on 2 CPU cores (N=4096, C=512, H=8, forward+backward): block takes 0.05x the edge
#: backend's time at density 0.67, 0.13x at 0.34 and 0.44-0.51x at 0.17 (docs/benchmarks.md).
BLOCK_SIZES = (16, 32, 64, 128)
MIN_DENSITY = 0.1
_HALF = (torch.float16, torch.bfloat16)
#: Edges sampled (with a fixed seed) to estimate the tile density before any layout is built.
DENSITY_SAMPLE = 4096
#: Grids of at most this many tiles count the sampled edges per tile with ``bincount`` (no
#: sort; the same counts as ``unique``, about 5x faster on CPU for graphs of a few thousand
#: nodes); larger grids sort the sample.
DENSE_TILE_COUNT = 1 << 18
#: Below this many edges a tiled backend's fixed costs outweigh its gain (``backend="auto"``).
MIN_BLOCK_EDGES = 4096
#: A sampled density below MIN_DENSITY × this margin skips the exact layout (sampling noise).
ESTIMATE_MARGIN = 0.5


@dataclass(frozen=True, eq=False)  # identity hash: a cache key
class BlockLayout:
    """Active tiles of a graph's adjacency.

    Attributes:
        size: S, the tile side.
        rows, cols: row-block and column-block of each active tile, LongTensor [nb] (sorted by row).
        counts: edge multiplicities inside each tile, [nb, S, S] (uint8 or int32).
        num_row_blocks, num_col_blocks: ⌈N_t/S⌉ and ⌈N_s/S⌉.
        density: E / (nb·S²), the share of computed entries that are edges (duplicates count).
    """

    size: int
    rows: Tensor
    cols: Tensor
    counts: Tensor
    num_row_blocks: int
    num_col_blocks: int
    density: float

    @property
    def num_blocks(self) -> int:
        return int(self.rows.numel())


def _tile_ids(src: Tensor, dst: Tensor, size: int, num_col_blocks: int) -> Tensor:
    return (dst // size) * num_col_blocks + src // size  # [e]


def estimate_density(graph: TokenGraph) -> tuple[int, float]:
    """(tile side S, estimated density) from a fixed-seed sample of the edges, in O(sample).

    Two edges drawn at random share a tile with probability p_S = Σ_t (c_t / E)² (c_t edges in
    tile t), so p_S·E/S² is the edge-weighted mean tile density: for equally full tiles it is the
    density E / (nb·S²), and it is never below it. Collisions among ``DENSITY_SAMPLE`` draws
    estimate p_S. The S that minimises the estimated work S²(1 + 16/S)/p_S is returned. No
    per-tile array is built: this is dispatch's whole cost on an irregular graph.
    """

    def estimate() -> tuple[int, float]:
        E = graph.num_edges
        gen = torch.Generator().manual_seed(0)  # its own generator: the global RNG is untouched
        m = min(DENSITY_SAMPLE, E)
        idx = torch.randint(E, (m,), generator=gen).to(graph.device)  # [m]
        src, dst = graph.edge_index[0, idx], graph.edge_index[1, idx]  # [m]
        best: tuple[float, int, float] | None = None
        for s in BLOCK_SIZES:
            nc = -(-graph.num_src // s)
            tiles = _tile_ids(src, dst, s, nc)  # [m]
            if -(-graph.num_dst // s) * nc <= DENSE_TILE_COUNT:  # a count per tile: no sort
                counts = torch.bincount(tiles, minlength=1)
            else:
                counts = torch.unique(tiles, return_counts=True)[1]
            pairs = float((counts * (counts - 1)).sum())  # ordered pairs of draws in one tile
            p = max(pairs, 1.0) / (m * max(m - 1, 1))  # at least one pair: no division by 0
            work = s * s * (1 + 16 / s) / p
            if best is None or work < best[0]:
                best = (work, s, min(1.0, p * E / (s * s)))
        assert best is not None
        return best[1], best[2]

    return graph.derived("block_density_estimate", estimate)


def block_layout(graph: TokenGraph, size: int | None = None) -> BlockLayout:
    """The tiling of ``graph`` with tile side ``size`` (None: the side ``estimate_density``
    picks), cached in the graph.

    Raises:
        ValueError: the graph has no edges.
    """
    if graph.num_edges == 0:
        raise ValueError("block layout of a graph with no edges (E=0)")
    s = estimate_density(graph)[0] if size is None else size
    return graph.derived(("block_layout", s), lambda: _layout(graph, s))


def tile_reasons(graph: TokenGraph) -> tuple[str, ...]:
    """Every reason a tiled backend (block, flex) does not pay on ``graph`` (the cost rules of
    ``backend="auto"``; () when it pays), cheapest first:

    * fewer than MIN_BLOCK_EDGES edges, or torch.compile tracing (layouts have data-dependent
      sizes): O(1);
    * the tile density E / (nb·S²) *estimated* from a fixed-seed sample of edges
      (``estimate_density``, O(sample)) below MIN_DENSITY × ESTIMATE_MARGIN;
    * only then the exact layout (O(E), cached in the graph), whose density must reach
      MIN_DENSITY.

    So an irregular graph costs O(sample), never a per-tile array.
    """
    why = []
    if graph.num_edges < MIN_BLOCK_EDGES:
        why.append(
            f"small graph (E={graph.num_edges} < {MIN_BLOCK_EDGES}): fixed costs outweigh tiles"
        )
    if torch.compiler.is_compiling():
        why.append("under torch.compile the block layout is not built (data-dependent sizes)")
    if why:
        return tuple(why)
    size, guess = estimate_density(graph)
    if guess < MIN_DENSITY * ESTIMATE_MARGIN:
        est = f"estimated tile density {guess:.3f} with {size}x{size} tiles"
        return (f"irregular graph ({est} < {MIN_DENSITY})",)
    lay = block_layout(graph)
    if lay.density < MIN_DENSITY:
        dens = f"tile density {lay.density:.2f} with {lay.size}x{lay.size} tiles"
        return (f"irregular graph ({dens} < {MIN_DENSITY})",)
    return ()


def _tile_density(graph: TokenGraph) -> str:
    lay = block_layout(graph)
    return f"tile density {lay.density:.2f} with {lay.size}x{lay.size} tiles"


def _layout(graph: TokenGraph, s: int) -> BlockLayout:
    nr, nc = -(-graph.num_dst // s), -(-graph.num_src // s)
    src, dst = graph.edge_index
    tile = _tile_ids(src, dst, s, nc)  # [E]
    tiles = torch.unique(tile)  # [nb] sorted
    slot = torch.searchsorted(tiles, tile)  # [E] index of each edge's tile
    flat = (slot * s + dst % s) * s + src % s  # [E] entry inside [nb, S, S]
    counts = torch.bincount(flat, minlength=tiles.numel() * s * s).view(-1, s, s)  # [nb, S, S]
    return BlockLayout(
        size=s,
        rows=tiles // nc,
        cols=tiles % nc,
        counts=counts.to(torch.uint8 if int(counts.max()) < 256 else torch.int32),
        num_row_blocks=nr,
        num_col_blocks=nc,
        density=graph.num_edges / (tiles.numel() * s * s),
    )


class BlockBackend(Backend):
    """Graph attention over the active tiles of the adjacency (see the module docstring).

    Runs any graph (duplicates allowed; the tag is not used) with a score that declares a
    dense form (``has_dense``) that is not pairwise (a pairwise form costs S²·D per tile, no
    less than the edge backend), plus biases that read positions only (``kind="position"``:
    evaluated per tile entry). ``backend="auto"`` picks it when the tiles pay
    (``tile_reasons``). Returns out [N_t, H, D]; scores and weights are None.
    """

    name = "block"

    def supports(self, p: Problem) -> tuple[str, ...]:
        base, biases = p.score.parts()
        why = []
        if not base.has_dense:
            why.append(f"score {base.name!r} declares no dense form (has_dense), which tiles need")
        elif base.pairwise_dense:
            why.append(
                f"score {base.name!r} has a pairwise dense form (pairwise_dense): [S, S, D] per "
                "tile costs no less than the edge backend"
            )
        why += [
            f"bias {b.name!r} reads per-edge inputs (kind {b.kind!r}), not positions alone: "
            "it has no value on a tile's non-edges"
            for b in biases
            if b.kind != POSITION
        ]
        why += self.per_edge_reasons(p)
        if p.graph.num_edges == 0:
            why.append("graph has no edges")
        if p.sinks is not None:
            why.append("attention sinks: the edge and dense backends add the sink")
        if p.positions is not None and biases:
            why.append("biases on given node positions: the tiles carry token positions only")
        return tuple(why)

    def auto_reasons(self, p: Problem) -> tuple[str, ...]:
        return self.supports(p) or tile_reasons(p.graph)

    def explain(self, p: Problem) -> str:
        return f"block-structured graph ({_tile_density(p.graph)}): block-sparse torch"

    def run(self, p: Problem) -> BackendOutput:
        self.refuse(p)
        return _block_attention(p, block_layout(p.graph))


def _block_attention(p: Problem, lay: BlockLayout) -> BackendOutput:
    q, k, v, graph = p.q, p.k, p.v, p.graph
    base, biases = p.score.parts()
    S, nb = lay.size, lay.num_blocks
    H, D = q.size(1), q.size(2)
    scale = base.sdpa_scale(D)
    if not biases and scale is not None:
        slab = graph.derived(("block_slabs", S), lambda: _slabs_of(lay))
        if slab is not None:
            drop = p.dropout if p.training else 0.0
            nc = lay.num_col_blocks
            out = slab_attention(q, k, v, graph, S, nc, scale, slab, drop)  # [N_t, H, D]
            return BackendOutput(out, None, None)

    def tiles(t: Tensor, n_blocks: int, idx: Tensor) -> Tensor:  # [N, H, D] -> [nb, H, S, D]
        t = F.pad(t, (0, 0, 0, 0, 0, n_blocks * S - t.size(0)))  # [n_blocks·S, H, D]
        t = t.view(n_blocks, S, H, D).transpose(1, 2)  # [n_blocks, H, S, D]
        return t.index_select(0, idx)

    offs = torch.arange(S, device=q.device)  # [S]
    pos_q = F.pad(graph.positions("dst"), (0, lay.num_row_blocks * S - graph.num_dst))
    pos_k = F.pad(graph.positions("src"), (0, lay.num_col_blocks * S - graph.num_src))

    def logits(a: int, b: int) -> Tensor:  # α on tiles a..b  [n, H, S, S]
        rows, cols = lay.rows[a:b], lay.cols[a:b]
        out = base.dense(
            tiles(q, lay.num_row_blocks, rows), tiles(k, lay.num_col_blocks, cols), _NO_CTX
        )
        if biases:  # per-entry bias from each bias's per-edge formula on the tile's (i, j)
            dst = (rows[:, None, None] * S + offs[None, :, None]).expand(-1, S, S).reshape(-1)
            src = (cols[:, None, None] * S + offs[None, None, :]).expand(-1, S, S).reshape(-1)
            edges = _PaddedEdges(src, dst, graph, pos_q, pos_k)
            bias = sum(bias_fn(edges) for bias_fn in biases)  # [n·S·S, H]
            out = out + bias.view(-1, S, S, H).permute(0, 3, 1, 2).to(out.dtype)
        return out

    # Compute α tile by tile in chunks bounded like the edge ops; checkpoint keeps autograd
    # from holding every chunk's [n, H, S, D] gathers at once.
    per_tile = H * S * max(S, D)
    step = max(1, CHUNK_ELEMENTS // per_tile)
    bounds = [(a, min(a + step, nb)) for a in range(0, nb, step)]
    if len(bounds) > 1 and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        alpha = torch.cat([checkpoint(logits, a, b, use_reentrant=False) for a, b in bounds])
    else:
        alpha = torch.cat([logits(a, b) for a, b in bounds])  # [nb, H, S, S]

    work = alpha.float() if alpha.dtype in _HALF else alpha
    cnt = lay.counts[:, None].to(work.dtype)  # [nb, 1, S, S]
    work = work.masked_fill(cnt == 0, float("-inf"))
    m = scatter(work.detach().amax(-1), lay.rows, 0, dim_size=lay.num_row_blocks, reduce="max")
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # [nr, H, S]
    e = cnt * (work - m.index_select(0, lay.rows).unsqueeze(-1)).exp()  # [nb, H, S, S]
    denom = scatter(e.sum(-1), lay.rows, 0, dim_size=lay.num_row_blocks, reduce="sum")
    prob = e / denom.clamp_min(1.0).index_select(0, lay.rows).unsqueeze(-1)  # [nb, H, S, S]
    if p.training and p.dropout > 0:
        prob = F.dropout(prob, p.dropout, True)
    vt = tiles(v, lay.num_col_blocks, lay.cols)  # [nb, H, S, D]
    blk = prob @ (vt.to(prob.dtype))  # [nb, H, S, D]
    out = blk.new_zeros(lay.num_row_blocks, H, S, D).index_add_(0, lay.rows, blk)
    out = out.transpose(1, 2).reshape(-1, H, D)[: graph.num_dst]  # [N_t, H, D]
    return BackendOutput(out.to(v.dtype), None, None)


def _slabs_of(lay: BlockLayout) -> Slabs | None:
    return slabs(lay.rows, lay.cols, lay.counts, lay.num_row_blocks, lay.num_col_blocks)


_NO_CTX = DenseContext(torch.empty(0), torch.empty(0))


class _PaddedEdges(Edges):
    """Edges over padded tiles: positions come from padded position vectors."""

    def __init__(
        self, src: Tensor, dst: Tensor, graph: TokenGraph, pos_q: Tensor, pos_k: Tensor
    ) -> None:
        super().__init__(src, dst, graph)
        self._pos_q, self._pos_k = pos_q, pos_k

    def pos_src(self) -> Tensor:
        return self._pos_k.index_select(0, self.src)  # [e]

    def pos_dst(self) -> Tensor:
        return self._pos_q.index_select(0, self.dst)  # [e]
