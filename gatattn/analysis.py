"""Re-exports ``gatattn.inspect.analysis`` (and the matrix helpers it used to hold) under the old path.

The code lives in ``gatattn.inspect``: ``matrices`` (``attention_matrix``, ``adjusted_matrices``,
``HeadSpec``) and ``analysis`` (rollout, flow, entropy, weight sums, top edges, PageRank,
strength). This module keeps ``ga.analysis.<name>`` and ``from gatattn.analysis import <name>``
working; it defines nothing itself.
"""

from .inspect.analysis import (
    attention_entropy,
    attention_flow,
    attention_rollout,
    check_weights_sum,
    pagerank,
    strength,
    top_edges,
)
from .inspect.matrices import HeadSpec, LayerInput, adjusted_matrices, attention_matrix

__all__ = [
    "HeadSpec",
    "LayerInput",
    "adjusted_matrices",
    "attention_entropy",
    "attention_flow",
    "attention_matrix",
    "attention_rollout",
    "check_weights_sum",
    "pagerank",
    "strength",
    "top_edges",
]
