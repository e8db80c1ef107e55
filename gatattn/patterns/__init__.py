"""Attention-pattern builders: every sparse-attention paper is a choice of N(i).

Each builder returns a :class:`~gatattn.TokenGraph` whose edges are sorted by target, then
source, built with vectorised tensor ops (a loop per sequence or per offset at most, never per
token). Builders over sequences take ``n`` for one sequence or ``lengths=[L_1, ..., L_B]`` for a
block-diagonal batch (positions restart in every sequence, as in ``complete_graph``). Every
docstring states N(i) as a set formula, whether self-loops are included, and its source.

Structure tags and params (read by fast backends; keep them stable):

===============  =====================================================================  ==================
tag              params                                                                 builder
===============  =====================================================================  ==================
``causal``       ``{}``                                                                 causal_graph
``window``       ``window``, ``dilation``, ``causal``                                   window_graph
``global``       ``global_tokens`` (sorted tuple), ``window`` (int or None)             global_graph
``bigbird``      ``block_size``, ``window_blocks``, ``global_blocks``, ``random_blocks``,  bigbird_graph
                 ``seed``
``block``        ``block_size``                                                         block_graph
``strided``      ``stride``, ``causal``                                                 strided_graph
``fixed``        ``stride``, ``summary``, ``causal``                                    fixed_graph
``star``         ``{}``                                                                 star_graph
``sink_window``  ``num_sinks``, ``window``                                              sink_window_graph
``knn``          ``k``                                                                  knn_graph
``radius``       ``r``                                                                  radius_graph
``bipartite``    ``kv_lengths`` (tuple of key lengths of a batch, or None)              bipartite_graph
``complete``     ``self_loops``                                                         complete_graph (core)
``None``         (irregular)                                                            from_padding_mask, from_mask
===============  =====================================================================  ==================

``graph.lengths`` holds the per-sequence lengths of a batch (None for one sequence). A graph
made by ``|``, ``&`` or ``from_mask`` has no tag (``from_mask`` tags a full mask ``complete``).

Edge cap: a builder that would create more than ``MAX_EDGES`` (50 million) edges raises a
ValueError naming the count; pass ``max_edges=<int>`` or ``max_edges=None`` to allow it.
"""

from ._common import MAX_EDGES
from .bigbird import bigbird_block_mask, bigbird_graph
from .complete import complete_graph, from_mask
from .draw import GALLERY, show
from .masks import bipartite_graph, from_padding_mask
from .sequence import (
    block_graph,
    causal_graph,
    fixed_graph,
    global_graph,
    star_graph,
    strided_graph,
    window_graph,
)
from .shortest_path import ShortestPaths, shortest_path_distances, shortest_paths
from .spatial import knn_graph, radius_graph
from .streaming import sink_window_graph

__all__ = [
    "GALLERY",
    "MAX_EDGES",
    "ShortestPaths",
    "bigbird_block_mask",
    "bigbird_graph",
    "bipartite_graph",
    "block_graph",
    "causal_graph",
    "complete_graph",
    "fixed_graph",
    "from_mask",
    "from_padding_mask",
    "global_graph",
    "knn_graph",
    "radius_graph",
    "shortest_path_distances",
    "shortest_paths",
    "show",
    "sink_window_graph",
    "star_graph",
    "strided_graph",
    "window_graph",
]
