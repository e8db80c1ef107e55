"""Graph-structure biases of Graphormer (Ying et al. 2021, "Do Transformers Really Perform Badly
for Graph Representation?", Sec. 3.1.2-3.1.3), on the complete graph of each input graph:

    α_ij = w(i, j) + b^h_{φ(j → i)} + c^h_ij                                  (docs/graph_transformers.md)

* ``SpatialBias``: b^h_d, one learned scalar per head and hop distance d = φ(j → i)
  (``edge_attr["distance"]`` or ``edge_attr`` itself, from ``ga.shortest_path_distances``).
* ``PathEncodingBias``: c^h_ij = (1/N) Σ_{n=1}^{N} ⟨x_{e_n}, w^h_n⟩ over the first N edges
  e_1..e_N of one shortest path from j to i (``ShortestPaths.path_inputs``).

Both read per-edge inputs only (``kind = "per_edge"``, the ``ScoreBias`` default): they have a
per-edge form and no dense form. A backend that builds a dense additive mask can still scatter
their per-edge values into it (docs/scores.md, "What a score declares").
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .base import Edges, ScoreBias
from .grid import GridInput, table_gather

__all__ = ["GRAPH_TOKEN_DISTANCE", "PathEncodingBias", "SpatialBias"]

#: The distance code of a pair with the virtual graph token (``ga.GraphToken``): its own bias.
GRAPH_TOKEN_DISTANCE = -1


def _positive_int(value: object, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


class SpatialBias(ScoreBias):
    """Graphormer's spatial encoding: one learned bias per head and hop distance.

    .. math:: b(i, j)_h = W[\\varphi(j \\to i), h]

    φ(j → i) is the hop distance from the source j to the target i, clipped to ``max_distance``
    (row ``max_distance + 1`` is "no path"), as ``ga.shortest_path_distances`` returns it. With
    ``graph_token=True`` the pairs with the virtual graph token (distance code -1,
    ``GRAPH_TOKEN_DISTANCE``) get their own learned bias t_h (``token_weight``), as the paper's
    virtual node (Sec. 3.1.3) does.

    Reads ``edge_attr`` itself when it is one tensor, else ``edge_attr["distance"]``.

    Args:
        num_heads: H.
        max_distance: the largest distance with its own row (>= 0, default 20).
        graph_token: add ``token_weight`` [H] for distance -1 (default False).

    Shapes:
        weight [max_distance + 2, H]; distance [E] (integer) -> bias [E, H].
    """

    name = "spatial"

    def __init__(
        self, num_heads: int, max_distance: int = 20, *, graph_token: bool = False
    ) -> None:
        super().__init__()
        self.num_heads = _positive_int(num_heads, "num_heads", 1)
        self.max_distance = _positive_int(max_distance, "max_distance", 0)
        self.weight = nn.Parameter(torch.empty(self.max_distance + 2, self.num_heads))  # [M+2, H]
        self.token_weight = nn.Parameter(torch.empty(self.num_heads)) if graph_token else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02²), as Graphormer's ``init_params`` initialises its embeddings."""
        nn.init.normal_(self.weight, std=0.02)
        if self.token_weight is not None:
            nn.init.normal_(self.token_weight, std=0.02)

    def _distance(self, edges: Edges) -> Tensor:
        dist = edges.input("distance", "SpatialBias")
        if dist is None:
            raise ValueError(
                "SpatialBias needs the hop distances: pass edge_attr=dist or "
                "edge_attr={'distance': dist, ...} (dist from ga.shortest_path_distances)"
            )
        if dist.dim() == 2 and dist.size(1) == 1:
            dist = dist.squeeze(1)
        if dist.dtype == torch.bool:  # True/False would read as 1/0 hops
            raise ValueError(
                "edge_attr['distance'] must be an integer tensor [E] of hop counts, got dtype "
                "torch.bool (a mask, not distances: pass ga.shortest_path_distances' dist)"
            )
        if dist.dim() != 1 or dist.is_floating_point() or dist.is_complex():
            raise ValueError(
                f"edge_attr['distance'] must be an integer tensor [E], got dtype {dist.dtype} "
                f"and shape {list(dist.shape)}"
            )
        return self._check_range(dist).long()

    def _check_range(self, dist: Tensor) -> Tensor:
        """``dist`` itself, after checking it indexes the table (-1 only with the token).

        Raises:
            ValueError: a distance outside -1 / 0 .. max_distance + 1.
        """
        low = GRAPH_TOKEN_DISTANCE if self.token_weight is not None else 0
        if dist.numel() and not torch.compiler.is_compiling():
            lo, hi = int(dist.min()), int(dist.max())
            if lo < low or hi > self.max_distance + 1:
                raise ValueError(
                    f"edge_attr['distance'] holds values in [{lo}, {hi}], outside the table of "
                    f"SpatialBias(max_distance={self.max_distance}) (valid: {low}.."
                    f"{self.max_distance + 1}); build it with the same max_distance"
                )
        return dist

    def forward(self, edges: Edges) -> Tensor:
        dist = self._distance(edges)  # [e]
        bias = self.weight[dist.clamp(min=0)]  # [e, H]
        if self.token_weight is not None:
            token = (dist == GRAPH_TOKEN_DISTANCE).unsqueeze(-1)  # [e, 1]
            bias = torch.where(token, self.token_weight, bias)  # [e, H]
        return bias

    def dense_grid(self, edge_attr: object) -> Tensor | None:
        """b on the padded grid, gathered from the table by the distance grid of a
        ``GridInput`` (the dense backend scatters the distances there once per graph), else
        None. Its table gradient is one pass over the grid (``table_gather``). Cells without
        an edge (``GridInput.edge_cells``) gather 0, not the entry of distance 0, so a
        non-finite entry no edge reads never reaches the padding or the graph's −∞ cells.

        Shapes:
            distance grid [B, 1, L_q, L_k] -> [B, H, L_q, L_k].
        """
        return self._gather(edge_attr, closed=False)

    def masked_grid(self, edge_attr: object) -> Tensor | None:
        """b on the edges and −∞ on the cells ``edge_attr.closed`` marks, by the same one
        gather: the closed cells index one more table entry, −∞ (its gradient is dropped; the
        softmax gives those cells 0 weight, so their gradient is 0 anyway). None when there is
        no ``closed`` grid, or when the table itself holds −∞ (then rows may lose every key, and
        the backend finds them in the mask).

        Shapes:
            distance grid and closed [B, 1, L_q, L_k] -> [B, H, L_q, L_k].
        """
        return self._gather(edge_attr, closed=True)

    def _gather(self, edge_attr: object, closed: bool) -> Tensor | None:
        if not isinstance(edge_attr, GridInput) or (closed and edge_attr.closed is None):
            return None
        dist = edge_attr.grid("distance")
        if dist is None or dist.is_floating_point() or dist.dtype == torch.bool:
            return None
        table: Tensor = self.weight  # [M + 2, H]
        if self.token_weight is not None:
            table = torch.cat([table, self.token_weight.unsqueeze(0)])  # [M + 3, H]
        if closed and bool(torch.isneginf(table).any()):  # [M + 2 | 3, H]: a few values
            return None
        rows, H = table.size(0), table.size(1)

        def index() -> Tensor:  # [B, H, L_q, L_k]: flat index h·rows + d into table.t()
            d = self._check_range(dist).long()
            if self.token_weight is not None:
                d = torch.where(d == GRAPH_TOKEN_DISTANCE, rows - 1, d)
            heads = torch.arange(H, device=d.device).view(1, H, 1, 1) * rows
            idx = d + heads
            if edge_attr.edge_cells is not None:  # cells without an edge: the entry 0 past
                idx = idx.masked_fill(~edge_attr.edge_cells, rows * H)  # the table, not d = 0's
            if closed:  # the entry after it: −∞
                assert edge_attr.closed is not None
                idx = idx.masked_fill(edge_attr.closed, rows * H + 1)
            return idx

        token = self.token_weight is not None  # the key holds what the index and its check read
        idx = edge_attr.derived(("spatial_index", self.max_distance, token, H, closed), index)
        flat = table.t().reshape(-1)  # [H · rows]
        flat = torch.cat([flat, flat.new_tensor([0.0, float("-inf")])])  # [H · rows + 2]
        return table_gather(flat, idx)  # [B, H, L_q, L_k]

    def extra_repr(self) -> str:
        token = ", graph_token=True" if self.token_weight is not None else ""
        return f"num_heads={self.num_heads}, max_distance={self.max_distance}{token}"


