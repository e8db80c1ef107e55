"""Neighbourhoods by position, for point clouds and molecules: k nearest neighbours and radius.

Hand-written instead of ``torch_geometric.nn.knn_graph``/``radius_graph`` because those need the
optional torch-cluster extension. The work is chunked by rows of the distance matrix
(``torch.cdist`` on a block of targets, then ``topk`` or a threshold), so memory is bounded by
``chunk_size`` distances plus the result, whatever N is. Distances are computed directly
(``compute_mode="donot_use_mm_for_euclid_dist"``), not by the matmul expansion, so ties and the
radius boundary are exact. Flow: j → i where j is a neighbour of i (i attends to its neighbours).

On the CPU, sequences of at least ``KDTREE_MIN`` points go to SciPy's ``cKDTree`` instead
(``method="auto"``): brute force is O(L²) distance work, the tree O(L log L), which for 50k points
is about 30x faster (benchmarks/bench_patterns.py). ``method="brute"`` / ``"kdtree"`` force one;
tests/patterns/test_patterns.py checks that both give the same graph.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from ..graph import TokenGraph, check_lengths
from ..validation import check_batch_ids
from ._common import MAX_EDGES, check_edge_cap, positive_int

__all__ = ["knn_graph", "radius_graph"]

#: Distances held at once per chunk (float32: 64 MB).
CHUNK_SIZE = 1 << 24
#: Sequences at least this long use SciPy's cKDTree on the CPU under method="auto".
KDTREE_MIN = 2048
_METHODS = ("auto", "brute", "kdtree")


def _use_kdtree(method: str, pos: Tensor, seq: Sequence[int], name: str) -> bool:
    if method not in _METHODS:
        raise ValueError(f"{name}: method must be one of {list(_METHODS)}, got {method!r}")
    if method == "brute":
        return False
    if method == "kdtree":
        if pos.device.type != "cpu":
            raise ValueError(f"{name}: method='kdtree' runs on the CPU; pos is on {pos.device}")
        return True
    return pos.device.type == "cpu" and max(seq) >= KDTREE_MIN


def _knn_kdtree(pos: Tensor, seq: Sequence[int], k: int) -> Tensor:
    """Sources [N, k] (ascending per row) of each point's k nearest others, by cKDTree."""
    import numpy as np
    from scipy.spatial import cKDTree

    out, start = [], 0
    for length in seq:
        pts = pos[start : start + length].double().numpy()  # [L, d]
        _, idx = cKDTree(pts).query(pts, k=k + 1)  # [L, k + 1], nearest first
        idx = idx.reshape(length, k + 1)
        keep = idx != np.arange(length)[:, None]  # drop i itself...
        keep[keep.all(axis=1), -1] = False  # ...or, where duplicates hid it, the farthest
        nbr = np.sort(idx[keep].reshape(length, k), axis=1)  # [L, k]
        out.append(torch.from_numpy(nbr).long() + start)
        start += length
    return torch.cat(out)  # [N, k]


def _radius_kdtree(pos: Tensor, seq: Sequence[int], r: float, self_loops: bool) -> Tensor:
    """edge_index [2, E] of all pairs within r (both directions), sorted by target, by cKDTree."""
    import numpy as np
    from scipy.spatial import cKDTree

    parts, start = [], 0
    for length in seq:
        pts = pos[start : start + length].double().numpy()  # [L, d]
        pairs = cKDTree(pts).query_pairs(r, output_type="ndarray")  # [P, 2], i < j
        src = np.concatenate([pairs[:, 0], pairs[:, 1]])
        dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
        if self_loops:
            src = np.concatenate([src, np.arange(length)])
            dst = np.concatenate([dst, np.arange(length)])
        order = np.lexsort((src, dst))  # by target, then source
        parts.append(torch.from_numpy(np.stack([src[order], dst[order]])).long() + start)
        start += length
    return torch.cat(parts, dim=1)


