"""Rotary position embeddings (docs/scores.md, "Rotary positions"): a score that rotates q and k.

    α_ij = s · <R(p_i) q_i, R(p_j) k_j>

R(p) rotates each pair of the first ``rotary_dim`` channels of a head by the angle p·θ_m,
θ_m = base^(−2m/rotary_dim) (Su et al. 2021, "RoFormer"). Positions are per node: token
positions within each sequence by default, or any integer or float positions, and P-D positions
[N, P] (axial: the rotary channels split into P equal groups, group a rotated by p[a]).

R(p) is orthogonal and depends on the node alone, so the score is a node-level transform
followed by s·<q_i, k_j>: ``transform_nodes`` rotates every q and k once (O(N·D)), and
``after_transform()`` is the plain scaled dot product, which runs on every backend (SDPA on
complete, causal and window graphs). ``forward`` stays the literal per-edge formula.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..kernels import edge_dot
from .base import DenseContext, Edges, ScoreFunction
from .functions import Dot, ScaledDot

__all__ = ["Rotary", "ScaledDotScale", "apply_rotary"]


class ScaledDotScale(ScoreFunction):
    """s·<q_i, k_j> with a fixed scale s (the score a rotary score runs as after its rotation).

    .. math:: \\alpha_{ij} = s \\, \\langle q_i, k_j \\rangle
    """

    has_dense = True
    name = "scaled_dot"

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def sdpa_scale(self, head_dim: int) -> float | None:
        return self.scale

    def forward(self, q_i: Tensor, k_j: Tensor, edges: Edges) -> Tensor:
        return (q_i * k_j).sum(-1) * self.scale  # [e, H]

    def edge_scores(self, q: Tensor, k: Tensor, edges: Edges) -> Tensor:
        return edge_dot(q, k, edges.src, edges.dst) * self.scale  # [E, H]

    def dense(self, q: Tensor, k: Tensor, ctx: DenseContext) -> Tensor:
        return q @ k.transpose(-1, -2) * self.scale  # [..., H, L_q, L_k]


def _angles(pos: Tensor, rotary_dim: int, base: float, dtype: torch.dtype) -> Tensor:
    """p·θ per rotated pair: pos [N] or [N, P] -> [N, rotary_dim / 2] (axis a: pairs of group a)."""
    pos = pos.to(dtype)
    axes = pos.unsqueeze(-1) if pos.dim() == 1 else pos  # [N, P]
    P = axes.size(-1)
    width = rotary_dim // P  # channels per axis
    m = torch.arange(0, width, 2, dtype=dtype, device=pos.device)  # [width / 2]
    inv_freq = 1.0 / base ** (m / width)  # θ_m [width / 2]
    return (axes.unsqueeze(-1) * inv_freq).flatten(-2)  # [N, P·width/2]


def apply_rotary(
    x: Tensor,
    pos: Tensor,
    rotary_dim: int,
    base: float = 10000.0,
    interleaved: bool = False,
    dim: int = -3,
) -> Tensor:
    """R(p) x: rotate the first ``rotary_dim`` channels of each head by the node's position.

    .. math::
        (x'_{a}, x'_{b}) = (x_a \\cos p\\theta_m - x_b \\sin p\\theta_m,\\;
        x_b \\cos p\\theta_m + x_a \\sin p\\theta_m), \\quad \\theta_m = \\mathrm{base}^{-2m/r}

    Pairs (a, b) = (m, m + r/2) in the "rotate half" layout (GPT-NeoX, Llama), (2m, 2m + 1) when
    ``interleaved`` (GPT-J, RoFormer). With P-D positions the r channels form P groups of r/P,
    each rotated by one coordinate with θ over r/P. Channels from ``rotary_dim`` on pass through.

    Args:
        x: the vectors.  pos: one position per row of axis ``dim`` of x.
        rotary_dim: r (even).  base: θ's base.  interleaved: the pair layout.
        dim: the axis of x that pos indexes: -3 for nodes [N, H, D] (default), -2 for
            sequences [..., H, L, D].

    Shapes:
        x [N, H, D] with pos [N] or [N, P] (dim=-3); or x [..., H, L, D] with pos [L] or [L, P]
        (dim=-2) -> like x.
    """
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    ang = _angles(pos, rotary_dim, base, work)  # [n, r/2]
    if dim == -3:  # [N, H, D]: one node per row
        ang = ang.unsqueeze(1)  # [N, 1, r/2]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    P = 1 if pos.dim() == 1 else pos.size(-1)
    if interleaved:
        a, b = rot[..., 0::2], rot[..., 1::2]  # [.., r/2]
        out = torch.stack([a * cos - b * sin, b * cos + a * sin], -1).flatten(-2)
    else:  # rotate half within each axis group of r/P channels
        g = rot.unflatten(-1, (P, 2, rotary_dim // (2 * P)))  # [.., P, 2, r/(2P)]
        a, b = g[..., 0, :], g[..., 1, :]  # [.., P, r/(2P)]
        c, s = cos.unflatten(-1, (P, -1)), sin.unflatten(-1, (P, -1))  # [.., P, r/(2P)]
        out = torch.stack([a * c - b * s, b * c + a * s], -2).flatten(-3)  # [.., r]
    return torch.cat([out, rest], -1) if rest.size(-1) else out


class Rotary(ScoreFunction):
    """Rotary position embeddings as a score (Su et al. 2021, "RoFormer"; partial rotary as
    GPT-NeoX and Phi; axial 2-D positions for images).

    .. math:: \\alpha_{ij} = s \\, \\langle R(p_i) q_i, R(p_j) k_j \\rangle

    which depends on the positions only through p_i − p_j (R is orthogonal with
    R(p_i)ᵀ R(p_j) = R(p_j − p_i)). The backends rotate q and k once per node and then run
    s·<q_i, k_j> (``after_transform``): SDPA on complete, causal and window graphs.

    Args:
        head_dim: D.
        rotary_dim: r, the rotated channels of each head, even (default D; GPT-NeoX uses
            D/4, Phi-2 D·0.4). Channels from r on are not rotated.
        base: the frequency base (default 10000; Llama 3 uses 500000).
        interleaved: rotate pairs (2m, 2m + 1) (GPT-J, RoFormer) instead of (m, m + r/2)
            ("rotate half": GPT-NeoX, Llama, Mistral, Qwen).
        scale: s (default 1/√D).

    Shapes:
        q_i, k_j [e, H, D] and positions [N] or [N, P] -> α [e, H]; with P-D positions r must
        be divisible by 2P.

    Raises:
        ValueError: ``rotary_dim`` odd, < 2 or > ``head_dim``; ``base`` <= 0; and at run time
            a head size other than ``head_dim``, or positions of the wrong shape.
    """

    name = "rotary"
    # no has_dense: its dense form reads positions; it declares its node transform instead
    # (transform_nodes, after_transform), and backends run s·<q_i, k_j> after it

    def __init__(
        self,
        head_dim: int,
        rotary_dim: int | None = None,
        *,
        base: float = 10000.0,
        interleaved: bool = False,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        r = head_dim if rotary_dim is None else rotary_dim
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 2:
            raise ValueError(f"Rotary needs head_dim >= 2, got {head_dim!r}")
        if isinstance(r, bool) or not isinstance(r, int) or r < 2 or r % 2 or r > head_dim:
            raise ValueError(
                f"rotary_dim must be an even int in [2, head_dim={head_dim}], got {r!r}"
            )
        if not base > 0:
            raise ValueError(f"Rotary's base must be > 0, got {base}")
        self.head_dim, self.rotary_dim, self.base = head_dim, r, float(base)
        self.interleaved = interleaved
        self.scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
        # after the rotation: s·<q_i, k_j>, stateless and kept out of the module tree
        dot = ScaledDot() if scale is None else Dot() if scale == 1 else ScaledDotScale(scale)
        dot.name = f"rotary, then {dot.name}"  # what dispatch messages show
        self.__dict__["_dot"] = dot

    def _check(self, x: Tensor, pos: Tensor, what: str, n: int) -> None:
        if x.size(-1) != self.head_dim:
            raise ValueError(
                f"Rotary was built for head_dim={self.head_dim} but {what} has head size "
                f"{x.size(-1)}"
            )
        if pos.dim() not in (1, 2) or pos.size(0) != n:
            raise ValueError(
                f"Rotary needs {what} positions of shape [{n}] or [{n}, P], got {list(pos.shape)}"
            )
        P = 1 if pos.dim() == 1 else pos.size(1)
        if self.rotary_dim % (2 * P):
            raise ValueError(
                f"{P}-D positions split rotary_dim={self.rotary_dim} into {P} groups of "
                f"rotated pairs: rotary_dim must be divisible by {2 * P}"
            )

    def rotate(self, x: Tensor, pos: Tensor, what: str = "x", dim: int = -3) -> Tensor:
        """R(p) x: x [N, H, D] with pos [N] or [N, P] (dim=-3), or x [..., H, L, D] with pos
        [L] or [L, P] (dim=-2)."""
        self._check(x, pos, what, x.size(dim))
        return apply_rotary(x, pos, self.rotary_dim, self.base, self.interleaved, dim)

    def forward(self, q_i: Tensor, k_j: Tensor, edges: Edges) -> Tensor:
        q = self.rotate(q_i, edges.pos_dst(), "query")  # [e, H, D]
        k = self.rotate(k_j, edges.pos_src(), "key")  # [e, H, D]
        return (q * k).sum(-1) * self.scale  # [e, H]

    def after_transform(self) -> ScoreFunction:
        dot: ScoreFunction = self.__dict__["_dot"]
        return dot

    def transform_nodes(
        self, q: Tensor, k: Tensor, pos_q: Tensor, pos_k: Tensor
    ) -> tuple[Tensor, Tensor]:
        return self.rotate(q, pos_q, "query"), self.rotate(k, pos_k, "key")

    def edge_scores(self, q: Tensor, k: Tensor, edges: Edges) -> Tensor:
        qr, kr = self.transform_nodes(q, k, *edges.node_positions())  # [N, H, D], once per node
        return edge_dot(qr, kr, edges.src, edges.dst) * self.scale  # [E, H]

    def dense(self, q: Tensor, k: Tensor, ctx: DenseContext) -> Tensor:
        qr = self.rotate(q, ctx.pos_q, "query", -2)  # [..., H, L_q, D]
        kr = self.rotate(k, ctx.pos_k, "key", -2)  # [..., H, L_k, D]
        return qr @ kr.transpose(-1, -2) * self.scale  # [..., H, L_q, L_k]

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, base={self.base:g}, "
            f"interleaved={self.interleaved}"
        )
