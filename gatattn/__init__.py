"""gatattn: transformer self-attention as graph attention.

    α_ij = w(i, j)     Attn_ij = softmax_{j ∈ N(i)} α_ij     out_i = W_o ‖_h Σ_{j ∈ N(i)} Attn_ij v_j

See docs/math.md for the equations and docs/architecture.md for the layers of the package.
"""

from . import analysis, distributed, hf, plot, pretrained
from ._version import __version__
from .analysis import attention_flow, attention_rollout
from .backends import Backend, BackendOutput, Problem, register_backend
from .export import from_networkx, layered_graph, read_graph, to_networkx, write_graph
from .graph import TokenGraph, as_token_graph
from .graphormer import AddShortestPaths, DegreeEncoding, GraphormerLayer, GraphToken
from .interop import GraphMultiheadAttention, GraphTransformerEncoderLayer, convert
from .kernels import neighbourhood_softmax
from .nn import Attention, GraphAttention
from .patterns import (
    ShortestPaths,
    bigbird_graph,
    bipartite_graph,
    block_graph,
    causal_graph,
    complete_graph,
    fixed_graph,
    from_mask,
    from_padding_mask,
    global_graph,
    knn_graph,
    radius_graph,
    shortest_path_distances,
    shortest_paths,
    sink_window_graph,
    star_graph,
    strided_graph,
    window_graph,
)
from .pyg import GraphTransformerBlock
from .scores import (
    ALiBi,
    EdgeFeatureBias,
    PathEncodingBias,
    RelativePositionBias,
    Rotary,
    ScoreBias,
    ScoreFunction,
    Softcap,
    SpatialBias,
    make_score,
    register_score,
)

__all__ = [
    "ALiBi",
    "AddShortestPaths",
    "Attention",
    "Backend",
    "BackendOutput",
    "DegreeEncoding",
    "EdgeFeatureBias",
    "GraphAttention",
    "GraphMultiheadAttention",
    "GraphToken",
    "GraphTransformerBlock",
    "GraphTransformerEncoderLayer",
    "GraphormerLayer",
    "PathEncodingBias",
    "Problem",
    "RelativePositionBias",
    "Rotary",
    "ScoreBias",
    "ScoreFunction",
    "ShortestPaths",
    "Softcap",
    "SpatialBias",
    "TokenGraph",
    "__version__",
    "analysis",
    "as_token_graph",
    "attention_flow",
    "attention_rollout",
    "bigbird_graph",
    "bipartite_graph",
    "block_graph",
    "causal_graph",
    "complete_graph",
    "convert",
    "distributed",
    "fixed_graph",
    "from_mask",
    "from_networkx",
    "from_padding_mask",
    "global_graph",
    "hf",
    "knn_graph",
    "layered_graph",
    "make_score",
    "neighbourhood_softmax",
    "plot",
    "pretrained",
    "radius_graph",
    "read_graph",
    "register_backend",
    "register_score",
    "shortest_path_distances",
    "shortest_paths",
    "sink_window_graph",
    "star_graph",
    "strided_graph",
    "to_networkx",
    "window_graph",
    "write_graph",
]
