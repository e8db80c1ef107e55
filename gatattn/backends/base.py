"""The one backend interface: what a backend is given (``Problem``), what it returns
(``BackendOutput``), and the methods every backend has.

    Problem       q [N_t, H, D], k [N_s, H, D], v [N_s, H, D], graph, score, edge inputs, options
    supports      Problem -> every reason the backend cannot run it (a tuple of str; () = it can)
    auto_reasons  Problem -> those, plus every reason ``backend="auto"`` passes it over (cost)
    explain       Problem -> why auto picks it, when it does
    run           Problem -> BackendOutput(out [N_t, H, D], scores [E, H] | None, weights | None)

A backend decides from what the score declares (``sdpa_scale``, ``has_dense``, ``pairwise_dense``,
each bias's ``kind``: docs/scores.md, "What a score declares"); no score names a backend.

Every backend computes the same thing (docs/math.md, eqs. 1-3); the edge backend is the literal
formula and the ground truth, and runs every Problem.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from ..graph import TokenGraph
from ..scores import ScoreFunction

__all__ = ["Backend", "BackendOutput", "EdgeInput", "EdgeModulation", "Problem", "check_output"]

#: Per-edge inputs of scores and biases: one tensor [E, ...], or several by name
#: (``{"distance": dist, "edge_attr": feats}``), each with one row per edge.
EdgeInput = Tensor | Mapping[str, Tensor]


class BackendOutput(NamedTuple):
    """What a backend returns: out [N_t, H, D], and α / Attn [E, H] when it computed them."""

    out: Tensor
    scores: Tensor | None
    weights: Tensor | None


@dataclass(frozen=True)
class EdgeModulation:
    """TransformerConv's edge modulation (Shi et al. 2021, eqs. 3-4), per head h:

        k_ij = k_j + (W_e e_ij)_h        v_ij = v_j + (W_e e_ij)_h

    Attributes:
        attr: edge features e [E, F].
        weight: W_e [C, F] with C = H·D (rows grouped by head).
    """

    attr: Tensor
    weight: Tensor


class Problem(NamedTuple):
    """One attention call, as every backend receives it (a NamedTuple: torch.compile traces it).

    Attributes:
        q: queries [N_t, H, D].  k: keys [N_s, H, D].  v: values [N_s, H, D].
        graph: the TokenGraph; its ``edge_index`` [2, E] names the edges.
        score: w(i, j), a ScoreFunction (what it declares decides where it can run).
        edge_attr: per-edge inputs of the score and its biases (``EdgeInput``), or None.
        modulation: TransformerConv edge modulation (edge backend only), or None.
        dropout: dropout probability on the attention weights, applied when ``training``.
        training: the calling layer's mode.
        need_weights: the caller wants α and Attn [E, H].
        aggregate: replaces the sum into targets (eq. 3) on the edge backend:
            ``aggregate(weights [E, H], v [N_s, H, D]) -> [N_t, H, D]``. The layer passes PyG's
            ``propagate`` here while an explainer watches it.
        positions: node positions (targets [N_t] or [N_t, P], sources [N_s] or [N_s, P]) that
            position-aware scores read; None: token positions within each sequence.
        sinks: attention-sink logits s [H] (an extra key per target with logit s_h and value
            0; gpt-oss), or None.

    Grouped-query attention: k and v may have H_kv heads, H_kv dividing H; query head h reads
    key/value head h // (H / H_kv). ``attend`` hands a backend k and v with H heads (expanded
    per node, O(N_s·H·D)) unless the backend sets ``grouped_kv``.

    Per-sequence layout: when the graph's B sequences all have L_q targets and L_k sources
    (complete, causal, bipartite or mask graphs of an unpadded or padded batch), q, k and v may
    come as [B, H, L_q, D] and [B, H_kv, L_k, D], SDPA's layout (node b·L + l is [b, :, l, :]),
    as transformers hands them over: no copy into nodes. ``attend`` checks the shapes against
    the graph and hands a backend nodes [N, H, D] (one copy) unless it sets
    ``sequence_layout``; what backends return is always per node.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    graph: TokenGraph
    score: ScoreFunction
    edge_attr: EdgeInput | None = None
    modulation: EdgeModulation | None = None
    dropout: float = 0.0
    training: bool = False
    need_weights: bool = False
    aggregate: Callable[[Tensor, Tensor], Tensor] | None = None
    positions: tuple[Tensor, Tensor] | None = None
    sinks: Tensor | None = None


