"""``Attention``, the typed result of an attention layer run with ``return_attention=True``, and
``dense_weights``, per-edge weights as the dense [B, H, L_q, L_k] that torch's layers return.

A module of its own, low in the layer order (it needs only ``graph``): the layers in ``nn/``,
``interop/`` and ``hf/`` return it, and ``inspect/`` reads it without importing the layers.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .graph import TokenGraph

__all__ = ["Attention", "dense_weights"]


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


def dense_weights(weights: Tensor, graph: TokenGraph, batch: int, len_q: int, len_k: int) -> Tensor:
    """Per-edge weights of a batch of sequences as torch's dense ``attn_weights``.

    The graph is block-diagonal over ``batch`` sequences: target node ``dst = b·L_q + i`` and
    source node ``src = b'·L_k + j`` (b' = b on a batch graph). Edge (j, i) of sequence b puts
    its weight at ``[b, h, i, j]``; every pair that is no edge of the graph stays 0:

        A[b, h, i, j] = Attn_ij^h   if (j, i) ∈ edges of sequence b,  else 0

    Duplicate edges add up, so ``A @ v`` is the output of eq. 3; differentiable in ``weights``.

    What ``nn.MultiheadAttention`` and transformers' attention functions return as their
    weights (``GraphMultiheadAttention`` and converted Hugging Face models use it).

    Args:
        weights: per-edge Attn [E, H] (or α, or any per-edge value).
        graph: the TokenGraph the weights belong to, with N_t = batch·len_q targets.
        batch: B, the number of sequences.
        len_q: L_q, queries per sequence.
        len_k: L_k, keys per sequence.

    Shapes:
        weights [E, H], graph.edge_index [2, E] -> [B, H, L_q, L_k].
    """
    src, dst = graph.edge_index[0], graph.edge_index[1]  # [E] each
    dense = weights.new_zeros(batch, len_q, len_k, weights.size(1))  # [B, L_q, L_k, H]
    dense = dense.index_put((dst // len_q, dst % len_q, src % len_k), weights, accumulate=True)
    return dense.permute(0, 3, 1, 2)  # [B, H, L_q, L_k]
