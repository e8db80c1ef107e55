"""The toy model of the command line: ``gatattn demo`` trains it, ``gatattn export --model tiny``
runs it with seeded random weights.

    h_0 = x                                                  (embeddings: the caller's)
    h_l = GraphTransformerBlock_l(h_{l-1}, G)                l = 1..L, pre-norm, FFN width 2·C
    out = LayerNorm(h_L)

Each block is ``ga.GraphTransformerBlock``: attention α_ij, Attn_ij over the in-neighbours of i
in G (docs/math.md, eqs. 1-3), then a feed-forward network, each with a residual.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import gatattn as ga

__all__ = ["ToyEncoder", "dense_weights"]


class ToyEncoder(nn.Module):
    """``layers`` pre-norm GraphTransformerBlocks (FFN width 2·C) and a final LayerNorm.

    Args:
        dim: C, the width.  heads: H (``dim`` must be divisible by it).  layers: L.

    Shapes:
        x [N, C], graph over N nodes -> [N, C]; ``attentions`` -> L ``ga.Attention`` results,
        scores/weights [E, H].
    """

    def __init__(self, dim: int, heads: int, layers: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ga.GraphTransformerBlock(dim, heads, ffn_dim=2 * dim) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, graph: ga.TokenGraph) -> Tensor:
        for block in self.blocks:
            x = block(x, graph)  # [N, C]
        return self.norm(x)

    @torch.no_grad()
    def attentions(self, x: Tensor, graph: ga.TokenGraph) -> list[ga.Attention]:
        """Each layer's attention (scores α and weights Attn per edge, eqs. 1-2) on input x."""
        out = []
        for block in self.blocks:
            assert isinstance(block, ga.GraphTransformerBlock)
            # the block is pre-norm: its attention sees norm1(h)
            out.append(block.self_attn(block.norm1(x), graph, return_attention=True))
            x = block(x, graph)  # [N, C]
        return out


def dense_weights(res: ga.Attention, n: int) -> Tensor:
    """Attn as dense matrices [H, N, N]: row i holds the weights of target i (eq. 2), 0 off-graph."""
    dense = res.weights.new_zeros(res.num_heads, n, n)  # [H, N, N]
    dense[:, res.edge_index[1], res.edge_index[0]] = res.weights.t()
    return dense
