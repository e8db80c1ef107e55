"""GraphAttention: multi-head self-attention as message passing over a token graph.

    q_i = W_q x_i,  k_j = W_k x_j,  v_j = W_v x_j                     (per head; eq. 0)
    α_ij = w(i, j)                                                     (eq. 1)
    Attn_ij = exp(α_ij) / Σ_{k ∈ N(i)} exp(α_ik)                       (eq. 2)
    out_i = W_o · concat_h Σ_{j ∈ N(i)} Attn_ij v_j                    (eq. 3)

On the complete graph this is exactly dense self-attention (eq. 4; tests/test_equivalence.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter

from ..backends import BACKENDS, run_backend, select_backend
from ..backends.edge import edge_scores_and_weights
from ..backends.types import BackendOutput
from ..graph import TokenGraph, as_token_graph
from ..kernels import chunked_edge_map, edge_aggregate, neighbourhood_softmax
from ..scores import Edges, ScaledDot, ScoreCallable, ScoreFunction, make_score

__all__ = ["Attention", "GraphAttention"]


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
        return int(self.scores.size(1))


class GraphAttention(MessagePassing):
    """Multi-head graph attention, equal to dense attention on the complete graph.

    .. math::
        \\mathrm{out}_i = W_o \\big\\Vert_{h=1}^{H} \\sum_{j \\in N(i)}
        \\frac{\\exp w_h(i, j)}{\\sum_{k \\in N(i)} \\exp w_h(i, k)} \\, W_v^h x_j

    Args:
        embed_dim: C, the model width (queries and output).
        num_heads: H; ``embed_dim`` must be divisible by it (head size D = C / H).
        score: w(i, j): a registry name (``"scaled_dot"`` default, ``"gatv2+alibi"``...), a
            ``ScoreFunction``, or a callable ``f(q_i, k_j) -> [E, H]``.
        dropout: dropout on the attention weights, in training mode only (default 0).
        bias: add biases to the four projections (default True, as nn.MultiheadAttention).
        kdim: key feature width (default ``embed_dim``).  vdim: value feature width (default ``embed_dim``).
        backend: ``"auto"`` (dispatch) or a backend name; ``"edge"`` forces the reference path.
        edge_dim: F; when set, edge features modulate keys and values as in PyG's TransformerConv
            (Shi et al. 2021): k_ij = k_j + W_e e_ij, v_ij = v_j + W_e e_ij (default None: off;
            runs on the edge path). Needs ``edge_attr`` [E, F] in forward.
        root_weight: add a skip connection out_i += W_r x_i, as TransformerConv (default False).

    Shapes:
        x [N_t, C] (queries), x_src [N_s, kdim] or a pair ([N_s, kdim], [N_s, vdim]),
        graph edge_index [2, E], edge_attr [E, F] -> out [N_t, C]; scores/weights [E, H].
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        score: str | ScoreFunction | ScoreCallable = "scaled_dot",
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        backend: str = "auto",
        edge_dim: int | None = None,
        root_weight: bool = False,
    ) -> None:
        super().__init__(aggr="add", node_dim=0)
        if edge_dim is not None and (
            isinstance(edge_dim, bool) or not isinstance(edge_dim, int) or edge_dim < 1
        ):
            raise ValueError(f"edge_dim must be a positive int or None, got {edge_dim!r}")
        for name, val in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self.dropout, self.backend = dropout, backend
        # skip_init: no random draws here, so reset_parameters() consumes the RNG exactly as
        # nn.MultiheadAttention does (same seed -> same weights; tests/test_layer.py).
        self.q_proj = skip_init(nn.Linear, embed_dim, embed_dim, bias=bias)  # W_q
        self.k_proj = skip_init(nn.Linear, self.kdim, embed_dim, bias=bias)  # W_k
        self.v_proj = skip_init(nn.Linear, self.vdim, embed_dim, bias=bias)  # W_v
        self.out_proj = skip_init(nn.Linear, embed_dim, embed_dim, bias=bias)  # W_o
        self.score = make_score(score, num_heads, self.head_dim)
        # Optional PyG features (docs/pyg.md); only the options in use hold parameters.
        self.edge_dim, self.root_weight = edge_dim, root_weight
        self.edge_proj = (  # W_e [C, F], no bias, as TransformerConv's lin_edge
            None if edge_dim is None else skip_init(nn.Linear, edge_dim, embed_dim, bias=False)
        )
        self.skip_proj = (  # W_r [C, C], TransformerConv's lin_skip
            skip_init(nn.Linear, embed_dim, embed_dim, bias=bias) if root_weight else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as ``nn.MultiheadAttention`` does, drawing from the RNG in the same order:
        out_proj as an nn.Linear, then xavier_uniform_ on the [3C, C] in-projection (or on each of
        W_q, W_k, W_v when kdim/vdim differ), and zero biases."""
        self.out_proj.reset_parameters()
        if self.kdim == self.embed_dim and self.vdim == self.embed_dim:
            # MHA draws one xavier_uniform_ [3C, C] in_proj_weight; the bound depends on 3C.
            w = torch.empty(3 * self.embed_dim, self.embed_dim, device=self.q_proj.weight.device)
            nn.init.xavier_uniform_(w)
            with torch.no_grad():
                for proj, part in zip((self.q_proj, self.k_proj, self.v_proj), w.chunk(3)):
                    proj.weight.copy_(part)
        else:
            for proj in (self.q_proj, self.k_proj, self.v_proj):
                nn.init.xavier_uniform_(proj.weight)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)
        for extra in (getattr(self, "edge_proj", None), getattr(self, "skip_proj", None)):
            if extra is not None:  # drawn after MHA's draws, so MHA-equal init is unchanged
                extra.reset_parameters()

    # ------------------------------------------------------------------ forward
    def _sources(
        self, x: Tensor, x_src: Tensor | tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, Tensor]:
        if x_src is None:
            if (self.kdim, self.vdim) != (self.embed_dim, self.embed_dim):
                raise ValueError(
                    f"kdim={self.kdim}, vdim={self.vdim} differ from embed_dim={self.embed_dim}: "
                    "pass the key/value features as x_src"
                )
            return x, x
        if isinstance(x_src, (tuple, list)):
            if len(x_src) != 2:
                raise ValueError(f"x_src pair must be (keys, values), got {len(x_src)} items")
            xk, xv = x_src
            if xk.size(0) != xv.size(0):
                raise ValueError(f"x_src keys have {xk.size(0)} rows but values have {xv.size(0)}")
            return xk, xv
        if self.kdim != self.vdim:
            raise ValueError(
                f"kdim={self.kdim} != vdim={self.vdim}: pass x_src=(key_features, value_features)"
            )
        return x_src, x_src

    @staticmethod
    def _check_features(t: Tensor, name: str, width: int, arg: str) -> None:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(
                f"{name} must be node features [N, C] (rank 2), got shape {list(t.shape)}; "
                "concatenate sequences and use a block-diagonal graph, or use "
                "GraphMultiheadAttention for [B, L, C] input"
            )
        if t.size(1) != width:
            raise ValueError(f"{name} has {t.size(1)} channels but {arg}={width}")

    @overload
    def forward(
        self,
        x: Tensor,
        graph: TokenGraph | Tensor,
        *,
        x_src: Tensor | tuple[Tensor, Tensor] | None = ...,
        edge_attr: Tensor | None = ...,
        batch: Tensor | None = ...,
        return_attention: Literal[False] = ...,
    ) -> Tensor: ...

    @overload
    def forward(
        self,
        x: Tensor,
        graph: TokenGraph | Tensor,
        *,
        x_src: Tensor | tuple[Tensor, Tensor] | None = ...,
        edge_attr: Tensor | None = ...,
        batch: Tensor | None = ...,
        return_attention: Literal[True],
    ) -> Attention: ...

    def forward(
        self,
        x: Tensor,
        graph: TokenGraph | Tensor,
        *,
        x_src: Tensor | tuple[Tensor, Tensor] | None = None,
        edge_attr: Tensor | None = None,
        batch: Tensor | None = None,
        return_attention: bool = False,
    ) -> Tensor | Attention:
        """Attend over ``graph`` (eqs. 0-3).

        Args:
            x: query node features [N_t, C] (and key/value features for self-attention).
            graph: a TokenGraph or an edge_index LongTensor [2, E] (row 0 source, row 1 target).
            x_src: key/value features [N_s, kdim] for cross-attention, or a pair
                (keys [N_s, kdim], values [N_s, vdim]) when kdim != vdim.
            edge_attr: edge features [E, F] for scores or biases that use them.
            batch: PyG's graph id of each node [N] (sorted, as a ``Batch`` gives it); sets the
                per-graph lengths, so positions restart in every graph. The edges alone keep
                graphs apart, so ``batch`` is optional.
            return_attention: return ``Attention(out, edge_index, scores, weights)``.

        Returns:
            out [N_t, C], or an ``Attention`` with scores and weights [E, H].
        """
        self._check_features(x, "x", self.embed_dim, "embed_dim")
        xk, xv = self._sources(x, x_src)
        self._check_features(xk, "key features", self.kdim, "kdim")
        self._check_features(xv, "value features", self.vdim, "vdim")
        g = as_token_graph(graph, num_src=xk.size(0), num_dst=x.size(0))
        if batch is not None:
            g = _with_batch(g, batch)
        if edge_attr is not None and edge_attr.size(0) != g.num_edges:
            raise ValueError(
                f"edge_attr has {edge_attr.size(0)} rows but the graph has {g.num_edges} edges"
            )
        q, k, v = self._project(x, xk, xv)  # [N_t, H, D], [N_s, H, D], [N_s, H, D]
        if self.edge_proj is not None or self._explaining():  # PyG path (docs/pyg.md)
            res = self._propagate_attention(q, k, v, g, edge_attr)
        else:
            name, _ = select_backend(
                self.backend, self.score, g, q, dropout_active=self.training and self.dropout > 0
            )
            res = run_backend(
                name,
                q,
                k,
                v,
                g,
                self.score,
                edge_attr=edge_attr,
                dropout=self.dropout,
                training=self.training,
                need_weights=return_attention,
            )
        out = self.out_proj(res.out.reshape(-1, self.embed_dim))  # [N_t, C]
        if self.skip_proj is not None:
            out = out + self.skip_proj(x)  # root weight: + W_r x_i  [N_t, C]
        if not return_attention:
            return out
        scores, weights = res.scores, res.weights
        if scores is None or weights is None:  # a fast backend: recover exact per-edge values
            scores, weights = edge_scores_and_weights(q, k, g, self.score, edge_attr)
        return Attention(out, g.edge_index, scores, weights, g)

    def _project(self, x: Tensor, xk: Tensor, xv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q = W_q x, k = W_k x_k, v = W_v x_v (eq. 0), split into heads [N, H, D].

        For self-attention the three projections run as one GEMM with the weights stacked
        [3C, C], as nn.MultiheadAttention's packed in-projection does (same values, one pass
        over x instead of three)."""
        H, D = self.num_heads, self.head_dim
        if xk is x and xv is x:
            weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
            bias = None
            if self.q_proj.bias is not None:
                assert self.k_proj.bias is not None and self.v_proj.bias is not None
                bias = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
            q, k, v = F.linear(x, weight, bias).view(-1, 3, H, D).unbind(1)  # 3 x [N, H, D]
            return q, k, v
        q = self.q_proj(x).view(-1, H, D)  # [N_t, H, D]
        k = self.k_proj(xk).view(-1, H, D)  # [N_s, H, D]
        v = self.v_proj(xv).view(-1, H, D)  # [N_s, H, D]
        return q, k, v

    def explain_backend(self, x: Tensor, graph: TokenGraph | Tensor) -> str:
        """Which backend ``forward(x, graph)`` would run, and why (docs/backends.md).

        Args:
            x: query node features [N_t, C] (self-attention), as passed to forward.
            graph: a TokenGraph or an edge_index [2, E].

        Returns:
            ``"<backend>: <reason>"``, e.g. ``"dense: complete graph and score 'scaled_dot': ..."``.
        """
        self._check_features(x, "x", self.embed_dim, "embed_dim")
        g = as_token_graph(graph, num_src=x.size(0), num_dst=x.size(0))
        if self.edge_proj is not None:
            return "edge: edge_dim is set, so keys and values are per-edge (PyG propagate path)"
        q = x.new_empty(0, self.num_heads, self.head_dim)  # [0, H, D]: device, dtype and D only
        dropout_active = self.training and self.dropout > 0
        name, reason = select_backend(self.backend, self.score, g, q, dropout_active=dropout_active)
        return f"{name}: {reason}"

    def message(self, v_j: Tensor, alpha: Tensor) -> Tensor:
        """PyG message Attn_ij · v_j [E, H, D] (used only by PyG's explain/propagate hooks)."""
        return alpha.unsqueeze(-1) * v_j

    # ------------------------------------------------------------------ PyG path
    def _explaining(self) -> bool:
        """True while PyG's explain machinery watches this layer: ``explain=True`` (GNNExplainer's
        masks) or message hooks (AttentionExplainer). Then the layer runs ``propagate`` so the
        hooks see ``alpha`` [E, H] in the input edge order."""
        return (
            bool(self.explain)
            or bool(self._message_forward_hooks)
            or bool(self._message_forward_pre_hooks)
        )

    def _edge_features(self, edge_attr: Tensor | None) -> Tensor:
        if edge_attr is None:
            raise ValueError(
                f"edge_dim={self.edge_dim} is set, so forward needs edge_attr [E, {self.edge_dim}]"
            )
        attr = edge_attr.unsqueeze(-1) if edge_attr.dim() == 1 else edge_attr  # [E, F]
        if attr.dim() != 2 or attr.size(1) != self.edge_dim:
            raise ValueError(
                f"edge_attr has shape {list(edge_attr.shape)} but edge_dim={self.edge_dim}"
            )
        return attr.to(self.q_proj.weight.dtype)

    def _propagate_attention(
        self, q: Tensor, k: Tensor, v: Tensor, g: TokenGraph, edge_attr: Tensor | None
    ) -> BackendOutput:
        """The edge formula, with edge modulation (TransformerConv, Shi et al. 2021, eq. 3-4)

            α_ij = w(q_i, k_j + W_e e_ij),   out_i = Σ_j Attn_ij (v_j + W_e e_ij)

        and through ``MessagePassing.propagate`` while explaining. q [N_t, H, D], k/v [N_s, H, D]
        -> out [N_t, H, D], α and Attn [E, H] in the order of ``g.edge_index``.
        """
        H, D = self.num_heads, self.head_dim
        src, dst = g.edge_index[0], g.edge_index[1]
        if self.edge_proj is None:
            alpha, weights = edge_scores_and_weights(q, k, g, self.score, edge_attr)  # [E, H]
        else:
            attr, proj = self._edge_features(edge_attr), self.edge_proj

            def chunk(s: int, t: int) -> Tensor:  # per-edge keys, chunked: no [E, H, D] at once
                part = Edges(src[s:t], dst[s:t], g, None if edge_attr is None else edge_attr[s:t])
                k_ij = k.index_select(0, part.src) + proj(attr[s:t]).view(-1, H, D)  # [e, H, D]
                return self.score(q.index_select(0, part.dst), k_ij, part)  # [e, H]

            alpha = chunked_edge_map(chunk, g.num_edges, H * D)  # [E, H]
            weights = neighbourhood_softmax(alpha, dst, g.num_dst)  # [E, H]
        w = F.dropout(weights, self.dropout, self.training) if self.dropout > 0 else weights
        if self._explaining():
            out = self.propagate(g.edge_index, v=v, alpha=w, size=(g.num_src, g.num_dst))
        else:
            out = edge_aggregate(w, v, src, dst, g.num_dst)  # [N_t, H, D]
        if self.edge_proj is not None:
            # Σ_j Attn_ij W_e e_ij = W_e Σ_j Attn_ij e_ij per head: sum the F-wide features first.
            agg = scatter(w.unsqueeze(-1) * attr.unsqueeze(1), dst, 0, dim_size=g.num_dst)
            w_e = self.edge_proj.weight.view(H, D, -1)  # [H, D, F]
            out = out + torch.einsum("nhf,hdf->nhd", agg, w_e)  # agg [N_t, H, F]
        return BackendOutput(out, alpha, weights)

    # ------------------------------------------------------------------ torch interop
    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention, *, backend: str = "auto") -> GraphAttention:
        """A GraphAttention with the weights of ``mha`` (a copy; scaled_dot score).

        Raises:
            TypeError: ``mha`` is not an nn.MultiheadAttention.
            ValueError: ``mha`` uses add_bias_kv or add_zero_attn, which have no graph form here.
        """
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"from_torch needs an nn.MultiheadAttention, got {type(mha).__name__}")
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("from_torch does not support add_bias_kv=True or add_zero_attn=True")
        ref = mha.out_proj.weight
        layer = cls(
            mha.embed_dim,
            mha.num_heads,
            dropout=mha.dropout,
            bias=mha.in_proj_bias is not None,
            kdim=mha.kdim,
            vdim=mha.vdim,
            backend=backend,
        ).to(device=ref.device, dtype=ref.dtype)
        if mha._qkv_same_embed_dim:
            wq, wk, wv = mha.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
        with torch.no_grad():
            for proj, w in zip((layer.q_proj, layer.k_proj, layer.v_proj), (wq, wk, wv)):
                proj.weight.copy_(w)
            layer.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                for proj, b in zip(
                    (layer.q_proj, layer.k_proj, layer.v_proj), mha.in_proj_bias.chunk(3)
                ):
                    assert proj.bias is not None
                    proj.bias.copy_(b)
                assert layer.out_proj.bias is not None
                layer.out_proj.bias.copy_(mha.out_proj.bias)
        return layer

    def to_torch(self, *, batch_first: bool = False) -> nn.MultiheadAttention:
        """An nn.MultiheadAttention with this layer's weights (scaled_dot score only)."""
        if type(self.score) is not ScaledDot:
            raise ValueError(
                f"to_torch needs the scaled_dot score; this layer uses {self.score.name!r}, which "
                "nn.MultiheadAttention cannot express"
            )
        ref = self.out_proj.weight
        mha = nn.MultiheadAttention(
            self.embed_dim,
            self.num_heads,
            dropout=self.dropout,
            bias=self.q_proj.bias is not None,
            kdim=self.kdim,
            vdim=self.vdim,
            batch_first=batch_first,
            device=ref.device,
            dtype=ref.dtype,
        )
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                mha.in_proj_weight.copy_(
                    torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
                )
            else:
                mha.q_proj_weight.copy_(self.q_proj.weight)
                mha.k_proj_weight.copy_(self.k_proj.weight)
                mha.v_proj_weight.copy_(self.v_proj.weight)
            mha.out_proj.weight.copy_(self.out_proj.weight)
            if mha.in_proj_bias is not None:
                assert self.q_proj.bias is not None and self.k_proj.bias is not None
                assert self.v_proj.bias is not None and self.out_proj.bias is not None
                mha.in_proj_bias.copy_(
                    torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
                )
                mha.out_proj.bias.copy_(self.out_proj.bias)
        return mha

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
            f"score={self.score.name!r}, backend={self.backend!r})"
        )


def _with_batch(g: TokenGraph, batch: Tensor) -> TokenGraph:
    """Attach per-graph lengths from PyG's sorted ``batch`` vector [N] to a self-attention graph."""
    if not isinstance(batch, Tensor) or batch.dim() != 1 or batch.numel() != g.num_dst:
        shape = list(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
        raise ValueError(f"batch must be a LongTensor [N={g.num_dst}], got {shape}")
    if g.lengths is not None or g.num_src != g.num_dst or batch.numel() == 0:
        return g
    if not torch.compiler.is_compiling() and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError("batch must be sorted (nodes of each graph contiguous), as Batch gives it")
    counts = torch.bincount(batch)  # [B]
    lengths = [int(n) for n in counts.tolist() if n > 0]
    return TokenGraph(
        g.edge_index,
        g.num_src,
        g.num_dst,
        structure=g.structure,
        lengths=lengths,
        params=g.params,
        validate=False,
    )
