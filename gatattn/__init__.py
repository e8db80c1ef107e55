"""gatattn: transformer self-attention as graph attention.

    α_ij = w(i, j)     Attn_ij = softmax_{j ∈ N(i)} α_ij     out_i = W_o ‖_h Σ_{j ∈ N(i)} Attn_ij v_j

See docs/math.md for the equations and docs/api.md for the public contract.
"""

from .biases import ALiBi, EdgeFeatureBias, RelativePositionBias, ScoreBias
from .graph import TokenGraph, as_token_graph, complete_graph, from_mask
from .interop import GraphMultiheadAttention, GraphTransformerEncoderLayer, convert
from .layer import Attention, GraphAttention
from .patterns import (
    bigbird_graph,
    bipartite_graph,
    block_graph,
    causal_graph,
    fixed_graph,
    from_padding_mask,
    global_graph,
    knn_graph,
    radius_graph,
    star_graph,
    strided_graph,
    window_graph,
)
from .scores import ScoreFunction, make_score, register_score
from .softmax import neighbourhood_softmax

__version__ = "0.1.0"

__all__ = [
    "ALiBi",
    "Attention",
    "EdgeFeatureBias",
    "GraphAttention",
    "GraphMultiheadAttention",
    "GraphTransformerEncoderLayer",
    "RelativePositionBias",
    "ScoreBias",
    "ScoreFunction",
    "TokenGraph",
    "__version__",
    "as_token_graph",
    "bigbird_graph",
    "bipartite_graph",
    "block_graph",
    "causal_graph",
    "complete_graph",
    "convert",
    "fixed_graph",
    "from_mask",
    "from_padding_mask",
    "global_graph",
    "knn_graph",
    "make_score",
    "neighbourhood_softmax",
    "radius_graph",
    "register_score",
    "star_graph",
    "strided_graph",
    "window_graph",
]
