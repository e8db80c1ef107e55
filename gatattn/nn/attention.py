"""GraphAttention: multi-head self-attention as message passing over a token graph.

    q_i = W_q x_i,  k_j = W_k x_j,  v_j = W_v x_j                     (per head; eq. 0)
    α_ij = w(i, j)                                                     (eq. 1)
    Attn_ij = exp(α_ij) / Σ_{k ∈ N(i)} exp(α_ik)                       (eq. 2)
    out_i = W_o · concat_h Σ_{j ∈ N(i)} Attn_ij v_j                    (eq. 3)

forward = validate (nn/inputs.py) -> project (eq. 0) -> attend (backends/, eqs. 1-3) -> W_o.
On the complete graph it is dense self-attention (eq. 4; tests/properties/test_equivalence.py).
"""

from __future__ import annotations

from typing import Literal, overload

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init
from torch_geometric.nn import MessagePassing

from ..backends import (
    EdgeInput,
    EdgeModulation,
    Problem,
    attend,
    check_backend_name,
)
from ..backends.dispatch import explain
from ..graph import TokenGraph, as_token_graph
from ..result import Attention
from ..scores import ScoreCallable, ScoreFunction, check_score_sizes, make_score
from . import inputs as check
from . import projection as proj
from .inputs import Sources

__all__ = ["Attention", "GraphAttention"]