def _sequences(
    pos: Tensor, lengths: Sequence[int] | Tensor | None, batch: Tensor | None, name: str
) -> tuple[Tensor, tuple[int, ...] | None]:
    """Check positions [N, d] and resolve ``lengths`` or a sorted ``batch`` vector [N]."""
    if not isinstance(pos, Tensor) or not pos.is_floating_point() or pos.dim() != 2:
        shape = list(pos.shape) if isinstance(pos, Tensor) else type(pos).__name__
        dtype = pos.dtype if isinstance(pos, Tensor) else None
        raise ValueError(f"{name}: pos must be a float tensor [N, d], got {shape} ({dtype})")
    finite = torch.isfinite(pos).all(1)  # [N]
    if pos.device.type != "meta" and not bool(finite.all()):  # (meta tensors hold no values)
        row = int((~finite).nonzero()[0, 0])
        raise ValueError(
            f"{name}: pos must be finite, but row {row} is {pos[row].tolist()} "
            f"({int((~finite).sum())} rows hold NaN or inf); distances to it are undefined"
        )
    if lengths is not None and batch is not None:
        raise ValueError(f"{name} takes lengths=[...] or batch=[N], not both")
    if batch is not None:
        if not isinstance(batch, Tensor) or batch.dtype != torch.long:
            dtype = batch.dtype if isinstance(batch, Tensor) else type(batch).__name__
            raise TypeError(f"{name}: batch must be a LongTensor [N] of graph ids, got {dtype}")
        if batch.dim() != 1 or batch.numel() != pos.size(0):
            raise ValueError(
                f"{name}: batch must be [N] = [{pos.size(0)}], got {list(batch.shape)}"
            )
        check_batch_ids(batch, name)
        counts = torch.bincount(batch)  # [B]
        if bool((batch[1:] < batch[:-1]).any()) or bool((counts == 0).any()):
            raise ValueError(f"{name}: batch must be sorted with ids 0..B-1 and no gaps")
        lengths = counts
    if lengths is None:
        return pos.detach(), None
    seq = check_lengths(lengths)
    if sum(seq) != pos.size(0):
        raise ValueError(
            f"{name}: lengths={list(seq)} sum to {sum(seq)}, but pos has {pos.size(0)} rows"
        )
    return pos.detach(), seq


