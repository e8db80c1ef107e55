"""Dispatch: pick a backend for a Problem, say why, run it (docs/backends.md).

``attend`` is the one entry point of attention; ``GraphAttention`` and the drop-ins call it.
With ``backend="auto"`` the order of preference is:

1. dense (one SDPA call) when the score is s·<q_i, k_j> (+ any bias) and the graph is a
   complete / causal / bipartite graph whose tag holds (``TokenGraph.trusted_structure``), a
   graph built from a dense mask, or any graph inside its sequences that fills at least
   MIN_DENSE_DENSITY of the padded per-sequence grid (``dense.dense_density``, O(1); the
   O(E) check that no edge crosses sequences or repeats follows, cached).
2. edge for small graphs (E < MIN_BLOCK_EDGES): fixed costs dominate there.
3. flex (CUDA) or block (block-sparse torch) when the score declares them and the tiles of the
   adjacency are dense enough. The density is first *estimated* from a fixed-seed sample of
   edges (``block.estimate_density``, O(sample)); only a graph that passes builds its exact
   layout, whose density decides. An irregular graph costs dispatch O(1) per edge.
4. edge (the reference) otherwise: it runs every score on every graph.

``backend="edge" | "dense" | "block" | "flex"`` forces one; a forced backend that cannot run the
problem raises a ValueError that names the score, the graph and the reason.
"""

from __future__ import annotations

import logging

import torch

from ..graph import TokenGraph
from ..validation import same_device
from .base import Backend, BackendOutput, Problem
from .block import MIN_DENSITY, BlockBackend, block_layout, estimate_density
from .dense import MIN_DENSE_DENSITY, DenseBackend, dense_density
from .edge import EdgeBackend, edge_scores_and_weights
from .flex import FlexBackend

__all__ = [
    "BACKENDS",
    "MIN_BLOCK_EDGES",
    "attend",
    "backend_names",
    "check_backend_name",
    "expand_kv",
    "select_backend",
    "transform_nodes",
]

#: The registry: name -> backend. ``backend="auto"`` lets ``select_backend`` choose.
BACKENDS: dict[str, Backend] = {
    b.name: b for b in (EdgeBackend(), DenseBackend(), BlockBackend(), FlexBackend())
}

#: Below this many edges the block backend's fixed costs outweigh its gain.
MIN_BLOCK_EDGES = 4096
#: A sampled density below MIN_DENSITY × this margin skips the exact layout (sampling noise).
ESTIMATE_MARGIN = 0.5

log = logging.getLogger("gatattn.dispatch")


def backend_names() -> tuple[str, ...]:
    """The names ``backend=`` accepts: "auto" and every registered backend."""
    return ("auto", *BACKENDS)


def check_backend_name(name: object) -> str:
    """Return ``name`` if it is "auto" or a registered backend, else raise a ValueError."""
    if not isinstance(name, str) or name not in backend_names():
        raise ValueError(f"unknown backend {name!r}; choose one of {list(backend_names())}")
    return name


def _describe(graph: TokenGraph) -> str:
    tag = graph.structure or "untagged"
    return f"{tag} graph (N_t={graph.num_dst}, N_s={graph.num_src}, E={graph.num_edges})"


def select_backend(requested: str, p: Problem) -> tuple[str, str]:
    """Pick a backend for ``p`` -> (name, reason).

    Args:
        requested: "auto" or a backend name (forced).
        p: the Problem (score, graph, q's device, dtype and D, options).

    Raises:
        ValueError: an unknown name, or a forced backend that cannot run ``p``.
    """
    check_backend_name(requested)
    after = p.score.after_transform() if p.modulation is None else None
    if after is not None:  # the backends run the score after its node transform (``attend``)
        p = p._replace(score=after)
    if requested != "auto":
        why = BACKENDS[requested].supports(p)
        if why is not None:
            raise ValueError(
                f"backend={requested!r} cannot run score {p.score.name!r} on the "
                f"{_describe(p.graph)}: {why}"
            )
        name, reason = requested, f"forced by backend={requested!r}"
    else:
        name, reason = _auto(p)
    if not torch.compiler.is_compiling() and log.isEnabledFor(logging.DEBUG):
        log.debug(
            "backend %s for score %r on %s: %s", name, p.score.name, _describe(p.graph), reason
        )
    return name, reason


