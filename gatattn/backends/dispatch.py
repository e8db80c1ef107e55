"""Dispatch: pick a backend for a Problem, say why, run it (docs/backends.md).

``attend`` is the one entry point of attention; ``GraphAttention`` and the drop-ins call it.
The registry ``BACKENDS`` is an ordered priority list (a dict, name -> backend), as xformers'
dispatch and torch's sdp_utils keep one:

    dense   one SDPA call: tagged / mask graphs, or graphs that fill >= 25 % of their grid
    flex    FlexAttention (CUDA) on block-structured graphs
    block   block-sparse torch on block-structured graphs
    edge    the reference: every graph, score and option

``backend="auto"`` walks the list and takes the first backend whose ``auto_reasons`` is empty;
every rule lives in its backend (``supports`` for what it cannot run, ``auto_reasons`` for what
would not pay). A graph already seen costs O(1): what needs a pass over the edges is cached in
the graph, and so is the decision (per score object, registry, q's device, dtype and D, and
options; a backend's checks read nothing else). ``ga.register_backend`` adds a backend.

``backend="edge" | "dense" | ...`` forces one; a forced backend that cannot run the problem
raises a ValueError that names the score, the graph and every reason, then lists every
backend with its own reasons.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

import torch
from torch import Tensor

from ..graph import TokenGraph
from ..validation import same_device
from .base import Backend, BackendOutput, Problem, check_output
from .block import MIN_BLOCK_EDGES, BlockBackend
from .dense import DenseBackend
from .edge import EdgeBackend, edge_scores_and_weights
from .flex import FlexBackend

__all__ = [
    "BACKENDS",
    "MIN_BLOCK_EDGES",
    "Decision",
    "as_nodes",
    "attend",
    "backend_names",
    "check_backend_name",
    "decide",
    "expand_kv",
    "per_sequence",
    "register_backend",
    "select_backend",
    "transform_nodes",
]

#: The registry, in priority order: name -> backend. ``backend="auto"`` takes the first one
#: with no reason against it; the edge backend, last, runs everything.
BACKENDS: dict[str, Backend] = {
    b.name: b for b in (DenseBackend(), FlexBackend(), BlockBackend(), EdgeBackend())
}

log = logging.getLogger("gatattn.dispatch")

#: The backends that ``auto`` picks from inside ``torch.compile``: there a graph built from a
#: mask has a data-dependent edge count, which the others' checks (tile density, duplicate
#: edges, "no edges") would guard on, breaking a ``fullgraph=True`` trace.
TRACED = ("dense", "edge")
#: The reason given against every other backend inside ``torch.compile``.
NOT_TRACED = "under torch.compile, auto picks only the dense and edge backends"


def backend_names() -> tuple[str, ...]:
    """The names ``backend=`` accepts: "auto" and every registered backend, in priority order."""
    return ("auto", *BACKENDS)


def check_backend_name(name: object) -> str:
    """Return ``name`` if it is "auto" or a registered backend, else raise a ValueError."""
    if not isinstance(name, str) or name not in backend_names():
        raise ValueError(f"unknown backend {name!r}; choose one of {list(backend_names())}")
    return name


def register_backend(backend: Backend, *, before: str = "edge") -> None:
    """Add ``backend`` to the registry, so that ``backend=backend.name`` forces it and
    ``backend="auto"`` tries it just before ``before`` (default: before the edge backend,
    which runs everything and so ends the list).

    The backend computes eqs. 1-3 of docs/math.md for the problems its ``supports`` accepts:

    .. math::
        \\mathrm{out}_i = \\sum_{j \\in N(i)} \\mathrm{softmax}_{j \\in N(i)}(\\alpha_{ij})\\, v_j

    Shapes:
        ``run(problem)``: q [N_t, H, D], k and v [N_s, H, D] -> out [N_t, H, D].

    Args:
        backend: an instance of a ``Backend`` subclass with a new ``name``.
        before: a registered backend name; the new one goes right before it in the priority
            list.

    Raises:
        TypeError: ``backend`` is not a Backend instance.
        ValueError: its name is not a non-empty str, is "auto" or is already registered, or
            ``before`` is not a registered name.
    """
    if not isinstance(backend, Backend):
        raise TypeError(f"register_backend needs a Backend instance, got {type(backend).__name__}")
    name = backend.name
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(
            f"a backend's name must be a non-empty str other than 'auto', got {name!r}"
        )
    if name in BACKENDS:
        raise ValueError(f"backend name {name!r} is already registered")
    if before not in BACKENDS:
        raise ValueError(
            f"before={before!r} is not a registered backend; choose one of {list(BACKENDS)}"
        )
    items = list(BACKENDS.items())
    at = [n for n, _ in items].index(before)
    items.insert(at, (name, backend))
    BACKENDS.clear()
    BACKENDS.update(items)


class Decision(NamedTuple):
    """What dispatch decided: the backend ``name``, why (``reason``), and every backend's
    reasons against it (``reasons``, a read-only mapping in priority order; () for a backend
    that would run). Decisions are cached in the graph: nothing in one can be changed."""

    name: str
    reason: str
    reasons: Mapping[str, tuple[str, ...]]


def _describe(graph: TokenGraph) -> str:
    tag = graph.structure or "untagged"
    return f"{tag} graph (N_t={graph.num_dst}, N_s={graph.num_src}, E={graph.num_edges})"


def _listing(reasons: Mapping[str, tuple[str, ...]], chosen: str | None) -> str:
    """One line per backend: "chosen", "can run it" or every reason against it."""
    lines = []
    for name, why in reasons.items():
        text = "chosen" if name == chosen else "; ".join(why) if why else "can run it"
        lines.append(f"  {name}: {text}")
    return "\n".join(lines)


def decide(requested: str, p: Problem, *, every: bool = False) -> Decision:
    """Pick a backend for ``p``.

    A score with a node transform (rotary positions) is checked as the score it runs after
    that transform (``after_transform``). ``"auto"`` walks ``BACKENDS`` in order and takes the
    first backend whose ``auto_reasons`` is empty; the backends before it are listed with their
    reasons. With ``every=True`` the backends after it are checked and listed too (for
    ``explain_backend``; dispatch itself stops at the first that runs). A forced name is
    checked with ``supports``.

    Args:
        requested: "auto" or a registered backend name.
        p: the Problem (score, graph, q's device, dtype and D, options).
        every: also check the backends after the chosen one.

    Raises:
        ValueError: an unknown name, or a forced backend that cannot run ``p`` (the message
            lists every backend with its reasons).
    """
    check_backend_name(requested)
    after = p.score.after_transform() if p.modulation is None else None
    if after is not None:  # the backends run the score after its node transform (``attend``)
        p = p._replace(score=after)
    if every or torch.compiler.is_compiling():
        return _decide(requested, p, every)
    # A decision depends on the graph, the score, q's device, dtype and D, the options and the
    # registry: it is kept in the graph's cache (dropped with it), per score object (held
    # weakly: an id can be reused), so a graph already seen costs O(1).
    registry = tuple(BACKENDS.items())  # (name, backend) pairs: backends compare by identity
    options = (
        p.training and p.dropout > 0,
        p.modulation is None,
        p.aggregate is None,
        p.positions is None,
        p.sinks is None,
    )
    shape = (p.q.device, p.q.dtype, p.q.size(-1))
    table: dict[int, tuple[weakref.ref, Decision]] = p.graph.derived(
        ("dispatch", requested, registry, shape, options), dict
    )
    hit = table.get(id(p.score))
    if hit is not None and hit[0]() is p.score:
        return hit[1]
    decision = _decide(requested, p, every)
    decision = decision._replace(reasons=MappingProxyType(dict(decision.reasons)))  # read-only
    key = id(p.score)  # the entry leaves with its score: no dead entries pile up in a graph
    table[key] = (weakref.ref(p.score, lambda _: table.pop(key, None)), decision)
    return decision


def _decide(requested: str, p: Problem, every: bool) -> Decision:
    if requested != "auto":
        why = _reasons(BACKENDS[requested], p, auto=False)
        if why:
            every_reason = {n: _reasons(b, p, auto=False) for n, b in BACKENDS.items()}
            raise ValueError(
                f"backend={requested!r} cannot run score {p.score.name!r} on the "
                f"{_describe(p.graph)}: {'; '.join(why)}\nevery backend, as forced:\n"
                f"{_listing(every_reason, None)}"
            )
        return Decision(requested, f"forced by backend={requested!r}", {requested: ()})
    reasons: dict[str, tuple[str, ...]] = {}
    chosen: str | None = None
    compiling = torch.compiler.is_compiling()
    for name, backend in BACKENDS.items():
        if chosen is not None and not every:
            break
        why = (NOT_TRACED,) if compiling and name not in TRACED else _reasons(backend, p, auto=True)
        reasons[name] = why
        if chosen is None and not why:
            chosen = name
    if chosen is None:  # only a registry without a backend that runs everything gets here
        raise ValueError(
            f"no backend runs score {p.score.name!r} on the {_describe(p.graph)}:\n"
            f"{_listing(reasons, None)}"
        )
    reason = BACKENDS[chosen].explain(p)
    before = list(reasons)[: list(reasons).index(chosen)]  # each has a reason against it
    if before:
        passed = " | ".join(n + ": " + "; ".join(reasons[n]) for n in before)
        reason += f" (passed over {passed})"
    return Decision(chosen, reason, reasons)


def _reasons(backend: Backend, p: Problem, *, auto: bool) -> tuple[str, ...]:
    """``backend.auto_reasons(p)`` (or ``supports``), checked: a user backend that returns a
    str, None or anything but a tuple of str is named, not read as one reason per character."""
    method = "auto_reasons" if auto else "supports"
    why = getattr(backend, method)(p)
    if not isinstance(why, (tuple, list)) or not all(isinstance(w, str) for w in why):
        raise TypeError(
            f"backend {backend.name!r}: {method}() must return a tuple of str (every reason it "
            f"cannot run the problem; () when it can), got {why!r}"
        )
    return tuple(why)


def select_backend(requested: str, p: Problem) -> tuple[str, str]:
    """Pick a backend for ``p`` -> (name, reason); see ``decide``.

    Args:
        requested: "auto" or a backend name (forced).
        p: the Problem (score, graph, q's device, dtype and D, options).

    Raises:
        ValueError: an unknown name, or a forced backend that cannot run ``p``.
    """
    name, reason, _ = decide(requested, p)
    if not torch.compiler.is_compiling() and log.isEnabledFor(logging.DEBUG):
        log.debug(
            "backend %s for score %r on %s: %s", name, p.score.name, _describe(p.graph), reason
        )
    return name, reason


def explain(requested: str, p: Problem) -> str:
    """``"<backend>: <reason>"``, then (for ``"auto"``) one line per registered backend with
    every reason against it, in priority order (``GraphAttention.explain_backend``)."""
    name, reason, reasons = decide(requested, p, every=True)
    if requested != "auto":
        return f"{name}: {reason}"
    own = BACKENDS[name].explain(p)  # the lines below say what passed the others over
    return f"{name}: {own}\nevery backend, in priority order:\n{_listing(reasons, name)}"


def attend(p: Problem, backend: str = "auto") -> BackendOutput:
    """Attention of ``p`` (docs/math.md, eqs. 1-3) on the chosen backend.

    Args:
        p: the Problem: q [N_t, H, D], k and v [N_s, H, D] (or per sequence, [B, H, L_q, D]
            and [B, H_kv, L_k, D]: ``Problem``), graph, score and options.
        backend: "auto" or a backend name.

    Returns:
        out [N_t, H, D]; with ``p.need_weights`` also α and Attn [E, H] in edge order. A fast
        backend computes no per-edge values; they then come from the edge formula (eqs. 1-2),
        which is exact and costs O(E·H).

    Raises:
        ValueError: the graph is on another device than q, a forced backend cannot run
            ``p``, or ``p.sinks`` holds a value that is not finite (every backend refuses it,
            as ``neighbourhood_softmax`` does).
    """
    if not same_device(p.graph.device, p.q.device):
        raise ValueError(
            f"attend: the graph is on {p.graph.device} but q is on {p.q.device}; move the "
            f"graph with graph.to({str(p.q.device)!r})"
        )
    if p.sinks is not None and p.sinks.device.type != "meta" and not torch.compiler.is_compiling():
        if not bool(torch.isfinite(p.sinks).all()):  # ±inf or NaN: no softmax over the sink
            raise ValueError(f"sinks must be finite, got {p.sinks.tolist()}")
    p = transform_nodes(p)
    name, _ = select_backend(backend, p)
    grouped, sequences = _grouped(p), per_sequence(p)
    chosen = BACKENDS[name]
    run = as_nodes(p) if sequences and not chosen.sequence_layout else p
    res = chosen.run(expand_kv(run) if grouped and not chosen.grouped_kv else run)
    if not (sequences and chosen.sequence_layout):  # a per-sequence Problem has no N_t rows
        res = check_output(name, res, run)
    if p.need_weights and (res.scores is None or res.weights is None):
        nodes = as_nodes(p) if sequences else p
        scores, weights = edge_scores_and_weights(expand_kv(nodes) if grouped else nodes)
        return BackendOutput(res.out, scores, weights)
    return res


def per_sequence(p: Problem) -> bool:
    """True when q, k and v come per sequence, [B, H, L_q, D] and [B, H_kv, L_k, D] (the
    layout ``Problem`` allows for graphs of B equal-length sequences); False for nodes.

    Raises:
        ValueError: q, k and v of different ranks, or per-sequence tensors whose B, L_q or
            L_k do not match the graph's sequences.
    """
    ranks = (p.q.dim(), p.k.dim(), p.v.dim())
    if ranks == (3, 3, 3):
        return False
    g = p.graph
    if ranks == (4, 4, 4):
        B, _, Lq, _ = p.q.shape
        Lk = p.k.size(2)
        if (
            p.k.size(0) == B == p.v.size(0)
            and p.v.size(2) == Lk
            and g.sequence_lengths("dst") == (Lq,) * B
            and g.sequence_lengths("src") == (Lk,) * B
        ):
            return True
    raise ValueError(
        f"q, k, v must be nodes [N, H, D] or per sequence [B, H, L, D] matching the graph's "
        f"sequences; got q {list(p.q.shape)}, k {list(p.k.shape)}, v {list(p.v.shape)} on a "
        f"graph with target lengths {list(g.sequence_lengths('dst'))} and source lengths "
        f"{list(g.sequence_lengths('src'))}"
    )


def as_nodes(p: Problem) -> Problem:
    """``p`` with q, k, v as nodes: [B, h, L, D] -> [B·L, h, D] (node b·L + l; one copy each),
    ``p`` itself when they are nodes already (see ``per_sequence``)."""
    if not per_sequence(p):
        return p

    def nodes(t: Tensor) -> Tensor:
        return t.transpose(1, 2).reshape(-1, t.size(1), t.size(3))  # [B·L, h, D]

    return p._replace(q=nodes(p.q), k=nodes(p.k), v=nodes(p.v))


def transform_nodes(p: Problem) -> Problem:
    """``p`` with its score's node transform applied: q, k -> φ(q), ψ(k) (once per node, O(N))
    and the score -> ``score.after_transform()``; ``p`` itself when the score has none, or when
    edge features modulate the keys (then the transform belongs to each edge's key, which only
    the literal per-edge formula sees)."""
    after = p.score.after_transform()
    if after is None or p.modulation is not None:
        return p
    p = as_nodes(p)  # positions are per node
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
