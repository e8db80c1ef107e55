"""w(i, j): pluggable edge score functions (docs/math.md, eq. 1 and docs/scores.md).

    base        ScoreFunction, ScoreBias, Biased (score + biases), Edges, DenseContext
    functions   scaled_dot, dot, additive (GAT), gatv2, cosine, bilinear, neg_distance, callables
    biases      relative position (T5), ALiBi, edge features, per-edge values (masks)
    structural  Graphormer's spatial (hop distance) and path (edge) encodings
    softcap     c·tanh(w/c) around any score (Gemma 2)
    rotary      s·<R(p_i) q_i, R(p_j) k_j> (RoPE: partial, interleaved, axial positions)
    registry    names -> factories, ``make_score("gatv2+alibi", H, D)``

Imports run one way: base <- functions, biases, structural, softcap, rotary <- registry.
"""

from .base import (
    PER_EDGE,
    POSITION,
    Biased,
    BiasKind,
    DenseContext,
    Edges,
    ScoreBias,
    ScoreCallable,
    ScoreFunction,
    check_score_sizes,
    check_scores,
)
from .biases import (
    ALiBi,
    AttnMaskBias,
    EdgeFeatureBias,
    RelativePositionBias,
    alibi_slopes,
    t5_bucket,
)
from .functions import (
    Additive,
    Bilinear,
    CallableScore,
    Cosine,
    Dot,
    GATv2,
    NegDistance,
    ScaledDot,
)
from .registry import BIASES, SCORES, make_score, register_score
from .rotary import Rotary, ScaledDotScale, apply_rotary
from .softcap import Softcap
from .structural import GRAPH_TOKEN_DISTANCE, PathEncodingBias, SpatialBias

__all__ = [
    "BIASES",
    "GRAPH_TOKEN_DISTANCE",
    "PER_EDGE",
    "POSITION",
    "SCORES",
    "ALiBi",
    "Additive",
    "AttnMaskBias",
    "BiasKind",
    "Biased",
    "Bilinear",
    "CallableScore",
    "Cosine",
    "DenseContext",
    "Dot",
    "EdgeFeatureBias",
    "Edges",
    "GATv2",
    "NegDistance",
    "PathEncodingBias",
    "RelativePositionBias",
    "Rotary",
    "ScaledDot",
    "ScaledDotScale",
    "ScoreBias",
    "ScoreCallable",
    "ScoreFunction",
    "Softcap",
    "SpatialBias",
    "alibi_slopes",
    "apply_rotary",
    "check_score_sizes",
    "check_scores",
    "make_score",
    "register_score",
    "t5_bucket",
]
