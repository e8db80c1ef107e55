"""The built-in score functions w(i, j) (docs/scores.md): scaled_dot, dot, additive (GAT),
gatv2, cosine, bilinear, neg_distance, and the adapter for plain callables.

Each class gives the per-edge formula (``forward``), a node-factorised ``edge_scores`` where the
formula allows it (no [E, H, D] tensor), and the ``dense`` formula.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kernels import edge_dot
from .base import DenseContext, Edges, ScoreCallable, ScoreFunction, check_scores

__all__ = [
    "Additive",
    "Bilinear",
    "CallableScore",
    "Cosine",
    "Dot",
    "GATv2",
    "NegDistance",
    "ScaledDot",
]


class ScaledDot(ScoreFunction):
    """Scaled dot product (Vaswani et al. 2017, "Attention Is All You Need").

    .. math:: \\alpha_{ij} = \\langle q_i, k_j \\rangle / \\sqrt{D}
    """

    has_dense = True
    name = "scaled_dot"

    def sdpa_scale(self, head_dim: int) -> float | None:
        return 1.0 / math.sqrt(head_dim)

    def forward(self, q_i: Tensor, k_j: Tensor, edges: Edges) -> Tensor:
        return (q_i * k_j).sum(-1) / math.sqrt(q_i.size(-1))  # [e, H]

    def edge_scores(self, q: Tensor, k: Tensor, edges: Edges) -> Tensor:
        return edge_dot(q, k, edges.src, edges.dst) / math.sqrt(q.size(-1))  # [E, H]

    def dense(self, q: Tensor, k: Tensor, ctx: DenseContext) -> Tensor:
        return q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))  # [..., H, L_q, L_k]


class Dot(ScoreFunction):
    """Unscaled dot product (Luong et al. 2015, "Effective Approaches to Attention-based NMT").

    .. math:: \\alpha_{ij} = \\langle q_i, k_j \\rangle
    """

    has_dense = True
    name = "dot"

    def sdpa_scale(self, head_dim: int) -> float | None:
        return 1.0

    def forward(self, q_i: Tensor, k_j: Tensor, edges: Edges) -> Tensor:
        return (q_i * k_j).sum(-1)

    def edge_scores(self, q: Tensor, k: Tensor, edges: Edges) -> Tensor:
        return edge_dot(q, k, edges.src, edges.dst)

    def dense(self, q: Tensor, k: Tensor, ctx: DenseContext) -> Tensor:
        return q @ k.transpose(-1, -2)


class Additive(ScoreFunction):
    """GAT's additive score (Veličković et al. 2018, "Graph Attention Networks").

    .. math:: \\alpha_{ij} = \\mathrm{LeakyReLU}(a_l^\\top q_i + a_r^\\top k_j)

    which is GAT's ``a^T [W h_i || W h_j]`` with W h_i = q_i and W h_j = k_j, per head.

    Args:
        num_heads: H.  head_dim: D.  negative_slope: LeakyReLU slope (default 0.2, as GAT).
    """

    has_dense = True
    name = "additive"

    def __init__(self, num_heads: int, head_dim: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.negative_slope = negative_slope
        self.att_dst = nn.Parameter(torch.empty(num_heads, head_dim))  # a_l [H, D]
        self.att_src = nn.Parameter(torch.empty(num_heads, head_dim))  # a_r [H, D]
        nn.init.xavier_uniform_(self.att_dst)
        nn.init.xavier_uniform_(self.att_src)

    def forward(self, q_i: Tensor, k_j: Tensor, edges: Edges) -> Tensor:
        logit = (q_i * self.att_dst).sum(-1) + (k_j * self.att_src).sum(-1)  # [e, H]
        return F.leaky_relu(logit, self.negative_slope)

    def edge_scores(self, q: Tensor, k: Tensor, edges: Edges) -> Tensor:
        s_dst = (q * self.att_dst).sum(-1)  # [N_t, H]
        s_src = (k * self.att_src).sum(-1)  # [N_s, H]
        logit = s_dst.index_select(0, edges.dst) + s_src.index_select(0, edges.src)  # [E, H]
        return F.leaky_relu(logit, self.negative_slope)

    def dense(self, q: Tensor, k: Tensor, ctx: DenseContext) -> Tensor:
        s_dst = (q * self.att_dst.unsqueeze(-2)).sum(-1)  # [..., H, L_q]
        s_src = (k * self.att_src.unsqueeze(-2)).sum(-1)  # [..., H, L_k]
        return F.leaky_relu(s_dst.unsqueeze(-1) + s_src.unsqueeze(-2), self.negative_slope)


class GATv2(ScoreFunction):
    """GATv2's dynamic score (Brody et al. 2022, "How Attentive are Graph Attention Networks?").

    .. math:: \\alpha_{ij} = a^\\top \\mathrm{LeakyReLU}(q_i + k_j)

    which is GATv2's ``a^T LeakyReLU(W [h_i || h_j])`` with W = [W_q | W_k], per head.
    """

    has_dense = True
    pairwise_dense = True  # LeakyReLU(q_i + k_j) does not factorise: [.., L_q, L_k, D]
    name = "gatv2"

    def __init__(self, num_heads: int, head_dim: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.negative_slope = negative_slope
        self.att = nn.Parameter(torch.empty(num_heads, head_dim))  # a [H, D]
        nn.init.xavier_uniform_(self.att)

    def forward(self, q_i: Tensor, k_j: Tensor, edges: Edges) -> Tensor:
        return (F.leaky_relu(q_i + k_j, self.negative_slope) * self.att).sum(-1)  # [e, H]

    def dense(self, q: Tensor, k: Tensor, ctx: DenseContext) -> Tensor:
        pair = F.leaky_relu(
            q.unsqueeze(-2) + k.unsqueeze(-3), self.negative_slope
        )  # [.., H, Lq, Lk, D]
        return (pair * self.att[:, None, None, :]).sum(-1)


class Cosine(ScoreFunction):
    """Scaled cosine similarity with a learnable per-head temperature τ_h
    (Liu et al. 2022, "Swin Transformer V2"; Henry et al. 2020, "Query-Key Normalization").

    .. math:: \\alpha_{ij} = \\tau_h \\, \\frac{\\langle q_i, k_j \\rangle}{\\|q_i\\| \\|k_j\\|},
        \\quad \\tau_h = \\exp(\\min(s_h, \\log \\tau_{max}))
    """

    has_dense = True
    name = "cosine"

    def __init__(
        self, num_heads: int, temperature: float = 10.0, max_temperature: float = 100.0
    ) -> None:
        super().__init__()
        if temperature <= 0 or max_temperature <= 0:
            raise ValueError(f"temperatures must be > 0, got {temperature}, {max_temperature}")
        self.num_heads = num_heads
        self.log_temperature = nn.Parameter(torch.full((num_heads,), math.log(temperature)))
        self.max_log_temperature = math.log(max_temperature)

    def temperature(self) -> Tensor:
        """τ [H]."""
        return self.log_temperature.clamp(max=self.max_log_temperature).exp()

    def forward(self, q_i: Tensor, k_j: Tensor, edges: Edges) -> Tensor:
        return (F.normalize(q_i, dim=-1) * F.normalize(k_j, dim=-1)).sum(-1) * self.temperature()

    def edge_scores(self, q: Tensor, k: Tensor, edges: Edges) -> Tensor:
        qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)  # [N, H, D]
        return edge_dot(qn, kn, edges.src, edges.dst) * self.temperature()

    def dense(self, q: Tensor, k: Tensor, ctx: DenseContext) -> Tensor:
        cos = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)
        return cos * self.temperature()[:, None, None]


class Bilinear(ScoreFunction):
    """Bilinear ("general") score (Luong et al. 2015), one D×D matrix per head.

    .. math:: \\alpha_{ij} = q_i^\\top W_h k_j

    W_h starts as I/√D, so an untrained bilinear score equals scaled_dot.
    """

    has_dense = True
    name = "bilinear"

    def __init__(self, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        eye = torch.eye(head_dim) / math.sqrt(head_dim)
        self.weight = nn.Parameter(eye.repeat(num_heads, 1, 1))  # W [H, D, D]

    def forward(self, q_i: Tensor, k_j: Tensor, edges: Edges) -> Tensor:
        return torch.einsum("ehd,hdf,ehf->eh", q_i, self.weight, k_j)

    def edge_scores(self, q: Tensor, k: Tensor, edges: Edges) -> Tensor:
        wk = torch.einsum("hdf,nhf->nhd", self.weight, k)  # W_h k_j [N_s, H, D]
        return edge_dot(q, wk, edges.src, edges.dst)

    def dense(self, q: Tensor, k: Tensor, ctx: DenseContext) -> Tensor:
        return q @ self.weight @ k.transpose(-1, -2)


class NegDistance(ScoreFunction):
    """Negative squared Euclidean distance (Kim et al. 2021, "The Lipschitz Constant of
    Self-Attention", L2 attention).

    .. math:: \\alpha_{ij} = -\\|q_i - k_j\\|^2 / \\sqrt{D}
    """

    has_dense = True
    name = "neg_distance"

    def forward(self, q_i: Tensor, k_j: Tensor, edges: Edges) -> Tensor:
        return -(q_i - k_j).pow(2).sum(-1) / math.sqrt(q_i.size(-1))

    def edge_scores(self, q: Tensor, k: Tensor, edges: Edges) -> Tensor:
        # ||q - k||² = |q|² + |k|² - 2<q, k>: node-level norms plus one fused edge_dot.
        qq = q.pow(2).sum(-1).index_select(0, edges.dst)  # [E, H]
        kk = k.pow(2).sum(-1).index_select(0, edges.src)  # [E, H]
        qk = edge_dot(q, k, edges.src, edges.dst)  # [E, H]
        return -(qq + kk - 2 * qk) / math.sqrt(q.size(-1))

    def dense(self, q: Tensor, k: Tensor, ctx: DenseContext) -> Tensor:
        # ||q - k||² = |q|² + |k|² - 2<q, k>, as edge_scores: no [..., L_q, L_k, D] tensor
        qq = q.pow(2).sum(-1).unsqueeze(-1)  # [..., H, L_q, 1]
        kk = k.pow(2).sum(-1).unsqueeze(-2)  # [..., H, 1, L_k]
        return -(qq + kk - 2 * q @ k.transpose(-1, -2)) / math.sqrt(q.size(-1))


class CallableScore(ScoreFunction):
    """Adapter for a plain callable ``f(q_i [E, H, D], k_j [E, H, D]) -> [E, H]``.

    .. math:: \\alpha_{ij} = f(q_i, k_j)

    It declares a dense form that calls ``f`` on every (i, j) pair ([..., L_q, L_k, D], so
    ``pairwise_dense``) and no ``sdpa_scale``: nothing more is known about ``f``, so it runs
    where any score runs (the literal formula on each edge).
    """

    has_dense = True
    pairwise_dense = True

    def __init__(self, fn: ScoreCallable) -> None:
        super().__init__()
        if not callable(fn):
            raise TypeError(f"score must be a name, a ScoreFunction or a callable, got {fn!r}")
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)

    def forward(self, q_i: Tensor, k_j: Tensor, edges: Edges) -> Tensor:
        return self.fn(q_i, k_j)

    def dense(self, q: Tensor, k: Tensor, ctx: DenseContext) -> Tensor:
        lq, lk = q.size(-2), k.size(-2)
        qi = q.unsqueeze(-2).expand(*q.shape[:-1], lk, q.size(-1))  # [..., H, Lq, Lk, D]
        kj = k.unsqueeze(-3).expand(*k.shape[:-2], lq, lk, k.size(-1))  # [..., H, Lq, Lk, D]
        qi = qi.movedim(-4, -2).reshape(-1, q.size(-3), q.size(-1))  # [(..Lq Lk), H, D]
        kj = kj.movedim(-4, -2).reshape(-1, q.size(-3), q.size(-1))
        out = check_scores(self, self.fn(qi, kj), qi.size(0), q.size(-3), q)  # [(.. Lq Lk), H]
        return out.reshape(*q.shape[:-3], lq, lk, q.size(-3)).movedim(-1, -3)
