"""GraphormerLayer: a pre-LN transformer layer whose attention sees the graph's structure.

    h' = x + MHA(LN(x))       α_ij = ⟨q_i, k_j⟩/√D + b_{φ(j → i)} + c_ij      (Ying et al. 2021, eqs. 6-8)
    h  = h' + FFN(LN(h'))

over the complete graph of each input graph (``ga.shortest_path_distances``): the spatial bias
b (``SpatialBias``), the optional edge/path encoding c (``PathEncodingBias``), and an optional
virtual graph token (``GraphToken``) whose pairs get their own bias.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ..graph import TokenGraph
from ..nn import GraphAttention
from ..nn.block import TransformerBlock
from ..scores import make_score
from ..scores.structural import PathEncodingBias, SpatialBias

__all__ = ["GraphormerLayer"]


class GraphormerLayer(TransformerBlock):
    """One Graphormer encoder layer (Ying et al. 2021, "Do Transformers Really Perform Badly for
    Graph Representation?", Sec. 3.1-3.2), pre-LN.

    .. math::
        h' = x + \\mathrm{MHA}(\\mathrm{LN}(x)), \\quad
        h = h' + W_2\\, \\mathrm{GELU}(W_1 \\mathrm{LN}(h')), \\quad
        \\alpha^h_{ij} = \\frac{\\langle q^h_i, k^h_j \\rangle}{\\sqrt{D}} + b^h_{\\varphi(j \\to i)}
        + c^h_{ij}

    The attention is a ``GraphAttention`` with score ``scaled_dot + SpatialBias`` (plus
    ``PathEncodingBias`` when ``edge_dim`` is set); each layer has its own biases, as the
    ``attn_bias`` of most Graphormer ports is per layer when ``share_bias=False``.

    Args:
        embed_dim: C.  num_heads: H.
        max_distance: rows of the spatial bias, as in ``shortest_path_distances`` (default 20).
        edge_dim: F, the edge-feature width of the path encoding (default None: no path encoding).
        max_hops: M, the path encoding's hops (default 5).
        graph_token: the spatial bias learns the graph-token bias t_h (default False).
        ffn_dim: hidden width of the FFN (default C).
        dropout: dropout after attention and in the FFN (default 0).
        attn_dropout: dropout on the attention weights (default 0).
        activation: ``"gelu"`` (default, as Graphormer) or ``"relu"``.
        backend: GraphAttention's backend (default ``"auto"``).

    Shapes:
        x [N, C], graph the complete graph with E_c edges, edge_attr: the distances [E_c] or
        ``{"distance": [E_c], "path_attr": [E_c, M, F], "path_len": [E_c]}`` -> [N, C].
    """

    self_attn: GraphAttention

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        max_distance: int = 20,
        edge_dim: int | None = None,
        max_hops: int = 5,
        graph_token: bool = False,
        ffn_dim: int | None = None,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        activation: str = "gelu",
        backend: str = "auto",
    ) -> None:
        ffn_dim = embed_dim if ffn_dim is None else ffn_dim
        if isinstance(ffn_dim, bool) or not isinstance(ffn_dim, int) or ffn_dim < 1:
            raise ValueError(f"ffn_dim must be a positive int, got {ffn_dim!r}")
        if isinstance(num_heads, int) and num_heads >= 1:
            score = make_score("scaled_dot", num_heads, 1) + SpatialBias(
                num_heads, max_distance, graph_token=graph_token
            )
            if edge_dim is not None:
                score = score + PathEncodingBias(edge_dim, num_heads, max_hops)
        else:
            score = make_score("scaled_dot", 1, 1)  # GraphAttention names the bad num_heads
        attn = GraphAttention(
            embed_dim, num_heads, score=score, dropout=attn_dropout, backend=backend
        )
        super().__init__(
            attn, embed_dim, ffn_dim, dropout=dropout, activation=activation, norm_first=True
        )
        self.max_distance, self.edge_dim, self.graph_token = max_distance, edge_dim, graph_token

    def forward(  # type: ignore[override]
        self, x: Tensor, graph: TokenGraph, edge_attr: Tensor | Mapping[str, Tensor]
    ) -> Tensor:
        """One layer on x [N, C] over the complete ``graph`` with its per-edge inputs -> [N, C]."""
        return super().forward(x, graph, edge_attr=edge_attr)

    def __repr__(self) -> str:
        a = self.self_attn
        return (
            f"{type(self).__name__}(embed_dim={a.embed_dim}, num_heads={a.num_heads}, "
            f"max_distance={self.max_distance}, edge_dim={self.edge_dim}, "
            f"graph_token={self.graph_token})"
        )
