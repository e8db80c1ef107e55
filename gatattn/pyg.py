"""GraphTransformerBlock: a transformer layer for GNN stacks in PyTorch Geometric (docs/pyg.md).

    h   = x + Dropout(GraphAttention(Norm(x), G))             (pre-norm, ``norm_first=True``)
    out = h + Dropout(W_2 σ(W_1 Norm(h)))

or, post-norm (``norm_first=False``, as the original transformer)

    h   = Norm(x + Dropout(GraphAttention(x, G)))
    out = Norm(h + Dropout(W_2 σ(W_1 h)))

On the complete graph this is exactly ``nn.TransformerEncoderLayer`` (tests/test_pyg.py). It takes
what a PyG ``Data``/``Batch`` provides, positionally, so it fits ``torch_geometric.nn.Sequential``:
``block(x, edge_index, edge_attr, batch)``.
"""

from __future__ import annotations

from torch import Tensor

from .graph import TokenGraph
from .nn import GraphAttention
from .nn.block import TransformerBlock
from .scores import ScoreCallable, ScoreFunction

__all__ = ["GraphTransformerBlock"]


class GraphTransformerBlock(TransformerBlock):
    """Graph attention + feed-forward + norms + residuals (Vaswani et al. 2017; Dwivedi &
    Bresson 2021, "A Generalization of Transformer Networks to Graphs").

    .. math::
        h = x + \\mathrm{Attn}_G(\\mathrm{LN}_1 x), \\quad
        \\mathrm{out} = h + W_2 \\, \\sigma(W_1 \\mathrm{LN}_2 h)   \\quad (\\text{pre-norm})

    The shared ``TransformerBlock`` (gatattn/nn/block.py) with a ``GraphAttention``. Parameter
    names follow ``nn.TransformerEncoderLayer`` (self_attn, linear1, linear2, norm1, norm2), so
    weights copy across one to one.

    Args:
        embed_dim: C.  num_heads: H.
        score: w(i, j) of the attention (default ``"scaled_dot"``).
        ffn_dim: hidden width of the feed-forward network (default 4·C).
        dropout: dropout after attention, inside and after the feed-forward (default 0).
        attn_dropout: dropout on the attention weights (default: ``dropout``).
        activation: ``"relu"`` (default, as torch) or ``"gelu"``.
        norm_first: pre-norm (default True) or post-norm.
        edge_dim: F, for TransformerConv-style key/value modulation by ``edge_attr`` (default None).
        backend: GraphAttention backend (default ``"auto"``).

    Shapes:
        x [N, C], edge_index [2, E] (or a TokenGraph), edge_attr [E, F], batch [N] -> [N, C].
    """

    self_attn: GraphAttention

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        score: str | ScoreFunction | ScoreCallable = "scaled_dot",
        ffn_dim: int | None = None,
        dropout: float = 0.0,
        attn_dropout: float | None = None,
        activation: str = "relu",
        norm_first: bool = True,
        edge_dim: int | None = None,
        backend: str = "auto",
    ) -> None:
        ffn_dim = 4 * embed_dim if ffn_dim is None else ffn_dim
        if ffn_dim < 1:
            raise ValueError(f"ffn_dim must be a positive int, got {ffn_dim}")
        attn = GraphAttention(
            embed_dim,
            num_heads,
            score=score,
            dropout=dropout if attn_dropout is None else attn_dropout,
            edge_dim=edge_dim,
            backend=backend,
        )
        super().__init__(
            attn, embed_dim, ffn_dim, dropout=dropout, activation=activation, norm_first=norm_first
        )

    def forward(
        self,
        x: Tensor,
        edge_index: TokenGraph | Tensor,
        edge_attr: Tensor | None = None,
        batch: Tensor | None = None,
    ) -> Tensor:
        """One block: x [N, C] over ``edge_index`` [2, E] -> [N, C]."""
        return super().forward(x, edge_index, edge_attr=edge_attr, batch=batch)

    def __repr__(self) -> str:
        a = self.self_attn
        return (
            f"{type(self).__name__}(embed_dim={a.embed_dim}, num_heads={a.num_heads}, "
            f"score={a.score.name!r}, ffn_dim={self.linear1.out_features}, "
            f"norm_first={self.norm_first})"
        )
