"""Score biases that compose with any w(i, j) (docs/scores.md, "Biases").

    α_ij = w(i, j) + Σ_b bias_b(i, j)

Positions are token positions within each sequence (``TokenGraph.positions``), so a batched
block-diagonal graph gets the same biases as each sequence alone.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import POSITION, DenseContext, Edges, ScoreBias
from .grid import GridInput

__all__ = [
    "ALiBi",
    "AttnMaskBias",
    "EdgeFeatureBias",
    "RelativePositionBias",
    "alibi_slopes",
    "t5_bucket",
]


def t5_bucket(rel: Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> Tensor:
    """T5's relative-position bucket of ``rel = j - i`` (Raffel et al. 2020, Sec. 2.1).

    Exact buckets for |rel| < num_buckets/2 (per direction), then logarithmic up to
    ``max_distance``, beyond which everything shares the last bucket.
    """
    bucket = torch.zeros_like(rel)
    n = num_buckets
    if bidirectional:
        n //= 2
        bucket = bucket + (rel > 0).long() * n
        dist = rel.abs()
    else:
        dist = (-rel).clamp(min=0)
    max_exact = n // 2
    large = (
        max_exact
        + (
            torch.log(dist.float().clamp(min=1) / max_exact)
            / math.log(max_distance / max_exact)
            * (n - max_exact)
        ).long()
    )
    large = large.clamp(max=n - 1)
    return bucket + torch.where(dist < max_exact, dist, large)


def _one_d(name: str, *pos: Tensor) -> None:
    """Refuse P-D positions [N, P] for a bias over 1-D sequence positions.

    Raises:
        ValueError: a position tensor that is not 1-D.
    """
    for p in pos:
        if p.dim() != 1:
            raise ValueError(
                f"{name} reads 1-D token positions [N], got P-D positions [N, P] with "
                f"P = {p.shape[-1]} (P-D positions are for the rotary score)"
            )


def _integer_rel(rel: Tensor) -> Tensor:
    """j − i as integers for T5's buckets: float positions must be whole numbers.

    Raises:
        ValueError: a distance that is not a whole number (fractional positions).
    """
    if not rel.is_floating_point():
        return rel.long()
    bad = rel != rel.round()
    if bool(bad.any()):
        raise ValueError(
            "RelativePositionBias (T5 buckets) needs integer positions, got a relative "
            f"position of {float(rel[bad][0])}"
        )
    return rel.long()


class RelativePositionBias(ScoreBias):
    """Bucketed learned relative-position bias (Raffel et al. 2020, T5; Shaw et al. 2018).

    .. math:: b(i, j) = B_h[\\mathrm{bucket}(j - i)]

    Args:
        num_heads: H.  num_buckets: 32 as T5.  max_distance: 128 as T5.
        bidirectional: separate buckets for j > i and j < i (True for encoders).

    Raises:
        ValueError: too few buckets for ``max_distance``; and at run time P-D positions, or
            float positions whose differences are not whole numbers.
    """

    kind = POSITION
    name = "relative_position"

    def __init__(
        self,
        num_heads: int,
        num_buckets: int = 32,
        max_distance: int = 128,
        bidirectional: bool = True,
    ) -> None:
        super().__init__()
        if num_buckets < 4 or max_distance <= num_buckets // 4:
            raise ValueError(
                f"need num_buckets >= 4 and max_distance > num_buckets/4, got "
                f"num_buckets={num_buckets}, max_distance={max_distance}"
            )
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.bidirectional, self.num_heads = bidirectional, num_heads
        self.embedding = nn.Embedding(num_buckets, num_heads)  # B [buckets, H]

    def _bias(self, rel: Tensor) -> Tensor:
        idx = t5_bucket(_integer_rel(rel), self.bidirectional, self.num_buckets, self.max_distance)
        return self.embedding(idx)  # [..., H]

    def forward(self, edges: Edges) -> Tensor:
        src, dst = edges.pos_src(), edges.pos_dst()  # [e]
        _one_d("RelativePositionBias", src, dst)
        return self._bias(src - dst)  # [e, H]

    def dense(self, ctx: DenseContext) -> Tensor:
        _one_d("RelativePositionBias", ctx.pos_q, ctx.pos_k)
        rel = ctx.pos_k[None, :] - ctx.pos_q[:, None]  # [L_q, L_k]
        return self._bias(rel).permute(2, 0, 1)  # [H, L_q, L_k]


def alibi_slopes(num_heads: int) -> Tensor:
    """ALiBi's per-head slopes (Press et al. 2022): 2^(-8h/H) for h = 1..H, with the paper's
    interleaving when H is not a power of two."""

    def pow2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return torch.tensor(pow2(num_heads))
    closest = 2 ** math.floor(math.log2(num_heads))
    return torch.tensor(pow2(closest) + pow2(2 * closest)[0::2][: num_heads - closest])


class ALiBi(ScoreBias):
    """Attention with Linear Biases (Press et al. 2022, "Train Short, Test Long").

    .. math:: b(i, j) = -m_h \\, |i - j|

    The symmetric form; on a causal graph (j <= i) it is the paper's m_h (j - i).
    The slopes m_h are a fixed buffer, not parameters. Positions may be int or float, 1-D.

    Raises:
        ValueError: at run time, P-D positions [N, P].
    """

    kind = POSITION
    name = "alibi"

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.register_buffer("slopes", alibi_slopes(num_heads))  # m [H]
        self.slopes: Tensor

    def forward(self, edges: Edges) -> Tensor:
        src, dst = edges.pos_src(), edges.pos_dst()  # [e]
        _one_d("ALiBi", src, dst)
        dist = (dst - src).abs()  # [e]
        return -dist.unsqueeze(-1).to(self.slopes.dtype) * self.slopes  # [e, H]

    def dense(self, ctx: DenseContext) -> Tensor:
        _one_d("ALiBi", ctx.pos_q, ctx.pos_k)
        dist = (ctx.pos_q[:, None] - ctx.pos_k[None, :]).abs()  # [L_q, L_k]
        return -dist.to(self.slopes.dtype) * self.slopes[:, None, None]  # [H, L_q, L_k]


class EdgeFeatureBias(ScoreBias):
    """A learned projection of edge features to one bias per head (Ying et al. 2021,
    Graphormer's edge encoding; Dwivedi & Bresson 2021).

    .. math:: b(i, j) = (W_e \\, e_{ij})_h

    Args:
        edge_dim: F, the width of ``edge_attr`` [E, F].  num_heads: H.
    """

    name = "edge_features"

    def __init__(self, edge_dim: int, num_heads: int, bias: bool = False) -> None:
        super().__init__()
        self.edge_dim, self.num_heads = edge_dim, num_heads
        self.proj = nn.Linear(edge_dim, num_heads, bias=bias)  # W_e [H, F]

    def _check(self, edge_attr: Tensor | None) -> Tensor:
        if edge_attr is None:
            raise ValueError(
                "EdgeFeatureBias needs edge_attr [E, F]; pass forward(..., edge_attr=...)"
            )
        if edge_attr.dim() == 1:
            edge_attr = edge_attr.unsqueeze(-1)
        if edge_attr.size(-1) != self.edge_dim:
            raise ValueError(
                f"edge_attr has {edge_attr.size(-1)} features but EdgeFeatureBias expects "
                f"edge_dim={self.edge_dim}"
            )
        return edge_attr

    def forward(self, edges: Edges) -> Tensor:
        attr = self._check(edges.input("edge_attr", "EdgeFeatureBias"))
        return self.proj(attr.to(self.proj.weight.dtype))  # [e, H]

    def dense(self, ctx: DenseContext) -> Tensor:
        attr = self._check(ctx.edge_attr)  # [L_q, L_k, F]
        return self.proj(attr.to(self.proj.weight.dtype)).permute(2, 0, 1)  # [H, L_q, L_k]


class AttnMaskBias(ScoreBias):
    """An additive bias given per edge: b(i, j) = M_ij, read from ``edge_attr`` (per head or
    shared by the heads). gatattn's one bias whose values are given, not computed.

    .. math:: \\alpha_{ij} = w(i, j) + M_{ij}

    It carries a dense additive mask onto the edges of the graph: nn.MultiheadAttention's float
    ``attn_mask`` (and per-head boolean masks as 0/-inf), and in converted Hugging Face models
    a float mask with a bias (Falcon's ALiBi), BLOOM's ALiBi term and T5's ``position_bias``,
    each read on the graph's edges only. It reads ``edge_attr`` itself when that is one tensor,
    else ``edge_attr["attn_mask"]``. Without ``edge_attr`` the bias is 0.

    Shapes:
        edge_attr [E, 1] or [E, H] -> bias [E, 1] or [E, H] (broadcast over heads);
        dense: ctx.edge_attr [L_q, L_k, 1 | H] -> [1 | H, L_q, L_k].

    Raises:
        ValueError: ``edge_attr`` that is not 2-D.
    """

    name = "attn_mask"

    def forward(self, edges: Edges) -> Tensor:
        attr = edges.input("attn_mask", "AttnMaskBias")
        if attr is None:
            return torch.zeros((), device=edges.src.device)  # 0-d: keeps the scores' dtype
        _check_mask_shape(attr)
        return attr  # [e, 1 | H]

    def dense(self, ctx: DenseContext) -> Tensor:
        if ctx.edge_attr is None:
            return torch.zeros((), device=ctx.pos_q.device)
        return ctx.edge_attr.permute(2, 0, 1)  # [1 | H, L_q, L_k]

    def dense_grid(self, edge_attr: object) -> Tensor | None:
        """M on the padded grid [B | 1, H | 1, L_q, L_k] when ``edge_attr`` holds it as a grid
        (``GridInput``, as the drop-in hands its masks over), else None."""
        if not isinstance(edge_attr, GridInput):
            return None
        given = edge_attr.known(self.name)  # the tensor as given, when at hand: same rule
        if given is not None:
            _check_mask_shape(given)
        return edge_attr.grid(self.name)


def _check_mask_shape(attr: Tensor) -> None:
    if attr.dim() != 2:
        raise ValueError(f"AttnMaskBias needs edge_attr [E, 1] or [E, H], got {list(attr.shape)}")
