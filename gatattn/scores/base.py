"""The types of w(i, j): ``ScoreFunction``, ``ScoreBias`` and their sum ``Biased``.

A score function maps node-level queries q [N_t, H, D] and keys k [N_s, H, D], plus the edges
of the graph (and optional edge features and positions), to pre-softmax logits α [E, H]
(docs/math.md, eq. 1). Every ScoreFunction has three views of the same formula:

* ``forward(q_i, k_j, edges)``: the literal per-edge formula on gathered [e, H, D] vectors.
* ``edge_scores(q, k, edges)``: the same on the whole graph without an [E, H, D] tensor. The
  default runs ``forward`` over edge chunks; factorisable scores override it with node-level work.
* ``dense(q, k, ctx)``: the same on the full L_q × L_k matrix, written plainly, for the dense
  reference and for whatever computes whole tiles or matrices of scores.

A score says what it *is*, never where it may run (docs/scores.md, "What a score declares"):
``sdpa_scale(D)`` (s when w(i, j) = s·<q_i, k_j>), ``has_dense`` and ``pairwise_dense`` (its
dense form and what that form costs), and ``parts()`` (the base score and its biases, each with a
``kind``). Each backend decides from these alone whether it can run the score; no score or bias
names a backend, so adding a backend touches no score.

A score may also declare a node-level transform (rotary positions): w(i, j) = w'(φ_i(q_i),
ψ_j(k_j)) with ``transform_nodes`` computing φ and ψ once per node (O(N)) and
``after_transform()`` returning w'. ``backends.attend`` applies the transform before any backend
runs, so a rotary score runs wherever w' runs (SDPA for s·<q_i, k_j>).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from torch import Tensor, nn

from ..kernels import chunked_edge_map

if TYPE_CHECKING:
    from ..graph import TokenGraph

__all__ = [
    "PER_EDGE",
    "POSITION",
    "BiasKind",
    "Biased",
    "DenseContext",
    "Edges",
    "ScoreBias",
    "ScoreCallable",
    "ScoreFunction",
    "check_score_sizes",
    "check_scores",
]


#: The type users plug in: ``f(q_i [E, H, D], k_j [E, H, D]) -> α [E, H]``.
ScoreCallable = Callable[[Tensor, Tensor], Tensor]

#: What a bias reads (``ScoreBias.kind``). ``POSITION``: only the positions of the two tokens in
#: their sequences, so it is defined on every pair (i, j), edge or not, and ``dense(ctx)`` gives
#: it on a whole L_q × L_k grid. ``PER_EDGE``: per-edge inputs (``edge_attr``), so it exists on
#: the graph's edges only and is evaluated there by ``forward(edges)``.
BiasKind = Literal["position", "per_edge"]
POSITION: BiasKind = "position"
PER_EDGE: BiasKind = "per_edge"


@dataclass
class Edges:
    """The edges a score function is evaluated on (all of them, or one chunk).

    ``src``/``dst`` are LongTensors [e]. ``edge_attr`` holds the per-edge inputs: one tensor
    [e, ...], several by name (``{"distance": [e], "edge_attr": [e, F]}``), or None; a score or
    bias reads its own with ``input(name)``. Positions of the endpoints come from
    ``pos_src()``/``pos_dst()``, gathered on demand: the node positions ``positions`` =
    (targets [N_t] or [N_t, P], sources [N_s] or [N_s, P]) when given, else the token positions
    within each sequence (``TokenGraph.positions``).
    """

    src: Tensor
    dst: Tensor
    graph: TokenGraph
    edge_attr: Tensor | Mapping[str, Tensor] | None = None
    positions: tuple[Tensor, Tensor] | None = None

    def __len__(self) -> int:
        return self.src.numel()

    def slice(self, start: int, stop: int) -> Edges:
        attr = self.edge_attr
        if isinstance(attr, Mapping):
            attr = {name: t[start:stop] for name, t in attr.items()}
        elif attr is not None:
            attr = attr[start:stop]
        return Edges(self.src[start:stop], self.dst[start:stop], self.graph, attr, self.positions)

    def input(self, name: str, owner: str) -> Tensor | None:
        """The per-edge input ``name`` [e, ...]: the tensor itself when one tensor was given,
        the entry ``name`` of a mapping, or None when there is none.

        Raises:
            ValueError: a mapping without ``name`` (the message names ``owner`` and the keys).
        """
        attr = self.edge_attr
        if isinstance(attr, Mapping):
            if name not in attr:
                raise ValueError(
                    f"{owner} reads edge_attr[{name!r}], but edge_attr has the keys {sorted(attr)}"
                )
            return attr[name]
        return attr

    def node_positions(self) -> tuple[Tensor, Tensor]:
        """(targets [N_t] or [N_t, P], sources [N_s] or [N_s, P]): ``positions`` when given,
        else the token positions within each sequence."""
        if self.positions is not None:
            return self.positions
        return self.graph.positions("dst"), self.graph.positions("src")

    def pos_src(self) -> Tensor:
        return self.node_positions()[1].index_select(0, self.src)  # [e] or [e, P]

    def pos_dst(self) -> Tensor:
        return self.node_positions()[0].index_select(0, self.dst)  # [e] or [e, P]


@dataclass
class DenseContext:
    """What a dense formula needs besides q and k: positions [L_q], [L_k], edge_attr [L_q, L_k, F]."""

    pos_q: Tensor
    pos_k: Tensor
    edge_attr: Tensor | None = None


def check_scores(fn: object, out: object, num_edges: int, heads: int, like: Tensor) -> Tensor:
    name = getattr(fn, "name", None) or type(fn).__name__
    if not isinstance(out, Tensor):
        raise TypeError(f"score function {name!r} returned {type(out).__name__}, expected a Tensor")
    if tuple(out.shape) != (num_edges, heads):
        raise ValueError(
            f"score function {name!r} returned shape {tuple(out.shape)}; expected "
            f"(E, H) = ({num_edges}, {heads})"
        )
    if not out.is_floating_point():
        raise TypeError(
            f"score function {name!r} returned dtype {out.dtype}, expected {like.dtype}"
        )
    return out.to(like.dtype)


def check_score_sizes(score: ScoreFunction, num_heads: int, head_dim: int) -> None:
    """Refuse a score, or one of its biases, built for another head count or head size.

    Raises:
        ValueError: a part declares ``num_heads`` != H or ``head_dim`` != D (the message
            names the part and both sizes).
    """
    base, biases = score.parts()
    for part in (base, *biases):
        label = f"{type(part).__name__} ({getattr(part, 'name', '?')!r})"
        for attr, want in (("num_heads", num_heads), ("head_dim", head_dim)):
            got = getattr(part, attr, None)
            if got is not None and got != want:
                raise ValueError(
                    f"score part {label} was built for {attr}={got}, but the layer has "
                    f"{attr}={want}; build it with {attr}={want}"
                )


def _ignored_backends(owner: str) -> None:
    """Warn that a score or bias lists backends (the old API): nothing reads that list, so the
    score would silently run on the edge backend alone (docs/scores.md, "What a score declares")."""
    warnings.warn(
        f"{owner} sets `backends`, which gatattn no longer reads: a score declares what its "
        "formula is (sdpa_scale(D), has_dense, pairwise_dense; a bias its kind) and each "
        "backend decides from that (docs/scores.md, 'What a score declares'). Without those "
        "declarations it runs on the edge backend only",
        UserWarning,
        stacklevel=3,
    )


class _Declares(nn.Module):
    """Shared by ScoreFunction and ScoreBias: a ``backends`` list is refused loudly (a class
    attribute when the class is made, an instance attribute when it is set)."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "backends" in vars(cls):
            _ignored_backends(f"{cls.__qualname__}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "backends":
            _ignored_backends(f"{type(self).__qualname__} (an instance)")
        super().__setattr__(name, value)


class ScoreFunction(_Declares):
    """Base type of w(i, j). Subclasses implement ``forward`` (and ``dense`` when they have one).

    .. math:: \\alpha_{ij} = w(q_i, k_j, \\text{edge } j \\to i)

    A score declares what it is, and each backend decides from that alone whether it can run
    it (docs/scores.md, "What a score declares"). The defaults declare nothing, so a subclass
    that sets nothing runs only on the reference path (the literal formula on each edge):

    * ``sdpa_scale(D)``: s when w(i, j) = s·<q_i, k_j> exactly, else None (the default).
    * ``has_dense``: ``dense(q, k, ctx)`` is implemented, reads q and k alone (not the
      positions or edge inputs in ctx), and equals ``forward`` on every pair (i, j) of the grid
      (default False). A score that reads positions declares them as a node transform
      (``transform_nodes``, rotary) or carries them in a position bias instead.
    * ``pairwise_dense``: that dense form builds a pairwise [..., L_q, L_k, D] tensor, D times
      the memory of the logits it returns (default False).
    * ``parts()``: (base score, biases); each bias declares its ``kind`` (``ScoreBias``).

    Shapes:
        forward: q_i, k_j [e, H, D] -> α [e, H].  dense: q [..., H, L_q, D],
        k [..., H, L_k, D] -> [..., H, L_q, L_k].  edge_scores: q [N_t, H, D], k [N_s, H, D]
        -> [E, H].

    Attributes:
        has_dense: see above.  pairwise_dense: see above.
        name: registry name, used in messages and tables.
    """

    has_dense: bool = False
    pairwise_dense: bool = False
    name: str = "score"
    #: H and D the score's parameters were built for (None: any); ``GraphAttention`` refuses
    #: a score built for other sizes than its own (``check_score_sizes``).
    num_heads: int | None = None
    head_dim: int | None = None

    def sdpa_scale(self, head_dim: int) -> float | None:
        """s when w(i, j) = s·<q_i, k_j> for every pair, else None (the default).

        Args:
            head_dim: D.
        """
        return None

    def parts(self) -> tuple[ScoreFunction, tuple[ScoreBias, ...]]:
        """(base score, additive biases): ``(self, ())`` for a plain score."""
        return self, ()

    def after_transform(self) -> ScoreFunction | None:
        """w' when w(i, j) = w'(φ_i(q_i), ψ_j(k_j)) with the node-level ``transform_nodes``;
        None (the default) when the score has no node transform."""
        return None

    def transform_nodes(
        self, q: Tensor, k: Tensor, pos_q: Tensor, pos_k: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(φ(q), ψ(k)): the node-level transform that ``after_transform()`` runs on.

        Shapes:
            q [N_t, H, D], k [N_s, H_kv, D], pos_q [N_t] or [N_t, P], pos_k [N_s] or [N_s, P]
            -> the same shapes as q and k.
        """
        return q, k

    def forward(self, q_i: Tensor, k_j: Tensor, edges: Edges) -> Tensor:
        """Literal per-edge formula. q_i, k_j [e, H, D] -> α [e, H]."""
        raise NotImplementedError

    def dense(self, q: Tensor, k: Tensor, ctx: DenseContext) -> Tensor:
        """Dense formula. q [..., H, L_q, D], k [..., H, L_k, D] -> α [..., H, L_q, L_k]."""
        raise NotImplementedError(f"score function {self.name!r} has no dense form")

    def edge_scores(self, q: Tensor, k: Tensor, edges: Edges) -> Tensor:
        """α on every edge without an [E, H, D] tensor. q [N_t, H, D], k [N_s, H, D] -> [E, H].

        Scores built on the edge dot product (scaled_dot, dot) return fp32 for fp16/bf16
        inputs: the dot is accumulated and scaled in fp32, so a logit within the half range
        never overflows before its 1/√D scale. ``edge_scores_and_weights`` casts α and Attn
        back to the input dtype after the softmax.
        """

        def chunk(s: int, t: int) -> Tensor:
            part = edges.slice(s, t)
            out = self(q.index_select(0, part.dst), k.index_select(0, part.src), part)
            return check_scores(self, out, t - s, q.size(1), q)

        return chunked_edge_map(chunk, len(edges), q.size(1) * q.size(2))

    def __add__(self, bias: nn.Module) -> ScoreFunction:
        if not isinstance(bias, ScoreBias):
            raise TypeError(f"only a ScoreBias can be added to a score, got {type(bias).__name__}")
        return Biased(self, bias)


class ScoreBias(_Declares):
    """Base type of an additive bias b(i, j) [E, H] that does not look at q or k.

    .. math:: \\alpha_{ij} = w(i, j) + b(i, j)

    A bias declares what it reads, as ``kind`` (docs/scores.md, "What a score declares"):

    * ``"position"`` (``POSITION``): only the positions of i and j within their sequences.
      ``forward(edges)`` then works on any (src, dst) pairs, edges or not, and ``dense(ctx)``
      gives the bias on a whole L_q × L_k grid from ``ctx.pos_q`` and ``ctx.pos_k``.
    * ``"per_edge"`` (``PER_EDGE``, the default): per-edge inputs such as ``edge_attr``; the
      bias exists on the graph's edges only, through ``forward(edges)``.

    Shapes:
        forward: edges (e of them) -> [e, H] (or [e, 1], broadcast over heads).
        dense: ctx with pos_q [L_q], pos_k [L_k] -> [H, L_q, L_k].

    Attributes:
        kind: ``"position"`` or ``"per_edge"`` (default).
        name: registry name.
    """

    kind: BiasKind = PER_EDGE
    name: str = "bias"
    #: H the bias's parameters were built for (None: any), checked as ``ScoreFunction``'s.
    num_heads: int | None = None

    def forward(self, edges: Edges) -> Tensor:
        """Per-edge bias on ``edges`` -> [e, H]."""
        raise NotImplementedError

    def dense(self, ctx: DenseContext) -> Tensor:
        """Dense bias -> [H, L_q, L_k]."""
        raise NotImplementedError

    def dense_grid(self, edge_attr: object) -> Tensor | None:
        """This bias on the padded per-sequence grid, read from a grid-form edge input
        (``scores.grid.GridInput``) without any edge, or None (the default: it has no such
        form, or ``edge_attr`` holds none). Equal to ``forward`` on every edge of a graph
        that is the whole grid in grid order.

        Shapes:
            -> [B | 1, H | 1, L_q, L_k]: additive floats, or bool (True = 0, False = -inf).
        """
        return None

    def masked_grid(self, edge_attr: object) -> Tensor | None:
        """The graph's whole additive mask when this is its only bias: ``dense_grid`` on the
        edges (and padding rows), −∞ on the cells ``edge_attr.closed`` marks, made in one pass
        (``GridInput``), or None (the default: no such form). Finite on every other cell.

        Shapes:
            -> [B, H | 1, L_q, L_k] floats.
        """
        return None


class Biased(ScoreFunction):
    """A score plus one or more biases: α_ij = w(i, j) + Σ_b b(i, j).

    Built by ``score + bias`` or by a name such as ``"scaled_dot+alibi"``. Backends read its
    ``parts()``: the base score's declarations and each bias's ``kind``. Its own ``has_dense``
    is False (its ``dense`` reads the positions in ctx for its biases).
    """

    def __init__(self, score: ScoreFunction, *biases: ScoreBias) -> None:
        super().__init__()
        if isinstance(score, Biased):
            biases = (*score.biases_list(), *biases)
            score = score.score
        self.score: ScoreFunction = score
        self.biases = nn.ModuleList(biases)
        self.name = "+".join([score.name, *(b.name for b in biases)])
        self.has_dense = score.has_dense and not self.biases_list()  # a bias's dense form reads ctx
        self.pairwise_dense = score.pairwise_dense

    def parts(self) -> tuple[ScoreFunction, tuple[ScoreBias, ...]]:
        return self.score, tuple(self.biases_list())

    def after_transform(self) -> ScoreFunction | None:
        inner = self.score.after_transform()
        if inner is None:
            return None
        # built once and kept out of the module tree: it shares this score's bias modules
        cached = self.__dict__.get("_after_transform")
        if cached is None or cached.score is not inner:
            cached = Biased(inner, *self.biases_list())
            self.__dict__["_after_transform"] = cached
        return cached

    def transform_nodes(
        self, q: Tensor, k: Tensor, pos_q: Tensor, pos_k: Tensor
    ) -> tuple[Tensor, Tensor]:
        return self.score.transform_nodes(q, k, pos_q, pos_k)

    def biases_list(self) -> list[ScoreBias]:
        return [b for b in self.biases if isinstance(b, ScoreBias)]

    def forward(self, q_i: Tensor, k_j: Tensor, edges: Edges) -> Tensor:
        out = self.score(q_i, k_j, edges)
        for b in self.biases_list():
            out = out + b(edges)
        return out

    def edge_scores(self, q: Tensor, k: Tensor, edges: Edges) -> Tensor:
        out = self.score.edge_scores(q, k, edges)  # [E, H]
        for b in self.biases_list():
            out = out + b(edges)
        return out

    def dense(self, q: Tensor, k: Tensor, ctx: DenseContext) -> Tensor:
        out = self.score.dense(q, k, ctx)  # [..., H, L_q, L_k]
        for b in self.biases_list():
            out = out + b.dense(ctx)
        return out

    def __add__(self, bias: nn.Module) -> ScoreFunction:
        if not isinstance(bias, ScoreBias):
            raise TypeError(f"only a ScoreBias can be added to a score, got {type(bias).__name__}")
        return Biased(self, bias)