class Backend:
    """Base class of a backend: computes eqs. 1-3 of docs/math.md for the Problems it supports.

    .. math::
        \\mathrm{out}_i = \\sum_{j \\in N(i)} \\mathrm{softmax}_{j \\in N(i)}(\\alpha_{ij})\\, v_j

    Subclasses set ``name`` and implement ``supports`` and ``run``; they override
    ``auto_reasons`` when ``backend="auto"`` should pass them over for cost (too small a graph,
    too sparse tiles) and ``explain`` to say why auto picks them. ``ga.register_backend`` adds
    one to the registry (docs/backends.md, "Adding a backend").

    Every check returns *every* reason, not the first: a tuple of str, empty when there is none.
    Checks must be cheap, because dispatch calls them on every forward: O(1) rules first, and
    rules that need a pass over the edges (cached per graph through ``TokenGraph.derived``) only
    once every O(1) rule has passed.

    Shapes:
        run: q [N_t, H, D], k and v [N_s, H, D] -> out [N_t, H, D] (+ α, Attn [E, H] or None).
    """

    name: ClassVar[str] = "backend"
    #: runs k and v with H_kv < H heads itself (grouped-query attention); else ``attend``
    #: expands them per node first
    grouped_kv: ClassVar[bool] = False
    #: runs q, k, v given per sequence ([B, h, L, D], ``Problem``); else ``attend`` lays them
    #: out as nodes first
    sequence_layout: ClassVar[bool] = False

    def supports(self, p: Problem) -> tuple[str, ...]:
        """Every reason this backend cannot run ``p`` (shown to users); () when it can."""
        raise NotImplementedError

    def auto_reasons(self, p: Problem) -> tuple[str, ...]:
        """Every reason ``backend="auto"`` does not pick this backend for ``p``: what
        ``supports`` says, plus the cost rules (default: ``supports`` alone)."""
        return self.supports(p)

    def explain(self, p: Problem) -> str:
        """Why ``backend="auto"`` picks this backend for ``p`` (when ``auto_reasons`` is empty)."""
        return f"the {self.name} backend runs it"

    def run(self, p: Problem) -> BackendOutput:
        """Attention of ``p`` (eqs. 1-3): out [N_t, H, D], and α, Attn [E, H] or None."""
        raise NotImplementedError

    @staticmethod
    def per_edge_reasons(p: Problem) -> list[str]:
        """The options only a per-edge backend can honour: TransformerConv's edge modulation
        (``edge_dim``) and an explainer's aggregate hook."""
        why = []
        if p.modulation is not None:
            why.append("edge features modulate keys and values (edge_dim): per-edge keys")
        if p.aggregate is not None:
            why.append("an explainer watches the per-edge messages")
        return why

    def refuse(self, p: Problem) -> None:
        """Raise when this backend cannot run ``p`` (``run`` calls it: a direct call never
        trusts a Problem that dispatch did not check).

        Raises:
            ValueError: naming the backend, the score and every reason.
        """
        why = self.supports(p)
        if why:
            raise ValueError(
                f"{self.name} backend cannot run score {p.score.name!r}: {'; '.join(why)}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def check_output(name: str, res: object, p: Problem) -> BackendOutput:
    """What ``run`` returned, checked against its contract: out [N_t, H, D] in v's dtype and
    device, α and Attn [E, H] or None. A wrong result names the backend (instead of failing
    later in a reshape, or silently giving the layer too many rows)."""
    if torch.compiler.is_compiling():  # not traced: dynamo trips over the checks
        return res  # type: ignore[return-value]
    if not isinstance(res, BackendOutput):
        raise TypeError(
            f"backend {name!r}: run() must return a BackendOutput(out, scores, weights), "
            f"got {type(res).__name__}"
        )
    want = (p.q.size(0), p.q.size(1), p.v.size(-1))
    per_edge = (p.graph.num_edges, p.q.size(1))
    for what, t, shape in (("out [N_t, H, D]", res.out, want),
                           ("scores [E, H]", res.scores, per_edge),
                           ("weights [E, H]", res.weights, per_edge)):  # fmt: skip
        if t is None and shape is per_edge:
            continue
        if (
            not isinstance(t, Tensor)
            or tuple(t.shape) != shape
            or t.dtype != p.v.dtype
            or t.device != p.v.device
        ):
            got = (
                f"{tuple(t.shape)} {t.dtype} on {t.device}"
                if isinstance(t, Tensor)
                else type(t).__name__
            )
            raise ValueError(
                f"backend {name!r} returned {what} {got}; expected {shape} "
                f"{p.v.dtype} on {p.v.device}"
            )
    return res
