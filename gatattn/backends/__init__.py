"""Backends compute the same attention (docs/math.md, eqs. 1-3); ``dispatch`` picks one.

    base      the interface: Problem -> Backend.supports / Backend.run -> BackendOutput
    edge      the literal formula and the ground truth (any graph, any score)
    dense     one SDPA call (complete, causal, bipartite graphs)
    block     block-sparse torch (banded and block-structured graphs)
    flex      FlexAttention (CUDA), its BlockMask built from the tiles
    dispatch  the registry ``BACKENDS`` (a priority list), ``register_backend``, ``decide`` /
              ``select_backend`` and ``attend``
    rows      ``attention_rows``: α and Attn a block of target rows at a time (long inputs),
              on the keys of each row (``row_layout``), for sparse extraction

Every backend other than edge is proven equal to it (tests/backends/) before dispatch may choose it.
"""

from .base import Backend, BackendOutput, EdgeInput, EdgeModulation, Problem
from .dispatch import (
    BACKENDS,
    Decision,
    as_nodes,
    attend,
    backend_names,
    check_backend_name,
    decide,
    expand_kv,
    per_sequence,
    register_backend,
    select_backend,
    transform_nodes,
)
from .rows import ROW_BUDGET, AttentionRows, RowBlock, attention_rows

__all__ = [
    "BACKENDS",
    "ROW_BUDGET",
    "AttentionRows",
    "Backend",
    "BackendOutput",
    "Decision",
    "EdgeInput",
    "EdgeModulation",
    "Problem",
    "RowBlock",
    "as_nodes",
    "attend",
    "attention_rows",
    "backend_names",
    "check_backend_name",
    "decide",
    "expand_kv",
    "per_sequence",
    "register_backend",
    "select_backend",
    "transform_nodes",
]
