"""The one backend interface: what a backend is given (``Problem``), what it returns
(``BackendOutput``), and the two methods every backend has (``supports`` and ``run``).

    Problem    q [N_t, H, D], k [N_s, H, D], v [N_s, H, D], graph, score, edge inputs, options
    supports   Problem -> None when the backend can run it, else the reason it cannot (a str)
    run        Problem -> BackendOutput(out [N_t, H, D], scores [E, H] | None, weights [E, H] | None)

Every backend computes the same thing (docs/math.md, eqs. 1-3); the edge backend is the literal
formula and the ground truth, and runs every Problem.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from torch import Tensor

from ..graph import TokenGraph
from ..scores import ScoreFunction

__all__ = ["Backend", "BackendOutput", "EdgeInput", "EdgeModulation", "Problem"]

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
        score: w(i, j), a ScoreFunction (its ``backends`` say where it can run).
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
    """Base class of a backend. Subclasses set ``name`` and implement ``supports`` and ``run``.

    ``supports`` must be cheap (O(E) with a small constant at most, and cached per graph through
    ``TokenGraph.derived``): dispatch calls it on every forward.
    """

    name: ClassVar[str] = "backend"
    #: runs k and v with H_kv < H heads itself (grouped-query attention); else ``attend``
    #: expands them per node first
    grouped_kv: ClassVar[bool] = False

    def supports(self, p: Problem) -> str | None:
        """None when this backend can run ``p``, else why not (shown to users)."""
        raise NotImplementedError

    def run(self, p: Problem) -> BackendOutput:
        """Attention of ``p`` (eqs. 1-3): out [N_t, H, D], and α, Attn [E, H] or None."""
        raise NotImplementedError

    def score_support(self, p: Problem) -> str | None:
        """The common check: ``p.score`` declares this backend, and nothing per edge
        (modulation, an aggregate hook) asks for the edge backend."""
        if self.name not in p.score.backends:
            return (
                f"score {p.score.name!r} has no {self.name} form (it declares the backends "
                f"{sorted(p.score.backends)})"
            )
        if p.modulation is not None:
            return "edge features modulate keys and values (edge_dim): only the edge backend"
        if p.aggregate is not None:
            return "an explainer watches the messages: only the edge backend"
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
