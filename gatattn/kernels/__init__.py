"""Kernels: the gather/scatter primitives and the neighbourhood softmax that backends build on.

edge_dot        s_e = <a_{dst(e)}, b_{src(e)}>                 [E, H]      (eq. 1 for dot scores)
softmax         Attn_e = exp(α_e − m_i) / Σ_{e'→i} exp(α_e' − m_i)   [E, H]  (eq. 2)
edge_aggregate  out_i = Σ_{e→i} w_e v_{src(e)}                 [N, H, D]   (eq. 3)
"""

from .ops import CHUNK_ELEMENTS, chunk_bounds, chunked_edge_map, edge_aggregate, edge_dot
from .softmax import neighbourhood_softmax

__all__ = [
    "CHUNK_ELEMENTS",
    "chunk_bounds",
    "chunked_edge_map",
    "edge_aggregate",
    "edge_dot",
    "neighbourhood_softmax",
]
