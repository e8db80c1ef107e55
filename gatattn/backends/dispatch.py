"""Backend selection (docs/backends.md).

``select_backend`` returns the backend name and the reason for the choice. ``backend="edge"``
forces the reference path; a forced backend that cannot run the score or graph raises.
"""

from __future__ import annotations

from torch import Tensor

from ..graph import TokenGraph
from ..scores import ScoreFunction
from .edge import edge_attention
from .types import BackendOutput

__all__ = ["BACKENDS", "BackendOutput", "run_backend", "select_backend"]

#: Names accepted by ``GraphAttention(backend=...)``.
BACKENDS = ("auto", "edge")


def select_backend(
    requested: str, score: ScoreFunction, graph: TokenGraph, q: Tensor
) -> tuple[str, str]:
    """Pick a backend for this score, graph, device and dtype -> (name, reason)."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}; choose one of {list(BACKENDS)}")
    if requested == "edge":
        return "edge", "forced by backend='edge'"
    return "edge", "the edge backend runs every score on every graph"


def run_backend(
    name: str,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    graph: TokenGraph,
    score: ScoreFunction,
    *,
    edge_attr: Tensor | None,
    dropout: float,
    training: bool,
    need_weights: bool,
) -> BackendOutput:
    """Run backend ``name`` (see ``edge_attention`` for the arguments and shapes)."""
    return edge_attention(
        q,
        k,
        v,
        graph,
        score,
        edge_attr=edge_attr,
        dropout=dropout,
        training=training,
        need_weights=need_weights,
    )
