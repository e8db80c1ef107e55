"""Graph transformers as graph attention (docs/graph_transformers.md): Graphormer's parts.

    degree      DegreeEncoding: h_i = x_i + z⁻_{deg⁻(i)} + z⁺_{deg⁺(i)}
    token       GraphToken: one virtual readout node per graph
    layer       GraphormerLayer: pre-LN, scaled_dot + SpatialBias (+ PathEncodingBias), FFN
    transform   AddShortestPaths: PyG transform that precomputes the distances per graph

The distances come from ``gatattn.patterns.shortest_path`` and the biases from
``gatattn.scores.structural``.
"""

from .degree import DegreeEncoding
from .layer import GraphormerLayer
from .token import GraphToken, WithGraphToken
from .transform import AddShortestPaths

__all__ = ["AddShortestPaths", "DegreeEncoding", "GraphToken", "GraphormerLayer", "WithGraphToken"]