class GraphAttention(MessagePassing):
    """Multi-head graph attention, equal to dense attention on the complete graph.

    .. math::
        \\mathrm{out}_i = W_o \\big\\Vert_{h=1}^{H} \\sum_{j \\in N(i)}
        \\frac{\\exp w_h(i, j)}{\\sum_{k \\in N(i)} \\exp w_h(i, k)} \\, W_v^h x_j

    Parameters are stored with nn.MultiheadAttention's names and shapes (``in_proj_weight``...,
    nn/projection.py), so state_dicts interchange; ``q_proj``/``k_proj``/``v_proj`` are views.

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
            runs on the edge backend). Needs ``edge_attr`` [E, F] in forward.
        root_weight: add a skip connection out_i += W_r x_i, as TransformerConv (default False).
        num_kv_heads: H_kv for grouped-query attention (Ainslie et al. 2023, "GQA"): H query
            heads share H_kv key/value heads (query head h reads head h // (H / H_kv)), so W_k
            and W_v have H_kv·D outputs; 1 is multi-query attention (default None: H).
            Weights stay [E, H], one per query head.
        sinks: learned attention sinks (gpt-oss; Xiao et al. 2024): a parameter ``sinks`` [H]
            of sink logits s_h, zero at init; each target also attends to a sink with logit
            s_h and value 0, so Attn_ij = exp(α_ij) / (exp(s_h) + Σ_k exp(α_ik)) (default
            False). Runs on the edge and dense backends.

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
        num_kv_heads: int | None = None,
        sinks: bool = False,
    ) -> None:
        super().__init__(aggr="add", node_dim=0)
        check.check_layer_args(embed_dim, num_heads, dropout, edge_dim)
        self.backend = check_backend_name(backend)
        C = self.embed_dim = embed_dim
        self.num_heads, self.head_dim, self.dropout = num_heads, embed_dim // num_heads, dropout
        self.kdim = kdim if kdim is not None else C
        self.vdim = vdim if vdim is not None else C
        self.num_kv_heads = check.check_num_kv_heads(num_kv_heads, num_heads)
        kv_width = proj.widths(self)[1]  # C_kv = H_kv·D
        proj.add_projections(self, C, self.kdim, self.vdim, bias, kv_width=kv_width)
        self.out_proj = skip_init(nn.Linear, C, C, bias=bias)  # W_o
        self.score = make_score(score, num_heads, self.head_dim)
        check_score_sizes(self.score, num_heads, self.head_dim)
        # Optional PyG features (docs/pyg.md); only the options in use hold parameters.
        self.edge_dim, self.root_weight = edge_dim, root_weight
        # W_e [C, F], no bias, as TransformerConv's lin_edge
        self.edge_proj = skip_init(nn.Linear, edge_dim, C, bias=False) if edge_dim else None
        self.skip_proj = skip_init(nn.Linear, C, C, bias=bias) if root_weight else None  # W_r
        self.sinks = nn.Parameter(torch.zeros(num_heads)) if sinks else None  # s [H]
        self.register_load_state_dict_pre_hook(proj.load_legacy_projections)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as nn.MultiheadAttention (same seed, same weights); then W_e and W_r."""
        proj.init_like_mha(self)
        for extra in (self.edge_proj, self.skip_proj):
            if extra is not None:
                extra.reset_parameters()

    # ------------------------------------------------------------------ projections (eq. 0)
    q_proj = proj.ProjectionView(0, "W_q")  # .weight [C, C], .bias [C] or None, q_proj(x)
    k_proj = proj.ProjectionView(1, "W_k")  # .weight [C, kdim], ...
    v_proj = proj.ProjectionView(2, "W_v")  # .weight [C, vdim], ...

    def project(self, x: Tensor, xk: Tensor, xv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q = W_q x, k = W_k x_k, v = W_v x_v (eq. 0), split into heads (``proj.project``).

        Self-attention runs one GEMM with the stored [C + 2·C_kv, C] weight, and
        cross-attention with ``xk is xv`` one GEMM for keys and values, as
        nn.MultiheadAttention does.

        Shapes:
            x [N_t, C], xk [N_s, kdim], xv [N_s, vdim] -> q [N_t, H, D], k, v [N_s, H_kv, D].
        """
        return proj.project(self, x, xk, xv)

    # ------------------------------------------------------------------ forward
    # fmt: off
    @overload
    def forward(self, x: Tensor, graph: TokenGraph | Tensor, *, x_src: Sources = ...,
                edge_attr: EdgeInput | None = ..., batch: Tensor | None = ...,
                pos: Tensor | None = ..., pos_src: Tensor | None = ...,
                return_attention: Literal[False] = ...) -> Tensor: ...
    @overload
    def forward(self, x: Tensor, graph: TokenGraph | Tensor, *, x_src: Sources = ...,
                edge_attr: EdgeInput | None = ..., batch: Tensor | None = ...,
                pos: Tensor | None = ..., pos_src: Tensor | None = ...,
                return_attention: Literal[True]) -> Attention: ...
    # fmt: on

    def forward(
        self,
        x: Tensor,
        graph: TokenGraph | Tensor,
        *,
        x_src: Sources = None,
        edge_attr: EdgeInput | None = None,
        batch: Tensor | None = None,
        pos: Tensor | None = None,
        pos_src: Tensor | None = None,
        return_attention: bool = False,
    ) -> Tensor | Attention:
        """Attend over ``graph`` (eqs. 0-3).

        Args:
            x: query node features [N_t, C] (and key/value features for self-attention).
            graph: a TokenGraph or an edge_index LongTensor [2, E] (row 0 source, row 1 target).
            x_src: key/value features [N_s, kdim] for cross-attention, or a pair
                (keys [N_s, kdim], values [N_s, vdim]) when kdim != vdim.
            edge_attr: per-edge inputs of the score, its biases or ``edge_dim``: a tensor
                [E, ...], or a mapping of named tensors with E rows each.
            batch: PyG's graph id of each node [N] (sorted, as a ``Batch`` gives it); sets the
                per-graph lengths, so positions restart in every graph. The edges alone keep
                graphs apart, so ``batch`` never changes the neighbourhoods.
            pos: node positions of the queries, [N_t] or [N_t, P] (int or float; P-D for
                axial rotary positions), read by position-aware scores and biases (rotary,
                ALiBi, T5 buckets). Default: token positions within each sequence.
            pos_src: positions of the keys [N_s] or [N_s, P] (default ``pos`` in
                self-attention).
            return_attention: return ``Attention(out, edge_index, scores, weights)``.

        Returns:
            out [N_t, C] (a Tensor), or an ``Attention`` with scores and weights [E, H].
        """
        check.check_features(x, "x", self.embed_dim, "embed_dim")
        xk, xv = check.split_sources(x, x_src, (self.embed_dim, self.kdim, self.vdim))
        check.check_features(xk, "key features", self.kdim, "kdim")
        check.check_features(xv, "value features", self.vdim, "vdim")
        dtype = self.out_proj.weight.dtype
        for name, t in (("x", x), ("x_src", xk), ("x_src", xv)):
            check.check_dtype(t, name, dtype)
        check.check_graph_device(graph, x)
        g = as_token_graph(graph, num_src=xk.size(0), num_dst=x.size(0))
        if batch is not None:
            g = check.with_batch(g, batch)
        if edge_attr is not None:  # E of a mask graph is a count over its mask: only if needed
            edge_attr = check.check_edge_inputs(edge_attr, g.num_edges, x.device)
        positions = check.check_positions(pos, pos_src, x.size(0), xk.size(0), x_src is None)
        q, k, v = self.project(x, xk, xv)  # [N_t, H, D], [N_s, H_kv, D], [N_s, H_kv, D]
        p = self._problem(q, k, v, g, edge_attr, return_attention)._replace(positions=positions)
        res = attend(p, "edge" if p.aggregate is not None else self.backend)
        out = self.out_proj(res.out.reshape(-1, self.embed_dim))  # [N_t, C]
        if self.skip_proj is not None:
            out = out + self.skip_proj(x)  # root weight: + W_r x_i  [N_t, C]
        if not return_attention:
            return out
        assert res.scores is not None and res.weights is not None
        return Attention(out, g.edge_index, res.scores, res.weights, g)

    def _problem(
        self, q: Tensor, k: Tensor, v: Tensor, g: TokenGraph, attr: EdgeInput | None, need: bool
    ) -> Problem:
        check_score_sizes(self.score, self.num_heads, self.head_dim)  # also a score set later
        mod = None
        if self.edge_proj is not None:  # W_e e_ij modulates keys and values (TransformerConv)
            w_e = self.edge_proj.weight  # [C, F]
            mod = EdgeModulation(check.edge_features(attr, self.edge_dim).to(w_e.dtype), w_e)
        aggregate = None
        if self._explaining():  # PyG's explain hooks see alpha [E, H] in edge order
            size = (g.num_src, g.num_dst)

            def aggregate(w: Tensor, v_: Tensor) -> Tensor:
                return self.propagate(g.edge_index, v=v_, alpha=w, size=size)

        return Problem(
            q=q,
            k=k,
            v=v,
            graph=g,
            score=self.score,
            edge_attr=attr,
            modulation=mod,
            dropout=self.dropout,
            training=self.training,
            need_weights=need,
            aggregate=aggregate,
            sinks=self.sinks,
        )

    def explain_backend(
        self,
        x: Tensor,
        graph: TokenGraph | Tensor,
        *,
        x_src: Sources = None,
        batch: Tensor | None = None,
        pos: Tensor | None = None,
        pos_src: Tensor | None = None,
    ) -> str:
        """Which backend ``forward(x, graph, ...)`` would run, and why (docs/backends.md).

        Args:
            x: query node features [N_t, C], as passed to forward.
            graph: a TokenGraph or an edge_index [2, E].
            x_src: key/value features for cross-attention, as passed to forward (None:
                self-attention).
            batch: graph id per node [N], as passed to forward (the decision depends on it).
            pos: query positions, as passed to forward.
            pos_src: key positions, as passed to forward.

        Returns:
            ``"<backend>: <reason>"``, e.g. ``"dense: complete graph: SDPA without reading the
            edges (score 'scaled_dot')"``; with ``backend="auto"`` followed by one line per
            registered backend, in priority order, with every reason against it.

        Raises:
            ValueError: a forced backend that cannot run the problem (every reason, and every
                backend's).
        """
        check.check_features(x, "x", self.embed_dim, "embed_dim")
        xk, _ = check.split_sources(x, x_src, (self.embed_dim, self.kdim, self.vdim))
        check.check_graph_device(graph, x)
        g = as_token_graph(graph, num_src=xk.size(0), num_dst=x.size(0))
        if batch is not None:
            g = check.with_batch(g, batch)
        positions = check.check_positions(pos, pos_src, x.size(0), xk.size(0), x_src is None)
        q = x.new_empty(0, self.num_heads, self.head_dim)  # [0, H, D]: device, dtype and D only
        mod = None
        if self.edge_proj is not None:  # only its presence matters to the backends' checks
            w_e = self.edge_proj.weight  # [C, F]
            mod = EdgeModulation(w_e.new_empty(0, w_e.size(1)), w_e)
        p = Problem(
            q=q,
            k=q,
            v=q,
            graph=g,
            score=self.score,
            modulation=mod,
            dropout=self.dropout,
            training=self.training,
            positions=positions,
            sinks=self.sinks,
        )
        return explain(self.backend, p)

    def message(self, v_j: Tensor, alpha: Tensor) -> Tensor:
        """PyG message Attn_ij · v_j [E, H, D] (used only by PyG's explain/propagate hooks)."""
        return alpha.unsqueeze(-1) * v_j

    def _explaining(self) -> bool:
        """True while PyG's explain machinery watches this layer: ``explain=True`` (GNNExplainer's
        masks) or message hooks (AttentionExplainer)."""
        hooks = self._message_forward_hooks or self._message_forward_pre_hooks
        return bool(self.explain) or bool(hooks)

    # ------------------------------------------------------------------ torch interop
    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention, *, backend: str = "auto") -> GraphAttention:
        """A GraphAttention with copies of ``mha``'s weights (scaled_dot score).

        Raises:
            TypeError: ``mha`` is not an nn.MultiheadAttention.
            ValueError: ``mha`` uses add_bias_kv or add_zero_attn, which have no graph form here.
        """
        return proj.layer_from_mha(cls, mha, backend)

    def to_torch(self, *, batch_first: bool = False) -> nn.MultiheadAttention:
        """An nn.MultiheadAttention with copies of this layer's weights (scaled_dot score only).

        Raises:
            ValueError: the score is not scaled_dot, or edge_dim / root_weight are set.
        """
        return proj.mha_from_layer(self, batch_first)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
            f"score={self.score.name!r}, backend={self.backend!r})"
        )
