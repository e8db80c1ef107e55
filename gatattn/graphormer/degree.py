"""Graphormer's centrality encoding: learned degree embeddings added to the node features.

h_i = x_i + z⁻_{deg⁻(i)} + z⁺_{deg⁺(i)}        (Ying et al. 2021, Sec. 3.1.1, eq. 5)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..validation import validate_edge_index

__all__ = ["DegreeEncoding"]


class DegreeEncoding(nn.Module):
    """Add a learned embedding of each node's in- and out-degree to its features.

    .. math::
        h_i = x_i + z^-_{\\min(\\deg^-(i), K)} + z^+_{\\min(\\deg^+(i), K)}
        \\quad (\\text{directed}), \\qquad h_i = x_i + z_{\\min(\\deg(i), K)}
        \\quad (\\text{undirected})

    deg⁻(i) counts the edges into i (row 1 of edge_index), deg⁺(i) the edges out of i (row 0);
    duplicate edges count. Degrees above K = ``max_degree`` share the last row. For an undirected
    graph stored with both directions (PyG's convention) deg(i) = deg⁻(i), and one table is used.

    Args:
        embed_dim: C.
        max_degree: K >= 0, the largest degree with its own embedding (default 64).
        directed: two tables z⁻, z⁺ (default True) or one table z of the in-degree.

    Shapes:
        x [N, C], edge_index [2, E] -> [N, C]; ``in_embedding`` (and ``out_embedding``) [K + 1, C].
    """

    def __init__(self, embed_dim: int, max_degree: int = 64, *, directed: bool = True) -> None:
        super().__init__()
        for name, val, low in (("embed_dim", embed_dim, 1), ("max_degree", max_degree, 0)):
            if isinstance(val, bool) or not isinstance(val, int) or val < low:
                raise ValueError(f"{name} must be an int >= {low}, got {val!r}")
        self.embed_dim, self.max_degree, self.directed = embed_dim, max_degree, directed
        self.in_embedding = nn.Embedding(max_degree + 1, embed_dim)  # z⁻ [K + 1, C]
        self.out_embedding = nn.Embedding(max_degree + 1, embed_dim) if directed else None  # z⁺
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02²), as Graphormer's ``init_params``."""
        nn.init.normal_(self.in_embedding.weight, std=0.02)
        if self.out_embedding is not None:
            nn.init.normal_(self.out_embedding.weight, std=0.02)

    def degrees(self, edge_index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
        """(deg⁻, deg⁺), LongTensors [N], clipped to ``max_degree``."""
        validate_edge_index(edge_index, num_nodes, num_nodes)
        deg_in = torch.bincount(edge_index[1], minlength=num_nodes)  # [N]
        deg_out = torch.bincount(edge_index[0], minlength=num_nodes)  # [N]
        return deg_in.clamp(max=self.max_degree), deg_out.clamp(max=self.max_degree)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """x [N, C] plus the degree embeddings -> [N, C]."""
        if x.dim() != 2 or x.size(1) != self.embed_dim:
            raise ValueError(
                f"x must be [N, embed_dim={self.embed_dim}], got shape {list(x.shape)}"
            )
        deg_in, deg_out = self.degrees(edge_index, x.size(0))  # [N], [N]
        out = x + self.in_embedding(deg_in)  # [N, C]
        if self.out_embedding is not None:
            out = out + self.out_embedding(deg_out)  # [N, C]
        return out

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, max_degree={self.max_degree}, directed={self.directed}"