def _row_blocks(
    pos: Tensor, seq: Sequence[int], chunk_size: int
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Yield (sequence start, global target rows [c], distances [c, L]) block by block."""
    start = 0
    for length in seq:
        pts = pos[start : start + length]  # [L, d]
        rows = max(1, chunk_size // length)
        for r0 in range(0, length, rows):  # a loop per row block, not per token
            r1 = min(r0 + rows, length)
            dist = torch.cdist(
                pts[r0:r1], pts, compute_mode="donot_use_mm_for_euclid_dist"
            )  # [c, L]
            yield start, torch.arange(r0, r1, device=pos.device), dist
        start += length


def knn_graph(
    pos: Tensor,
    k: int,
    *,
    lengths: Sequence[int] | Tensor | None = None,
    batch: Tensor | None = None,
    self_loops: bool = False,
    chunk_size: int = CHUNK_SIZE,
    max_edges: int | None = MAX_EDGES,
    method: str = "auto",
) -> TokenGraph:
    """k-nearest-neighbour graph by Euclidean distance (as PyG's ``knn_graph``, Qi et al. 2017
    PointNet++ and Wang et al. 2019 DGCNN use for point clouds).

    .. math:: N(i) = \\mathrm{kNN}_k(i) \\subset \\{ j \\ne i : \\mathrm{seq}(j) = \\mathrm{seq}(i) \\}
        \\;(\\cup \\{ i \\} \\text{ if self\\_loops})

    Every target has in-degree exactly k (k + 1 with self-loops). Ties are broken by ``topk``.
    Tag ``"knn"``, params ``{"k": k}``.

    Args:
        pos: positions [N, d], float.  k: 1 <= k <= L_b − 1 for every sequence.
        lengths / batch: keep sequences apart (block-diagonal).  self_loops: add i → i.
        chunk_size: distances held at once (brute force).
        method: ``"auto"`` (cKDTree on the CPU for sequences >= KDTREE_MIN points, else brute
            force), ``"brute"`` or ``"kdtree"``.

    Shapes:
        edge_index [2, E], E = N k, sorted by target then source.
    """
    pos, seq = _sequences(pos, lengths, batch, "knn_graph")
    k = positive_int(k, "k")
    n = pos.size(0)
    shortest = min(seq) if seq is not None else n
    if k > shortest - 1:
        raise ValueError(
            f"knn_graph: k={k} > n - 1 = {shortest - 1} (the other points of the smallest sequence)"
        )
    check_edge_cap(n * (k + int(self_loops)), max_edges, "knn_graph")
    chunk = positive_int(chunk_size, "chunk_size")
    srcs = []
    if _use_kdtree(method, pos, seq or (n,), "knn_graph"):
        nbr = _knn_kdtree(pos, seq or (n,), k)  # [N, k]
        if self_loops:
            nbr = torch.cat([nbr, torch.arange(n)[:, None]], dim=1).sort(dim=1).values
        srcs.append(nbr)
    for start, rows, dist in _row_blocks(pos, seq or (n,), chunk) if not srcs else ():
        dist[torch.arange(rows.numel(), device=pos.device), rows] = float("inf")  # exclude i itself
        nbr = dist.topk(k, dim=1, largest=False).indices  # [c, k]
        if self_loops:
            nbr = torch.cat([nbr, rows[:, None]], dim=1)  # [c, k + 1]
        srcs.append(nbr.sort(dim=1).values + start)  # [c, k'] ascending sources
    src = torch.cat(srcs).flatten()  # [E]
    dst = torch.arange(n, device=pos.device).repeat_interleave(k + int(self_loops))  # [E]
    return TokenGraph(
        torch.stack([src, dst]), n, n, structure="knn", lengths=seq, params={"k": k}, validate=False
    )


def radius_graph(
    pos: Tensor,
    r: float,
    *,
    lengths: Sequence[int] | Tensor | None = None,
    batch: Tensor | None = None,
    self_loops: bool = False,
    chunk_size: int = CHUNK_SIZE,
    max_edges: int | None = MAX_EDGES,
    method: str = "auto",
) -> TokenGraph:
    """Radius graph: every point within distance r (as PyG's ``radius_graph``; the cutoff graph
    of molecular models such as SchNet, Schütt et al. 2017).

    .. math:: N(i) = \\{ j \\ne i : \\mathrm{seq}(j) = \\mathrm{seq}(i),\\; \\|x_i - x_j\\| \\le r \\}
        \\;(\\cup \\{ i \\} \\text{ if self\\_loops})

    A point with no neighbour is an isolated target (it outputs 0). Tag ``"radius"``, params
    ``{"r": r}``.

    Args:
        pos: positions [N, d], float.  r: radius > 0.  lengths / batch: keep sequences apart.
        method: ``"auto"``, ``"brute"`` or ``"kdtree"``, as in ``knn_graph``.

    Shapes:
        edge_index [2, E], sorted by target then source.
    """
    pos, seq = _sequences(pos, lengths, batch, "radius_graph")
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not r > 0:
        raise ValueError(f"radius_graph: r must be a number > 0, got {r!r}")
    n = pos.size(0)
    chunk = positive_int(chunk_size, "chunk_size")
    parts, total = [], 0
    if _use_kdtree(method, pos, seq or (n,), "radius_graph"):
        parts.append(_radius_kdtree(pos, seq or (n,), float(r), self_loops))
        check_edge_cap(parts[0].size(1), max_edges, "radius_graph")
    for start, rows, dist in _row_blocks(pos, seq or (n,), chunk) if not parts else ():
        near = dist <= r  # [c, L]
        if not self_loops:
            near[torch.arange(rows.numel(), device=pos.device), rows] = False
        tgt, src = near.nonzero(as_tuple=True)  # row-major: by target, then source
        total += tgt.numel()
        check_edge_cap(total, max_edges, "radius_graph")
        parts.append(torch.stack([src + start, rows[tgt] + start]))
    return TokenGraph(
        torch.cat(parts, dim=1),
        n,
        n,
        structure="radius",
        lengths=seq,
        params={"r": r},
        validate=False,
    )
