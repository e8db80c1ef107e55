"""Graphormer's virtual graph token [VNode] (Ying et al. 2021, Sec. 3.1.3).

One extra node per graph, connected to every node of its graph in both directions, whose final
representation is the graph's readout. In gatattn terms: each graph's complete graph grows by one
node (placed first), and the pairs with the token get their own learned spatial bias t_h
(distance code -1, ``SpatialBias(..., graph_token=True)``) instead of b_φ.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..graph import TokenGraph
from ..patterns.complete import complete_graph
from ..scores.structural import GRAPH_TOKEN_DISTANCE

__all__ = ["GraphToken", "WithGraphToken"]


@dataclass(frozen=True)
class WithGraphToken:
    """Inputs with one graph token per graph (``GraphToken.forward``).

    Attributes:
        x: node features [N + B, C]; row ``token_index[b]`` is graph b's token.
        graph: the complete graph over each graph's nodes and its token (lengths n_b + 1).
        edge_attr: the per-edge inputs on ``graph``'s edges: ``"distance"`` is -1 on token
            pairs; every other input is 0 there.
        token_index: LongTensor [B], the token's row of each graph (the readout).
        node_index: LongTensor [N], the new row of each input node.
    """

    x: Tensor
    graph: TokenGraph
    edge_attr: dict[str, Tensor]
    token_index: Tensor
    node_index: Tensor


class GraphToken(nn.Module):
    """Prepend a learned virtual token to every graph of a complete-graph batch.

    .. math::
        x'_{\\mathrm{tok}(b)} = t, \\qquad
        N'(i) = N(i) \\cup \\{\\mathrm{tok}(b)\\}, \\; N'(\\mathrm{tok}(b)) = \\text{graph } b
        \\text{ and its token}, \\qquad \\varphi(\\mathrm{tok}, \\cdot) = \\varphi(\\cdot, \\mathrm{tok}) = -1

    Args:
        embed_dim: C; ``embedding`` [C] is the token's input feature t (N(0, 0.02²) init).

    Shapes:
        x [N, C], graph with E_c = Σ n_b² edges, edge_attr [E_c, ...] -> x [N + B, C], graph with
        Σ (n_b + 1)² edges, edge_attr [Σ (n_b + 1)², ...].
    """

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"embed_dim must be an int >= 1, got {embed_dim!r}")
        self.embedding = nn.Parameter(torch.empty(embed_dim))  # t [C]
        nn.init.normal_(self.embedding, std=0.02)

    def forward(
        self, x: Tensor, graph: TokenGraph, edge_attr: Tensor | Mapping[str, Tensor]
    ) -> WithGraphToken:
        """Add the tokens.

        Args:
            x: node features [N, C].
            graph: the complete graph of each input graph (``ga.shortest_path_distances``).
            edge_attr: the hop distances [E_c] (read as ``{"distance": ...}``) or a mapping of
                per-edge inputs with E_c rows each.

        Raises:
            ValueError: ``graph`` is not a complete graph with self pairs over x's rows, or an
                input of ``edge_attr`` does not have one row per edge of ``graph``.
        """
        if graph.trusted_structure() != "complete" or not graph.params.get("self_loops", True):
            raise ValueError(
                "graph must be the complete graph of each input graph with self pairs "
                f"(ga.shortest_path_distances), got {graph!r}"
            )
        if x.dim() != 2 or x.size(0) != graph.num_dst or x.size(1) != self.embedding.numel():
            raise ValueError(
                f"x must be [N={graph.num_dst}, C={self.embedding.numel()}], got {list(x.shape)}"
            )
        inputs = dict(edge_attr) if isinstance(edge_attr, Mapping) else {"distance": edge_attr}
        for key, t in inputs.items():
            if t.dim() == 0 or t.size(0) != graph.num_edges:
                raise ValueError(
                    f"edge_attr[{key!r}] has shape {list(t.shape)} but the graph has "
                    f"{graph.num_edges} edges"
                )
        sizes = torch.tensor(graph.sequence_lengths("dst"), device=x.device)  # [B]
        B = sizes.numel()
        new_g = complete_graph(lengths=(sizes + 1).tolist(), device=x.device)
        seq = graph.sequence("dst")  # [N] graph of each node
        pos = graph.positions("dst")  # [N] position in its graph
        node_start = torch.cumsum(sizes + 1, 0) - (sizes + 1)  # [B] the token's row
        node_index = node_start[seq] + 1 + pos  # [N]
        x_new = x.new_empty(x.size(0) + B, x.size(1))  # [N + B, C]
        x_new[node_start] = self.embedding.to(x.dtype)
        x_new[node_index] = x
        # old pair (i, j) of graph b -> new pair (i + 1, j + 1) of the graph with n_b + 1 nodes
        src, dst = graph.edge_index[0], graph.edge_index[1]  # [E_c]
        n1 = (sizes + 1)[seq[dst]]  # [E_c]
        pair_start = torch.cumsum((sizes + 1) ** 2, 0) - (sizes + 1) ** 2  # [B]
        new_pos = pair_start[seq[dst]] + (pos[dst] + 1) * n1 + pos[src] + 1  # [E_c]
        out: dict[str, Tensor] = {}
        for key, t in inputs.items():
            fill = GRAPH_TOKEN_DISTANCE if key == "distance" else 0
            full = t.new_full((new_g.num_edges, *t.shape[1:]), fill)  # [E'_c, ...]
            out[key] = full.index_copy(0, new_pos, t)
        return WithGraphToken(x_new, new_g, out, node_start, node_index)
