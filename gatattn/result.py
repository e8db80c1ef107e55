"""``Attention``, the typed result of an attention layer run with ``return_attention=True``.

A module of its own, low in the layer order (it needs only ``graph``): the layers in ``nn/``,
``interop/`` and ``hf/`` return it, and ``inspect/`` reads it without importing the layers.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .graph import TokenGraph

__all__ = ["Attention"]


@dataclass
class Attention:
    """Result of ``GraphAttention(..., return_attention=True)``.

    Attributes:
        out: layer output [N_t, C].
        edge_index: the edges [2, E] that scores and weights refer to (row 0 source j, row 1 target i).
        scores: pre-softmax α_ij [E, H] (eq. 1).
        weights: post-softmax Attn_ij [E, H] (eq. 2), before dropout.
        graph: the TokenGraph (node counts, lengths, structure tag), when known.
    """

    out: Tensor
    edge_index: Tensor
    scores: Tensor
    weights: Tensor
    graph: TokenGraph | None = None

    @property
    def num_heads(self) -> int:
        """H."""
        return int(self.scores.size(1))
