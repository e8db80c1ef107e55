"""Logit softcapping (docs/scores.md, "Softcapping"): a score squashed into (−c, c).

    α_ij = c · tanh(w(i, j) / c)

Gemma 2 caps its attention logits at c = 50 (Gemma Team 2024, "Gemma 2: Improving Open Language
Models at a Practical Size"; Bello et al. 2017 introduced the tanh cap). It declares
no ``sdpa_scale`` (it is not s·<q_i, k_j>), and a dense form (``has_dense``) exactly when the
capped score has one that reads q and k alone (no bias): whatever scores whole tiles from q and k
can then run it (docs/scores.md, "What a score declares").
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import DenseContext, Edges, ScoreFunction

__all__ = ["Softcap"]


class Softcap(ScoreFunction):
    """A score capped by tanh (Gemma 2's attention logit softcapping).

    .. math:: \\alpha_{ij} = c \\, \\tanh\\!\\big(w(i, j) / c\\big)

    Wraps any score, biases included: ``Softcap(ga.make_score("scaled_dot+alibi", H, D), 50)``
    caps the biased logits, ``Softcap(ScaledDot(), 50) + ALiBi(H)`` adds the bias after the cap.
    A node transform of the inner score (rotary positions) is kept: it runs once per node, and
    the cap after it.

    Args:
        score: the inner score w(i, j), a ``ScoreFunction``.
        cap: c > 0 (Gemma 2: 50.0 for attention logits).

    Shapes:
        like the inner score: q_i, k_j [e, H, D] -> α [e, H]; dense [..., H, L_q, L_k].

    Raises:
        TypeError: ``score`` is not a ScoreFunction.
        ValueError: ``cap`` is not a finite number > 0.
    """

    name = "softcap"

    def __init__(self, score: ScoreFunction, cap: float = 50.0) -> None:
        super().__init__()
        if not isinstance(score, ScoreFunction):
            raise TypeError(f"Softcap wraps a ScoreFunction, got {type(score).__name__}")
        if isinstance(cap, bool) or not isinstance(cap, (int, float)):
            raise TypeError(f"Softcap's cap must be a number, got {type(cap).__name__}")
        if not 0 < cap < float("inf"):
            raise ValueError(f"Softcap's cap must be a finite number > 0, got {cap}")
        self.score, self.cap = score, float(cap)
        self.name = f"softcap({score.name}, {self.cap:g})"
        # c·tanh(w/c) has a dense form wherever w has one that reads q and k alone (a Biased
        # score's dense form reads positions: has_dense is False there); no sdpa_scale
        self.has_dense = score.has_dense
        self.pairwise_dense = score.pairwise_dense

    def _cap(self, s: Tensor) -> Tensor:
        return torch.tanh(s / self.cap) * self.cap  # [..., H]

    def forward(self, q_i: Tensor, k_j: Tensor, edges: Edges) -> Tensor:
        return self._cap(self.score(q_i, k_j, edges))  # [e, H]

    def edge_scores(self, q: Tensor, k: Tensor, edges: Edges) -> Tensor:
        return self._cap(self.score.edge_scores(q, k, edges))  # [E, H]

    def dense(self, q: Tensor, k: Tensor, ctx: DenseContext) -> Tensor:
        return self._cap(self.score.dense(q, k, ctx))  # [..., H, L_q, L_k]

    def after_transform(self) -> ScoreFunction | None:
        inner = self.score.after_transform()
        if inner is None:
            return None
        cached = self.__dict__.get("_after_transform")  # out of the module tree: shares params
        if cached is None or cached.score is not inner:
            cached = Softcap(inner, self.cap)
            self.__dict__["_after_transform"] = cached
        return cached

    def transform_nodes(
        self, q: Tensor, k: Tensor, pos_q: Tensor, pos_k: Tensor
    ) -> tuple[Tensor, Tensor]:
        return self.score.transform_nodes(q, k, pos_q, pos_k)

    def extra_repr(self) -> str:
        return f"cap={self.cap:g}"
