"""GraphMultiheadAttention: nn.MultiheadAttention's interface, computed as graph attention.

    masks -> graph G, plus a per-edge bias M for float or per-head masks (interop/masks.py)
    out = GraphAttention(x_q, G, x_src=(x_k, x_v))          no bias: scaled_dot, any backend
    out = the same projections with α_ij = <q_i, k_j>/√D + M_ij on the edge backend   (bias)
                                                            (docs/math.md, eqs. 0-3)

Equal to ``nn.MultiheadAttention`` with the same weights: outputs, returned weights and gradients,
for every mask combination, batch_first or not, self- and cross-attention (tests/test_interop.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..backends import Problem, attend
from ..graph import TokenGraph
from ..nn import Attention, GraphAttention
from ..nn.projection import mha_options
from ..scores import ScaledDot
from .masks import AttnMaskBias, attention_graph

__all__ = ["GraphMultiheadAttention"]


class GraphMultiheadAttention(nn.Module):
    """Drop-in for ``nn.MultiheadAttention`` that runs ``GraphAttention`` on a token graph.

    .. math::
        \\mathrm{out}_i = W_o \\big\\Vert_{h} \\sum_{j \\in N(i)}
        \\mathrm{softmax}_{j \\in N(i)}\\big(\\langle q_i, k_j \\rangle / \\sqrt{D} + M_{h,ij}\\big)
        \\, v_j

    where N(i) holds the keys that the masks allow (Vaswani et al. 2017 with torch's masks).

    Args:
        embed_dim, num_heads, dropout, bias, kdim, vdim, batch_first, device, dtype: as
            ``nn.MultiheadAttention``.
        add_bias_kv, add_zero_attn: accepted for signature compatibility; must be False.
        backend: GraphAttention backend name (default ``"auto"``: dispatch picks one).

    Shapes:
        query [L, B, C] ([B, L, C] if batch_first, [L, C] unbatched), key [S, B, kdim],
        value [S, B, vdim], key_padding_mask [B, S], attn_mask [L, S] or [B·H, L, S]
        -> out like query; weights [B, L, S] (averaged) or [B, H, L, S], or None.

    Differences from torch (docs/interop.md): a query whose keys are all masked outputs 0 attention
    (so ``out_proj.bias``) and weight 0, as torch does with ``need_weights=False``; torch gives
    NaN with ``need_weights=True``. In training, the returned weights are before dropout.
    ``is_causal=True`` without ``attn_mask`` builds the causal graph (torch raises).
    """

    # There is no fused in_proj_weight. torch's fused fast paths (TransformerEncoderLayer,
    # TransformerEncoder's nested tensors) read these attributes and step aside when
    # _qkv_same_embed_dim is False or in_proj_bias is None, so the graph path always runs.
    _qkv_same_embed_dim = False
    in_proj_weight: Tensor | None = None
    in_proj_bias: Tensor | None = None

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if add_bias_kv or add_zero_attn:
            raise ValueError(
                f"GraphMultiheadAttention does not support add_bias_kv={add_bias_kv} or "
                f"add_zero_attn={add_zero_attn}: the extra key has no token in the graph"
            )
        self.batch_first = batch_first
        self.attn = GraphAttention(
            embed_dim,
            num_heads,
            score="scaled_dot",
            dropout=dropout,
            bias=bias,
            kdim=kdim,
            vdim=vdim,
            backend=backend,
        ).to(device=device, dtype=dtype)
        # α_ij = <q_i, k_j>/√D + M_ij for float and per-head masks (no parameters of its own)
        self._masked_score = ScaledDot() + AttnMaskBias()

    # nn.MultiheadAttention's attributes, read by torch's transformer layers.
    @property
    def embed_dim(self) -> int:
        return self.attn.embed_dim

    @property
    def num_heads(self) -> int:
        return self.attn.num_heads

    @property
    def head_dim(self) -> int:
        return self.attn.head_dim

    @property
    def kdim(self) -> int:
        return self.attn.kdim

    @property
    def vdim(self) -> int:
        return self.attn.vdim

    @property
    def dropout(self) -> float:
        return self.attn.dropout

    @property
    def out_proj(self) -> nn.Linear:
        return self.attn.out_proj

    # ------------------------------------------------------------------ weights both ways
    @classmethod
    def from_torch(
        cls, mha: nn.MultiheadAttention, *, backend: str = "auto"
    ) -> GraphMultiheadAttention:
        """A twin of ``mha`` with copies of its weights, its batch_first and its train/eval mode.

        Raises:
            TypeError: ``mha`` is not an nn.MultiheadAttention.
            ValueError: ``mha`` uses add_bias_kv or add_zero_attn.
        """
        inner = GraphAttention.from_torch(mha, backend=backend)  # checks type, options; copies
        ref = mha.out_proj.weight
        twin = cls(
            **mha_options(mha),
            batch_first=mha.batch_first,
            device=ref.device,
            dtype=ref.dtype,
            backend=backend,
        )
        twin.attn.load_state_dict(inner.state_dict())
        # the same parameter layout as mha (GraphAttention stores it like torch), in its order
        for p_new, p_old in zip(twin.attn.parameters(), mha.parameters()):
            p_new.requires_grad_(p_old.requires_grad)
        return twin.train(mha.training)

    def to_torch(self) -> nn.MultiheadAttention:
        """An ``nn.MultiheadAttention`` with copies of this module's weights."""
        return self.attn.to_torch(batch_first=self.batch_first).train(self.training)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """nn.MultiheadAttention.forward, as graph attention.

        Returns:
            (out, weights): out shaped like ``query``; weights [B, L, S] if
            ``average_attn_weights`` else [B, H, L, S] (no B when unbatched), 0 where masked,
            or None when ``need_weights`` is False.

        Raises:
            ValueError: inputs of the wrong rank or mismatched batch/length, masks of the
                wrong shape.  TypeError: masks that are neither bool nor float.
        """
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(
                "query, key and value must all be batched (rank 3) or all unbatched (rank 2), "
                f"got shapes {list(query.shape)}, {list(key.shape)}, {list(value.shape)}"
            )
        batched = query.dim() == 3
        if not batched:  # torch's unbatched form: one sequence, masks without B
            q, k, v = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)  # [1, L, C]
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)  # [1, S]
        elif self.batch_first:
            q, k, v = query, key, value  # [B, L, C]
        else:
            q, k, v = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        B, L, S, H = q.size(0), q.size(1), k.size(1), self.num_heads
        if k.shape[:2] != v.shape[:2] or k.size(0) != B:
            raise ValueError(
                f"key {list(key.shape)} and value {list(value.shape)} must share batch and "
                f"length, and match the batch of query {list(query.shape)}"
            )
        graph, bias = attention_graph(
            B,
            H,
            L,
            S,
            key_padding_mask=key_padding_mask,
            attn_mask=attn_mask,
            is_causal=is_causal,
            dtype=q.dtype,
            device=q.device,
        )  # bias [E, 1 | H] or None
        xq = q.reshape(B * L, -1)  # [B·L, C]
        xk, xv = k.reshape(B * S, -1), v.reshape(B * S, -1)  # [B·S, kdim], [B·S, vdim]
        if bias is None:  # scaled_dot on the graph: dispatch may pick a fast backend
            res = self.attn(xq, graph, x_src=(xk, xv), return_attention=need_weights)
        else:
            res = self._attend_biased(xq, xk, xv, graph, bias, need_weights)
        out = (res.out if isinstance(res, Attention) else res).view(B, L, -1)  # [B, L, C]
        if not batched:
            out = out.squeeze(0)  # [L, C]
        elif not self.batch_first:
            out = out.transpose(0, 1)  # [L, B, C]
        if not isinstance(res, Attention):
            return out, None
        dense = res.weights.new_zeros(B, L, S, H)  # [B, L, S, H]
        dst, src = res.edge_index[1], res.edge_index[0]  # [E]
        dense = dense.index_put((dst // L, dst % L, src % S), res.weights)  # scatter [E, H]
        weights = dense.permute(0, 3, 1, 2)  # [B, H, L, S]
        if average_attn_weights:
            weights = weights.mean(1)  # [B, L, S]
        return out, weights if batched else weights.squeeze(0)

    def _attend_biased(
        self, xq: Tensor, xk: Tensor, xv: Tensor, graph: TokenGraph, bias: Tensor, need: bool
    ) -> Tensor | Attention:
        """GraphAttention's projections with the score ⟨q_i, k_j⟩/√D + M_ij (eqs. 0-3).

        The same as ``self.attn(...)`` with ``score=scaled_dot + attn_mask``; kept apart so that
        the module's own score stays plain scaled_dot, which the fast backends can run. Dispatch
        sends the mask bias to a backend that declares it.
        """
        a = self.attn
        q, k, v = a.project(xq, xk, xv)  # [N_t, H, D], [N_s, H, D], [N_s, H, D]
        p = Problem(
            q, k, v, graph, self._masked_score, {"attn_mask": bias},
            dropout=a.dropout, training=self.training, need_weights=need,
        )  # fmt: skip
        res = attend(p)
        out = a.out_proj(res.out.reshape(-1, a.embed_dim))  # [N_t, C]
        if not need:
            return out
        assert res.scores is not None and res.weights is not None
        return Attention(out, graph.edge_index, res.scores, res.weights, graph)

    def extra_repr(self) -> str:
        return f"batch_first={self.batch_first}"