class PathEncodingBias(ScoreBias):
    """Graphormer's edge encoding: edge features along one shortest path, weighted per hop.

    .. math::
        c(i, j)_h = \\frac{1}{N} \\sum_{n=1}^{N} \\langle x_{e_n}, w^h_n \\rangle,
        \\qquad N = \\min(\\varphi(j \\to i), M)

    e_1, ..., e_N are the first N edges of one shortest path from j to i (Graphormer's
    ``multi_hop_max_dist`` = M), x_e their features [F] and w^h_n a learned vector per hop n and
    head h. c = 0 when N = 0 (i = j, or no path).

    Reads ``edge_attr["path_attr"]`` [E, M, F] (the features along each path, zero rows past
    its end) and ``edge_attr["path_len"]`` [E] (N), both from ``ShortestPaths.path_inputs``.

    Args:
        edge_dim: F.  num_heads: H.  max_hops: M (default 5).

    Shapes:
        weight [M, H, F]; path_attr [E, M, F], path_len [E] -> bias [E, H].
    """

    name = "path_encoding"

    def __init__(self, edge_dim: int, num_heads: int, max_hops: int = 5) -> None:
        super().__init__()
        self.edge_dim = _positive_int(edge_dim, "edge_dim", 1)
        self.num_heads = _positive_int(num_heads, "num_heads", 1)
        self.max_hops = _positive_int(max_hops, "max_hops", 1)
        self.weight = nn.Parameter(torch.empty(self.max_hops, self.num_heads, self.edge_dim))
        nn.init.normal_(self.weight, std=0.02)

    def _inputs(self, edges: Edges) -> tuple[Tensor, Tensor]:
        attr = edges.edge_attr
        if not isinstance(attr, Mapping) or "path_attr" not in attr or "path_len" not in attr:
            raise ValueError(
                "PathEncodingBias reads edge_attr['path_attr'] [E, M, F] and "
                "edge_attr['path_len'] [E]: pass edge_attr=paths.path_inputs(edge_features)"
            )
        feats, length = attr["path_attr"], attr["path_len"]
        M, F = self.max_hops, self.edge_dim
        if feats.dim() != 3 or feats.size(2) != F or feats.size(1) < M:
            raise ValueError(
                f"edge_attr['path_attr'] must be [E, >= max_hops={M}, edge_dim={F}], got "
                f"{list(feats.shape)}"
            )
        if length.dim() != 1 or length.is_floating_point() or length.dtype == torch.bool:
            raise ValueError(
                f"edge_attr['path_len'] must be an integer tensor [E], got {length.dtype} "
                f"{list(length.shape)}"
            )
        if length.numel() and not torch.compiler.is_compiling() and int(length.min()) < 0:
            raise ValueError(f"edge_attr['path_len'] holds a negative length {int(length.min())}")
        return feats[:, :M], length

    def forward(self, edges: Edges) -> Tensor:
        feats, length = self._inputs(edges)  # [e, M, F], [e]
        w = self.weight.to(feats.dtype)  # [M, H, F]
        hops = torch.arange(self.max_hops, device=feats.device)  # [M]
        used = (hops[None, :] < length[:, None]).to(feats.dtype)  # [e, M]
        per_hop = torch.einsum("emf,mhf->emh", feats * used.unsqueeze(-1), w)  # [e, M, H]
        n = length.clamp(min=1, max=self.max_hops).to(feats.dtype)  # [e]
        return per_hop.sum(1) / n.unsqueeze(-1)  # [e, H]

    def extra_repr(self) -> str:
        return f"edge_dim={self.edge_dim}, num_heads={self.num_heads}, max_hops={self.max_hops}"
