"""gatattn: transformer self-attention as graph attention.

    α_ij = w(i, j)     Attn_ij = softmax_{j ∈ N(i)} α_ij     out_i = W_o ‖_h Σ_{j ∈ N(i)} Attn_ij v_j

See docs/math.md for the equations and docs/api.md for the public contract.
"""

from .biases import ALiBi, EdgeFeatureBias, RelativePositionBias, ScoreBias
from .graph import TokenGraph, as_token_graph, complete_graph, from_mask
from .interop import GraphMultiheadAttention, GraphTransformerEncoderLayer, convert
from .layer import Attention, GraphAttention
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
    "complete_graph",
    "convert",
    "from_mask",
    "make_score",
    "neighbourhood_softmax",
    "register_score",
]
