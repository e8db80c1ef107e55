"""``AddShortestPaths``: a PyG ``BaseTransform`` that precomputes Graphormer's inputs once per
graph of a dataset (``dataset = TUDataset(..., pre_transform=AddShortestPaths())``).

Per graph with n nodes it stores, in the order of ``complete_graph(n)``'s edges (by target,
then source), vectors that PyG's ``Batch`` concatenates into the batch's complete graph order:

    data.spd        LongTensor [n²]        hop distances (``shortest_path_distances``)
    data.path_attr  [n², M, F]             with ``max_hops=M`` and ``data.edge_attr`` [E, F]
    data.path_len   LongTensor [n²]        (``ShortestPaths.path_inputs``)
"""

from __future__ import annotations

import torch
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from ..graph import TokenGraph
from ..patterns.complete import complete_graph
from ..patterns.shortest_path import _check_max, shortest_paths
from ..validation import check_batch_ids

__all__ = ["AddShortestPaths"]


class AddShortestPaths(BaseTransform):
    """Add hop distances (and paths' edge features) of all node pairs to a PyG ``Data``.

    .. math:: \\mathrm{spd}[i \\cdot n + j] = \\min(\\varphi(j \\to i), d_{max}) \\;
        (d_{max} + 1 \\text{ if no path})

    After batching, ``AddShortestPaths.graph(batch)`` is the complete graph that ``batch.spd``
    is aligned with; pass ``edge_attr=batch.spd`` (or a mapping with ``"distance"``) to a
    layer with ``SpatialBias``.

    Args:
        max_distance: d_max, 0 <= d_max <= 2**63 - 2 (default 20).
        max_hops: M; when > 0 and the graph has ``edge_attr``, also ``path_attr`` and
            ``path_len`` for ``PathEncodingBias`` (default 0).

    Shapes:
        data with n nodes -> spd [n²] (+ path_attr [n², M, F], path_len [n²]).
    """

    def __init__(self, max_distance: int = 20, max_hops: int = 0) -> None:
        self.max_distance = _check_max(max_distance, "max_distance")
        self.max_hops = _check_max(max_hops, "max_hops")

    def forward(self, data: Data) -> Data:
        n = data.num_nodes
        if n is None or n < 1:
            raise ValueError(f"AddShortestPaths needs a graph with >= 1 node, got num_nodes={n}")
        edge_index = data.edge_index
        if edge_index is None:
            edge_index = torch.empty(2, 0, dtype=torch.long)
        res = shortest_paths(
            edge_index, int(n), max_distance=self.max_distance, max_hops=self.max_hops
        )
        data.spd = res.distance
        if self.max_hops and data.edge_attr is not None:
            inputs = res.path_inputs(data.edge_attr)
            data.path_attr, data.path_len = inputs["path_attr"], inputs["path_len"]
        return data

    @staticmethod
    def graph(data: Data) -> TokenGraph:
        """The complete graph of each graph of ``data`` (a ``Data`` or a ``Batch``) that the
        stored ``spd`` is aligned with."""
        batch = getattr(data, "batch", None)
        n = int(data.num_nodes)
        if batch is None:
            return complete_graph(lengths=[n], device=data.edge_index.device)
        check_batch_ids(batch, "AddShortestPaths.graph")
        sizes = torch.bincount(batch)
        return complete_graph(lengths=sizes[sizes > 0].tolist(), device=batch.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_distance={self.max_distance}, max_hops={self.max_hops})"
