"""Shortest-path graphs: the complete graph of each input graph, with hop distances (Graphormer).

    N(i) = { j : graph(j) = graph(i) }        dist_ij = φ(j → i), hops along the input edges

φ(j → i) is the number of edges on a shortest directed path from the source j to the target i
following the input edges row 0 → row 1 (PyG's flow), clipped to ``max_distance``; pairs with no
path get ``max_distance + 1``. It is Graphormer's spatial encoding input (Ying et al. 2021, "Do
Transformers Really Perform Badly for Graph Representation?", Sec. 3.1.2).

How: breadth-first search from every node at once, as 0/1 matrix products on adjacency blocks
[B_k, P, P], one block per size P (the B_k graphs of that size; no padding, so a block's distances
are already in the complete graph's edge order). Each level is one product: ``bmm`` for dense
blocks, a sparse product (O(E·P)) for sparse ones. The search stops when no pair is newly reached
or after ``max_distance`` levels; the pairs still unreached are then only sorted into "farther"
and "no path": by connected components when every edge goes both ways, else by squaring the
reach matrix (O(log(diameter / max_distance)) products). The work
is per graph, never all pairs of the whole block-diagonal batch. ``scipy.sparse.csgraph`` runs
one Python call per graph, and networkx one BFS per node; both are slower on batches of small
graphs (benchmarks/bench_graph_transformers.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..graph import TokenGraph
from ..validation import check_batch_ids, validate_edge_index
from .complete import complete_graph

__all__ = ["ShortestPaths", "shortest_path_distances", "shortest_paths"]

#: Upper bound on the elements of one [B_k, P, P, P] temporary of the path search.
_PATH_CHUNK = 1 << 22
#: A block searches with a sparse adjacency when its edges fill less than 1/_SPARSE_RATIO of
#: B_k·P²: a sparse product then beats ``bmm`` (measured on CPU, batches of 30 to 1,000 nodes).
_SPARSE_RATIO = 32
#: The largest ``max_distance``: "no path" is coded max_distance + 1, which must fit in int64.
MAX_DISTANCE = 2**63 - 2


@dataclass(frozen=True)
class ShortestPaths:
    """The result of ``shortest_paths``: the complete graph, distances and (optionally) paths.

    Attributes:
        graph: the complete graph over the nodes of each input graph (self pairs included),
            block-diagonal by ``batch``; ``graph.lengths`` holds the node count of each graph.
        distance: LongTensor [E_c], aligned with ``graph.edge_index``: hops from source j to
            target i, clipped to ``max_distance``; ``max_distance + 1`` where there is no path.
        path: LongTensor [E_c, M] (M = ``max_hops``): the ids (columns of the input
            ``edge_index``) of the first M edges of one shortest path from j to i, in order
            from j; -1 where the path is shorter. None when ``max_hops=0``.
    """

    graph: TokenGraph
    distance: Tensor
    path: Tensor | None = None

    def path_inputs(self, edge_attr: Tensor) -> dict[str, Tensor]:
        """The per-edge inputs of ``SpatialBias`` and ``PathEncodingBias`` for ``GraphAttention``.

        Args:
            edge_attr: features of the input edges [E_in, F] ([E_in] is read as [E_in, 1]).

        Returns:
            ``{"distance": [E_c], "path_attr": [E_c, M, F], "path_len": [E_c]}``: the features
            of the edges along each path (zero rows past its end) and the number of edges used.

        Raises:
            ValueError: no paths were computed (``max_hops=0``), or ``edge_attr`` is not [E_in, F].
            TypeError: ``edge_attr`` is not floating point (the path features meet
                ``PathEncodingBias``'s float weights; one-hot encode categories first).
        """
        if self.path is None:
            raise ValueError("path_inputs needs paths: call shortest_paths(..., max_hops=M > 0)")
        if not edge_attr.is_floating_point():
            raise TypeError(
                f"edge_attr must be floating point (PathEncodingBias weighs the features of "
                f"each path edge), got dtype {edge_attr.dtype}; one-hot encode categories first"
            )
        attr = edge_attr.unsqueeze(-1) if edge_attr.dim() == 1 else edge_attr  # [E_in, F]
        if attr.dim() != 2:
            raise ValueError(f"edge_attr must be [E_in, F], got shape {list(edge_attr.shape)}")
        valid = self.path >= 0  # [E_c, M]
        if valid.any() and int(self.path.max()) >= attr.size(0):
            raise ValueError(
                f"edge_attr has {attr.size(0)} rows but the paths use input edge "
                f"{int(self.path.max())}: pass the features of the input edges"
            )
        feats = attr[self.path.clamp(min=0)] * valid.unsqueeze(-1).to(attr.dtype)  # [E_c, M, F]
        return {"distance": self.distance, "path_attr": feats, "path_len": valid.sum(-1)}


def _check_max(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if name == "max_distance" and value > MAX_DISTANCE:
        raise ValueError(
            f"max_distance must be at most 2**63 - 2 (no path is coded max_distance + 1, a "
            f"LongTensor value), got {value!r}"
        )
    return value


def _graph_sizes(batch: Tensor | None, num_nodes: int, edge_index: Tensor) -> Tensor:
    """Node count of each input graph [B], after checking ``batch`` against ``edge_index``."""
    if batch is None:
        return torch.tensor([num_nodes], device=edge_index.device)
    if not isinstance(batch, Tensor) or batch.dim() != 1 or batch.numel() != num_nodes:
        shape = list(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
        raise ValueError(f"batch must be a LongTensor [num_nodes={num_nodes}], got {shape}")
    if batch.dtype != torch.long:
        raise ValueError(f"batch must have dtype torch.long, got {batch.dtype}")
    check_batch_ids(batch, "shortest_paths")
    if bool((batch[1:] < batch[:-1]).any()):
        raise ValueError(
            "batch must be sorted (the nodes of each graph contiguous, as PyG's Batch gives them)"
        )
    if edge_index.numel():
        cross = batch[edge_index[0]] != batch[edge_index[1]]  # [E]
        if bool(cross.any()):
            e = int(cross.nonzero()[0])
            j, i = int(edge_index[0, e]), int(edge_index[1, e])
            raise ValueError(
                f"batch disagrees with edge_index: edge {e} ({j} -> {i}) joins graph "
                f"{int(batch[j])} to graph {int(batch[i])}"
            )
    sizes = torch.bincount(batch)  # [B] (ids with no node give 0 and are dropped)
    return sizes[sizes > 0]


def _bfs(flat: Tensor, B: int, P: int, limit: int | None) -> Tensor:
    """All-pairs hop counts of a block of B graphs of P nodes by breadth-first search.

    ``flat`` names the edges m → i by their index (s·P + i)·P + m in [B, P, P]. R_d[i, j] = 1
    iff j reaches i in at most d hops: R_0 = I, R_d = min(R_{d-1} + A R_{d-1}, 1), one matrix
    product per level (sparse A for sparse graphs: O(E·P) per level; else one ``bmm``). The
    search stops at the first d with R_d = R_{d-1}, or after ``limit`` levels: then the pairs
    not reached yet are only told reachable or not (``_reachable``). Float 0/1 products are
    exact (sums stay below 2^24).

    Shapes:
        flat [e] -> dist [B, P, P] long: dist[b, i, j] = hops j → i when at most ``limit``
        (every distance when ``limit`` is None), ``limit + 1`` when j reaches i in more hops,
        -1 when j does not reach i.
    """
    device = flat.device
    levels = P - 1 if limit is None else min(max(limit, 1), P - 1)
    reach = torch.eye(P, device=device).expand(B, P, P).contiguous()  # R_0 [B, P, P]
    dist = torch.eye(P, dtype=torch.long, device=device).sub_(1).expand(B, P, P).contiguous()
    if flat.numel() * _SPARSE_RATIO < B * P * P:  # sparse: A R costs O(E·P), not O(P³)
        s, i, m = flat // (P * P), flat // P % P, flat % P
        idx = torch.stack([s * P + i, s * P + m])  # [2, e] rows and columns of the block diagonal
        adj = torch.sparse_coo_tensor(
            idx, torch.ones(flat.numel(), device=device), (B * P, B * P), check_invariants=False
        ).coalesce()

        def step(r: Tensor) -> Tensor:
            return (r + torch.sparse.mm(adj, r.view(B * P, P)).view(B, P, P)).clamp_(max=1.0)

    else:
        dense = torch.zeros(B * P * P, device=device)
        dense[flat] = 1.0
        dense = dense.view(B, P, P)  # dense[s, i, m] = 1 iff an edge m -> i

        def step(r: Tensor) -> Tensor:
            return torch.baddbmm(r, dense, r).clamp_(max=1.0)

    total = B * P  # pairs reached so far
    for d in range(1, levels + 1):
        nxt = step(reach)  # R_d [B, P, P]
        now = int(torch.count_nonzero(nxt))
        if now == total:
            return dist
        dist.masked_fill_((nxt > reach), d)
        reach, total = nxt, now
    if limit is None or levels == P - 1:
        return dist
    return dist.masked_fill_(_reachable(flat, reach, total, B, P) & (dist < 0), limit + 1)


def _reachable(flat: Tensor, reach: Tensor, total: int, B: int, P: int) -> Tensor:
    """Which j reach which i at all, from R_d (``reach``, ``total`` nonzeros) that covers paths
    of up to d hops: for edges in both directions, the connected components (one SciPy call,
    O(E + B·P)); else R squared until it stops growing (R_{2d} = min(R_d R_d, 1)).

    Shapes:
        flat [e], reach [B, P, P] -> [B, P, P] bool.
    """
    s, i, m = flat // (P * P), flat // P % P, flat % P
    mirror = (s * P + m) * P + i  # [e] the reverse edge's index
    if torch.equal(torch.unique(flat), torch.unique(mirror)):
        from scipy.sparse import coo_array
        from scipy.sparse.csgraph import connected_components

        rows, cols = (s * P + i).cpu().numpy(), (s * P + m).cpu().numpy()
        adj = coo_array((np.ones(rows.size), (rows, cols)), shape=(B * P, B * P))
        _, label = connected_components(adj, directed=False)
        comp = torch.from_numpy(label).to(reach.device).view(B, P)  # [B, P]
        return comp[:, :, None] == comp[:, None, :]
    while True:
        nxt = torch.bmm(reach, reach).clamp_(max=1.0)  # R_{2d} [B, P, P]
        now = int(torch.count_nonzero(nxt))
        if now == total:
            return reach > 0
        reach, total = nxt, now


def _successors(adj: Tensor, dist: Tensor) -> Tensor:
    """First hop of a shortest path: ``succ[b, i, j] = m`` with an edge j → m and
    dist[i, m] = dist[i, j] - 1 (the smallest such m).

    Shapes:
        adj [B, P, P], dist [B, P, P] (-1 = no path) -> succ [B, P, P] long.
    """
    B, P, _ = adj.shape
    out = torch.zeros(B, P, P, dtype=torch.long, device=adj.device)
    # temporaries [b, r, P, P] of at most _PATH_CHUNK elements: graphs, then targets i, in chunks
    rows = max(1, min(P, _PATH_CHUNK // max(1, P * P)))
    graphs = max(1, _PATH_CHUNK // max(1, rows * P * P))
    edge = adj > 0  # [B, m, j]: edge j -> m
    for s in range(0, B, graphs):
        for r in range(0, P, rows):
            d = dist[s : s + graphs, r : r + rows]  # [b, r, x]: dist[i, x] for these targets
            closer = d[:, :, :, None] == (d[:, :, None, :] - 1)  # [b, r, m, j]
            ok = closer & edge[s : s + graphs, None, :, :] & (d[:, :, None, :] > 0)
            out[s : s + graphs, r : r + rows] = ok.to(torch.uint8).argmax(2)  # [b, r, j]
    return out


def shortest_paths(
    edge_index: Tensor,
    num_nodes: int,
    *,
    batch: Tensor | None = None,
    max_distance: int = 20,
    max_hops: int = 0,
) -> ShortestPaths:
    """Hop distances (and optionally one shortest path) between all node pairs of each graph.

    .. math::
        N(i) = \\{ j : \\mathrm{graph}(j) = \\mathrm{graph}(i) \\}, \\qquad
        \\mathrm{dist}_{ij} = \\min(\\varphi(j \\to i), \\; d_{max}), \\;\\;
        d_{max} + 1 \\text{ if no path}

    φ(j → i) counts the edges of a shortest directed path from j to i along the input edges
    (row 0 → row 1); give both directions (``torch_geometric.utils.to_undirected``) for an
    undirected graph. Isolated nodes and 1-node graphs are fine.

    Args:
        edge_index: the input graphs' edges [2, E_in], row 0 source, row 1 target.
        num_nodes: N, the number of nodes of all input graphs together.
        batch: graph id of each node [N], sorted (as PyG's ``Batch`` gives it); None for one
            graph. Edges must stay within a graph.
        max_distance: d_max, 0 <= d_max <= 2**63 - 2; longer distances are clipped to it
            (default 20). The search stops after d_max levels; pairs farther apart are then
            only told reachable or not.
        max_hops: M >= 0, how many edges of one shortest path to return per pair (Graphormer's
            ``multi_hop_max_dist``; default 0: no paths).

    Returns:
        A ``ShortestPaths`` (graph, distance [E_c], path [E_c, M] or None), with
        E_c = Σ_b n_b², in ``complete_graph(lengths=...)`` edge order (by target, then source).

    Raises:
        ValueError: ``max_distance`` or ``max_hops`` is not an int >= 0, ``max_distance`` >
            2**63 - 2, ``num_nodes`` < 1, ``batch`` is malformed, unsorted or disagrees with
            ``edge_index``.
        TypeError: ``edge_index`` is not a LongTensor.
        ValueError: ``edge_index`` is on the meta device (the search reads the edges' values).
    """
    if isinstance(edge_index, Tensor) and edge_index.device.type == "meta":
        raise ValueError(
            "edge_index is on the meta device, which holds no values; the shortest paths are "
            "computed from the edges themselves: pass a CPU or CUDA edge_index"
        )
    max_distance = _check_max(max_distance, "max_distance")
    max_hops = _check_max(max_hops, "max_hops")
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise ValueError(f"num_nodes must be an int >= 1, got {num_nodes!r}")
    validate_edge_index(edge_index, num_nodes, num_nodes)
    device = edge_index.device
    sizes = _graph_sizes(batch, num_nodes, edge_index)  # [B]
    B = sizes.numel()
    starts = torch.cumsum(sizes, 0) - sizes  # [B] first node of each graph
    graph_of = torch.arange(B, device=device).repeat_interleave(sizes)  # [N]
    local = torch.arange(num_nodes, device=device) - starts[graph_of]  # [N] position in graph
    num_pairs = sizes * sizes  # [B]
    pair_start = torch.cumsum(num_pairs, 0) - num_pairs  # [B] first complete edge of each graph
    E_c = int(num_pairs.sum())
    dist = torch.empty(E_c, dtype=torch.long, device=device)
    path = torch.full((E_c, max_hops), -1, dtype=torch.long, device=device)

    # graphs grouped by size (stable: ascending ids within a size); slot = rank among them
    order = torch.argsort(sizes, stable=True)  # [B]
    keys, per_bucket = torch.unique_consecutive(sizes[order], return_counts=True)  # [K]
    slot = torch.empty_like(order)
    slot[order] = torch.arange(B, device=device) - (
        torch.cumsum(per_bucket, 0) - per_bucket
    ).repeat_interleave(per_bucket)
    bucket = torch.searchsorted(keys, sizes)  # [B] bucket of each graph
    # every input edge once: its flat index (slot, target, source) in its bucket's block
    e_graph = graph_of[edge_index[0]]  # [E_in]
    P_e = sizes[e_graph]  # [E_in]
    flat_all = (slot[e_graph] * P_e + local[edge_index[1]]) * P_e + local[edge_index[0]]
    e_order = torch.argsort(bucket[e_graph], stable=True)  # [E_in] edges by bucket
    flat_sorted = flat_all[e_order]
    e_end = torch.cumsum(torch.bincount(bucket[e_graph], minlength=keys.numel()), 0).tolist()
    g_end = torch.cumsum(per_bucket, 0).tolist()
    for k, P in enumerate(keys.tolist()):
        members = order[(g_end[k - 1] if k else 0) : g_end[k]]  # [B_k] graphs of this bucket
        e0 = e_end[k - 1] if k else 0
        flat = flat_sorted[e0 : e_end[k]]  # [e_in] this bucket's input edges
        # hops [B_k, P, P] (-1 = no path); exact up to max_distance, all of them for paths
        raw = _bfs(flat, members.numel(), P, None if max_hops else max_distance)
        # graph by graph, target-major: the complete graph's edge order within each graph
        d = raw.reshape(-1, P * P)  # [B_k, P²]
        pairs = pair_start[members, None] + torch.arange(P * P, device=device)  # [B_k, P²]
        dist[pairs] = torch.where(d < 0, max_distance + 1, d.clamp(max=max_distance))
        if max_hops:
            eid = torch.full((members.numel() * P * P,), -1, dtype=torch.long, device=device)
            ids = e_order[e0 : e_end[k]]  # [e_in] ids of this bucket's input edges
            eid.scatter_reduce_(0, flat, ids, reduce="amax")  # one id per (m -> i)
            eid = eid.view(-1, P, P)  # [B_k, P(target), P(source)]
            adj = torch.zeros(members.numel() * P * P, device=device)
            adj[flat] = 1.0  # adj[s, i, m] = 1 iff an edge m -> i
            succ = _successors(adj.view(-1, P, P), raw)  # [B_k, P, P]
            s = torch.arange(members.numel(), device=device)[:, None]  # [B_k, 1]
            ar = torch.arange(P, device=device)
            i, cur = ar[:, None].expand(P, P).reshape(-1), ar.repeat(P)  # [P²] target, source
            left = d.clamp(min=0)  # [B_k, P²] walk from the source j = cur towards the target i
            cur = cur.expand_as(left)
            for n in range(max_hops):
                on = left > 0
                nxt = succ[s, i, cur]  # [B_k, P²]
                path[pairs, n] = torch.where(on, eid[s, nxt, cur], -1)
                cur = torch.where(on, nxt, cur)
                left = left - on.long()
    g = complete_graph(lengths=sizes.tolist(), device=device)
    return ShortestPaths(g, dist, path if max_hops else None)


def shortest_path_distances(
    edge_index: Tensor,
    num_nodes: int,
    *,
    batch: Tensor | None = None,
    max_distance: int = 20,
) -> tuple[TokenGraph, Tensor]:
    """The complete graph of each input graph and the hop distance on each of its edges.

    .. math::
        \\mathrm{dist}_{ij} = \\min(\\varphi(j \\to i), \\; d_{max}), \\quad
        d_{max} + 1 \\text{ when no path leads from } j \\text{ to } i

    The input of ``SpatialBias`` (Ying et al. 2021, Sec. 3.1.2): pass ``edge_attr=dist`` to a
    ``GraphAttention`` over ``g``. See ``shortest_paths`` for the method and the paths.

    Args:
        edge_index: the input graphs' edges [2, E_in] (row 0 source j, row 1 target i).
        num_nodes: N, the number of nodes of all input graphs together.
        batch: graph id of each node [N], sorted; None for one graph.
        max_distance: 0 <= d_max <= 2**63 - 2 (default 20).

    Returns:
        ``(g, dist)``: g a TokenGraph, the complete graph per input graph (block-diagonal,
        self pairs included, tag ``"complete"``, ``g.lengths`` = node counts), and dist a
        LongTensor [g.num_edges] aligned with ``g.edge_index``.

    Shapes:
        edge_index [2, E_in], batch [N] -> g.edge_index [2, Σ_b n_b²], dist [Σ_b n_b²].

    Raises:
        ValueError: a negative, non-integer or too large (> 2**63 - 2) ``max_distance``,
            ``num_nodes`` < 1, a ``batch`` that is malformed, unsorted or disagrees with
            ``edge_index``, or an ``edge_index`` on the meta device.
        TypeError: ``edge_index`` is not a LongTensor.
    """
    res = shortest_paths(edge_index, num_nodes, batch=batch, max_distance=max_distance)
    return res.graph, res.distance