def _auto(p: Problem) -> tuple[str, str]:
    g, score = p.graph, p.score
    dense = BACKENDS["dense"]
    assert isinstance(dense, DenseBackend)
    # O(1) first: the scatter plan's O(E) check only runs for graphs dense enough to pay
    if (
        g.trusted_structure() is not None
        or g._stored_mask() is not None
        or dense_density(g) >= MIN_DENSE_DENSITY
    ):
        plan, why = dense.plan(p)
        if plan is not None:
            return "dense", f"{why} (score {score.name!r})"
    if g.num_edges < MIN_BLOCK_EDGES:
        return "edge", f"small graph (E={g.num_edges} < {MIN_BLOCK_EDGES}): edge backend"
    block_why = BACKENDS["block"].supports(p)
    if block_why is not None and "flex" not in score.backends:
        return "edge", f"no fast path: {block_why}"
    if torch.compiler.is_compiling():  # layouts need data-dependent sizes: stay on the edge path
        return "edge", "under torch.compile the block layout is not built: edge backend"
    size, guess = estimate_density(g)
    if guess < MIN_DENSITY * ESTIMATE_MARGIN:
        est = f"estimated tile density {guess:.3f} with {size}x{size} tiles"
        return "edge", f"irregular graph ({est} < {MIN_DENSITY}): edge backend"
    lay = block_layout(g)
    dens = f"tile density {lay.density:.2f} with {lay.size}x{lay.size} tiles"
    if lay.density < MIN_DENSITY:
        return "edge", f"irregular graph ({dens} < {MIN_DENSITY}): edge backend"
    # flex's own check (a sort for duplicate edges on CUDA) only once the tiles pay
    flex_why = BACKENDS["flex"].supports(p)
    if flex_why is None and p.q.size(-1) >= 16:
        return "flex", f"block-structured graph on CUDA ({dens}): FlexAttention"
    if block_why is None:
        return "block", f"block-structured graph ({dens}): block-sparse torch"
    return "edge", f"no fast path: {block_why}"


def attend(p: Problem, backend: str = "auto") -> BackendOutput:
    """Attention of ``p`` (docs/math.md, eqs. 1-3) on the chosen backend.

    Args:
        p: the Problem: q [N_t, H, D], k and v [N_s, H, D], graph, score and options.
        backend: "auto" or a backend name.

    Returns:
        out [N_t, H, D]; with ``p.need_weights`` also α and Attn [E, H] in edge order. A fast
        backend computes no per-edge values; they then come from the edge formula (eqs. 1-2),
        which is exact and costs O(E·H).

    Raises:
        ValueError: the graph is on another device than q, or a forced backend cannot run
            ``p``.
    """
    if not same_device(p.graph.device, p.q.device):
        raise ValueError(
            f"attend: the graph is on {p.graph.device} but q is on {p.q.device}; move the "
            f"graph with graph.to({str(p.q.device)!r})"
        )
    p = transform_nodes(p)
    name, _ = select_backend(backend, p)
    grouped = _grouped(p)
    res = BACKENDS[name].run(expand_kv(p) if grouped and not BACKENDS[name].grouped_kv else p)
    if p.need_weights and (res.scores is None or res.weights is None):
        scores, weights = edge_scores_and_weights(expand_kv(p) if grouped else p)
        return BackendOutput(res.out, scores, weights)
    return res


def transform_nodes(p: Problem) -> Problem:
    """``p`` with its score's node transform applied: q, k -> φ(q), ψ(k) (once per node, O(N))
    and the score -> ``score.after_transform()``; ``p`` itself when the score has none, or when
    edge features modulate the keys (then the transform belongs to each edge's key, which only
    the literal per-edge formula sees)."""
    after = p.score.after_transform()
    if after is None or p.modulation is not None:
        return p
    pos = p.positions
    if pos is None:
        pos = (p.graph.positions("dst"), p.graph.positions("src"))
    q, k = p.score.transform_nodes(p.q, p.k, pos[0], pos[1])
    return p._replace(q=q, k=k, score=after)


def _grouped(p: Problem) -> bool:
    """True when k and v have fewer heads than q (grouped-query attention); checks the counts."""
    H, h_k, h_v = p.q.size(1), p.k.size(1), p.v.size(1)
    if h_k != h_v or H % h_k:
        raise ValueError(
            f"grouped-query attention needs keys and values with the same number of heads "
            f"dividing the query heads; got q {H}, k {h_k}, v {h_v} heads"
        )
    return h_k != H


def expand_kv(p: Problem) -> Problem:
    """Grouped-query attention for backends that need H key/value heads: query head h reads
    key/value head h // G (G = H / H_kv), by repeating each head G times per node.

    Shapes:
        k, v [N_s, H_kv, D] -> [N_s, H, D] (O(N_s·H·D), never per edge).

    Raises:
        ValueError: k and v have different head counts, or H_kv does not divide H.
    """
    if not _grouped(p):
        return p
    g = p.q.size(1) // p.k.size(1)
    return p._replace(k=p.k.repeat_interleave(g, dim=1), v=p.v.repeat_interleave(g, dim=1))
