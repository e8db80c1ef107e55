"""Backend selection (docs/backends.md).

``select_backend`` returns the backend name and the reason for the choice; the decision also goes
to the ``gatattn.dispatch`` logger at DEBUG level. The rules, in order, for ``backend="auto"``:

1. dense (SDPA) when the graph is tagged "complete" or "causal" by a builder and the score has an
   SDPA form (scaled_dot, dot, + ALiBi / relative-position biases).
2. flex (FlexAttention) on CUDA, for fp16/bf16/fp32, scaled_dot/dot, a graph without duplicate
   edges whose tiles are dense enough (``block_layout(graph).density >= MIN_DENSITY``), and no
   active attention dropout.
3. block (block-sparse torch) when the score has a block form and the tile density pays.
4. edge (the reference) otherwise: it runs every score on every graph.

``backend="edge" | "dense" | "block" | "flex"`` forces one; a forced backend that cannot run the
given score or graph raises a ValueError that names both.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from ..graph import TokenGraph
from ..scores import ScoreFunction
from .block import MIN_DENSITY, block_attention, block_layout, block_unsupported
from .dense import dense_attention_sdpa, dense_unsupported
from .edge import edge_attention
from .flex import flex_attention_graph, flex_unsupported
from .types import BackendOutput

__all__ = ["BACKENDS", "BackendOutput", "backend_unsupported", "run_backend", "select_backend"]

#: Names accepted by ``GraphAttention(backend=...)``.
BACKENDS = ("auto", "edge", "dense", "block", "flex")

#: Below this many edges the block backend's fixed costs outweigh its gain.
MIN_BLOCK_EDGES = 4096

log = logging.getLogger("gatattn.dispatch")


def backend_unsupported(
    name: str, score: ScoreFunction, graph: TokenGraph, q: Tensor, *, dropout_active: bool = False
) -> str | None:
    """Why backend ``name`` cannot run ``score`` on ``graph`` with queries like ``q`` (or None)."""
    if name == "edge":
        return None
    if name == "dense":
        return dense_unsupported(score, graph)
    if name == "block":
        return block_unsupported(score, graph)
    if name == "flex":
        why = flex_unsupported(score, graph, q)
        if why is None and dropout_active:
            why = "FlexAttention here has no attention dropout (the layer is training with dropout > 0)"
        return why
    raise ValueError(f"unknown backend {name!r}; choose one of {list(BACKENDS)}")


def _describe(graph: TokenGraph) -> str:
    tag = graph.structure or "untagged"
    return f"{tag} graph (N_t={graph.num_dst}, N_s={graph.num_src}, E={graph.num_edges})"


def select_backend(
    requested: str,
    score: ScoreFunction,
    graph: TokenGraph,
    q: Tensor,
    *,
    dropout_active: bool = False,
) -> tuple[str, str]:
    """Pick a backend for this score, graph, device and dtype -> (name, reason).

    Args:
        requested: "auto" or a backend name (forced).
        score: the layer's ScoreFunction (its ``backends`` ClassVar says what may run it).
        graph: the TokenGraph (structure tag, or block density of its edge_index).
        q: queries [N_t, H, D]; only device, dtype and D are read.
        dropout_active: the layer is training with attention dropout > 0.

    Raises:
        ValueError: an unknown name, or a forced backend that cannot run the score or graph.
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}; choose one of {list(BACKENDS)}")
    if requested != "auto":
        why = backend_unsupported(requested, score, graph, q, dropout_active=dropout_active)
        if why is not None:
            raise ValueError(
                f"backend={requested!r} cannot run score {score.name!r} on the "
                f"{_describe(graph)}: {why}"
            )
        name, reason = requested, f"forced by backend={requested!r}"
    else:
        name, reason = _auto(score, graph, q, dropout_active)
    if not torch.compiler.is_compiling() and log.isEnabledFor(logging.DEBUG):
        log.debug("backend %s for score %r on %s: %s", name, score.name, _describe(graph), reason)
    return name, reason


def _auto(
    score: ScoreFunction, graph: TokenGraph, q: Tensor, dropout_active: bool
) -> tuple[str, str]:
    if dense_unsupported(score, graph) is None:
        return "dense", f"{graph.structure} graph and score {score.name!r}: one SDPA call"
    if graph.num_edges < MIN_BLOCK_EDGES:
        return "edge", f"small graph (E={graph.num_edges} < {MIN_BLOCK_EDGES}): edge backend"
    flex_why = backend_unsupported("flex", score, graph, q, dropout_active=dropout_active)
    block_why = block_unsupported(score, graph)
    if flex_why is not None and block_why is not None:
        return "edge", f"no fast path: {block_why}"
    lay = block_layout(graph)
    dens = f"tile density {lay.density:.2f} with {lay.size}x{lay.size} tiles"
    if lay.density < MIN_DENSITY:
        return "edge", f"irregular graph ({dens} < {MIN_DENSITY}): edge backend"
    if flex_why is None and q.size(-1) >= 16:
        return "flex", f"block-structured graph on CUDA ({dens}): FlexAttention"
    if block_why is None:
        return "block", f"block-structured graph ({dens}): block-sparse torch"
    return "edge", f"no fast path: {block_why}"


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
    """Run backend ``name`` (see ``edge_attention`` for the arguments and shapes).

    Fast backends return ``scores = weights = None``; the layer then recovers exact per-edge
    values from the edge formula when ``return_attention=True``.
    """
    if name == "dense":
        return dense_attention_sdpa(q, k, v, graph, score, dropout=dropout, training=training)
    if name == "block":
        return block_attention(q, k, v, graph, score, dropout=dropout, training=training)
    if name == "flex":
        return flex_attention_graph(q, k, v, graph, score)
    if name != "edge":
        raise ValueError(f"unknown backend {name!r}; choose one of {list(BACKENDS)}")
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
