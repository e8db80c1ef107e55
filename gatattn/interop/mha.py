"""GraphMultiheadAttention: nn.MultiheadAttention's module, computed as graph attention.

    masks -> graph G, plus a per-edge bias M for float or per-head masks (interop/masks.py)
    q, k, v = in_proj(query, key, value); keys and values gain bias_k / bias_v and a zero key
    out = W_o · attend(q, k, v, G, α_ij = <q_i, k_j>/√D + M_ij)     (docs/math.md, eqs. 0-3)

The module has nn.MultiheadAttention's parameters, names, shapes, registration order and
attributes, so state_dicts and optimiser states move both ways; it equals the torch module with
the same weights (outputs, returned weights and gradients, every mask combination;
tests/interop/test_mha.py).
"""

from __future__ import annotations

from typing import Any, NoReturn

import torch
from torch import Tensor, nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from ..backends import Problem, attend, check_backend_name
from ..graph import TokenGraph, as_token_graph
from ..nn import inputs
from ..nn import projection as proj
from ..result import dense_weights
from ..scores import AttnMaskBias, ScaledDot
from .checks import check_inputs, check_mask_dtype, check_mask_shapes
from .errors import ShapeAssertionError, ShapeRuntimeError
from .masks import attention_graph, pad_keys

__all__ = ["GraphMultiheadAttention"]

# The two scores the module uses; stateless, so shared and kept out of the module's children
# (its named_modules() are torch's: "" and "out_proj").
_PLAIN = ScaledDot()  # α_ij = <q_i, k_j>/√D: the dense backend runs it
_MASKED = ScaledDot() + AttnMaskBias()  # + M_ij from edge_attr, for float / per-head masks


def _graph_path_only(module: nn.Module, args: Any) -> None:
    """A no-op forward pre-hook. torch's TransformerEncoderLayer skips its fused kernel (which
    would read ``in_proj_weight`` and bypass this module) when any sub-module has a hook, so a
    torch layer around a GraphMultiheadAttention always calls it."""


class GraphMultiheadAttention(nn.Module):
    """Drop-in for ``nn.MultiheadAttention`` that computes attention on a token graph.

    .. math::
        \\mathrm{out}_i = W_o \\big\\Vert_{h} \\sum_{j \\in N(i)}
        \\mathrm{softmax}_{j \\in N(i)}\\big(\\langle q_i, k_j \\rangle / \\sqrt{D} + M_{h,ij}\\big)
        \\, v_j

    where N(i) holds the keys of i's sequence that the masks allow, plus the extra key nodes of
    ``add_bias_kv`` (k = bias_k, v = bias_v) and ``add_zero_attn`` (k = v = 0), each joined to
    every query of its sequence (Vaswani et al. 2017 with torch's masks and options).

    Parameters, in torch's names, shapes and order: ``in_proj_weight`` [3C, C] (or
    ``q_proj_weight`` [C, C], ``k_proj_weight`` [C, kdim], ``v_proj_weight`` [C, vdim] when kdim
    or vdim differs from C), ``in_proj_bias`` [3C], ``bias_k`` and ``bias_v`` [1, 1, C],
    ``out_proj`` (a NonDynamicallyQuantizableLinear). With the same seed, the initial weights
    are torch's.

    Args:
        embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim,
            batch_first, device, dtype: as ``nn.MultiheadAttention``.
        backend: GraphAttention backend name (default ``"auto"``: dispatch picks one).
        num_kv_heads: H_kv for grouped-query attention, a gatattn extra (default None: torch's
            one key/value head per query head, and torch's state_dict). With H_kv set, W_k
            and W_v have H_kv·D rows (``in_proj_weight`` [C + 2·H_kv·D, C]), ``bias_k`` and
            ``bias_v`` are [1, 1, H_kv·D], and ``to_torch`` refuses.

    Shapes:
        query [L, B, C] ([B, L, C] if batch_first, [L, C] unbatched), key [S, B, kdim],
        value [S, B, vdim], key_padding_mask [B, S] ([S] unbatched), attn_mask [L, S] or
        [B·H, L, S] ([H, L, S] unbatched) -> out like query; weights [B, L, S'] (averaged) or
        [B, H, L, S'] with S' = S + (1 if add_bias_kv) + (1 if add_zero_attn), or None.

    Differences from torch (docs/interop.md): a query whose keys are all masked outputs 0
    attention (so ``out_proj.bias``) and weight 0, as torch does with ``need_weights=False``;
    torch gives NaN with ``need_weights=True``. In training, the returned weights are before
    dropout.
    """

    in_proj_weight: Tensor | None
    q_proj_weight: Tensor | None
    k_proj_weight: Tensor | None
    v_proj_weight: Tensor | None
    in_proj_bias: Tensor | None
    bias_k: Tensor | None
    bias_v: Tensor | None

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
        num_kv_heads: int | None = None,
    ) -> None:
        for name, val in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if isinstance(val, bool) or not isinstance(val, int) or val <= 0:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        if embed_dim % num_heads:
            raise ShapeAssertionError(
                f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}: "
                "embed_dim must be divisible by num_heads"
            )
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        fk: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__()
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.head_dim = embed_dim // num_heads
        self.num_kv_heads = inputs.check_num_kv_heads(num_kv_heads, num_heads)
        c_kv = proj.widths(self)[1]  # H_kv·D (C without num_kv_heads)
        # in_proj_weight or q/k/v_proj_weight, in_proj_bias; sets _qkv_same_embed_dim
        proj.add_projections(self, embed_dim, self.kdim, self.vdim, bias, kv_width=c_kv, **fk)
        self.out_proj = NonDynamicallyQuantizableLinear(embed_dim, embed_dim, bias=bias, **fk)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty((1, 1, c_kv), **fk))  # k of the extra key
            self.bias_v = nn.Parameter(torch.empty((1, 1, c_kv), **fk))  # v of the extra key
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = add_zero_attn
        self.backend = check_backend_name(backend)
        self._reset_parameters()
        self.register_forward_pre_hook(_graph_path_only)
        self.register_load_state_dict_pre_hook(_load_gatattn_010)

    def _reset_parameters(self) -> None:
        """torch's ``_reset_parameters``: xavier_uniform_ on the input projections, zero
        biases, xavier_normal_ on bias_k and bias_v (out_proj.weight keeps its init)."""
        proj.reset_in_projections(self)
        for b in (self.bias_k, self.bias_v):
            if b is not None:
                nn.init.xavier_normal_(b)

    def reset_parameters(self) -> None:
        """Re-initialise every parameter as a new nn.MultiheadAttention would (PyG convention)."""
        self.out_proj.reset_parameters()
        self._reset_parameters()

    # ------------------------------------------------------------------ weights both ways
    @classmethod
    def from_torch(
        cls, mha: nn.MultiheadAttention, *, backend: str = "auto"
    ) -> GraphMultiheadAttention:
        """A twin of ``mha`` with copies of its weights (the same state_dict), its options,
        ``requires_grad`` flags and train/eval mode.

        Raises:
            TypeError: ``mha`` is not an nn.MultiheadAttention.
        """
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"from_torch needs an nn.MultiheadAttention, got {type(mha).__name__}")
        ref = mha.out_proj.weight
        twin = cls(
            **proj.mha_options(mha),
            add_bias_kv=mha.bias_k is not None,
            add_zero_attn=mha.add_zero_attn,
            batch_first=mha.batch_first,
            device=ref.device,
            dtype=ref.dtype,
            backend=backend,
        )
        twin.load_state_dict(mha.state_dict())
        for p_new, p_old in zip(twin.parameters(), mha.parameters(), strict=True):
            p_new.requires_grad_(p_old.requires_grad)
        return twin.train(mha.training)

    def to_torch(self) -> nn.MultiheadAttention:
        """An ``nn.MultiheadAttention`` with copies of this module's weights (same state_dict).

        Raises:
            ValueError: grouped-query attention (``num_kv_heads`` other than ``num_heads``),
                which nn.MultiheadAttention cannot express.
        """
        if self.num_kv_heads not in (None, self.num_heads):
            raise ValueError(
                f"to_torch cannot express grouped-query attention (num_kv_heads="
                f"{self.num_kv_heads}): nn.MultiheadAttention has one key/value head per head"
            )
        ref = self.out_proj.weight
        mha = nn.MultiheadAttention(
            self.embed_dim,
            self.num_heads,
            dropout=self.dropout,
            bias=self.in_proj_bias is not None,
            add_bias_kv=self.bias_k is not None,
            add_zero_attn=self.add_zero_attn,
            kdim=self.kdim,
            vdim=self.vdim,
            batch_first=self.batch_first,
            device=ref.device,
            dtype=ref.dtype,
        )
        mha.load_state_dict(self.state_dict())
        return mha.train(self.training)

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

        ``is_causal`` is torch's hint that ``attn_mask`` is the causal mask: without a padding
        mask and with ``need_weights=False`` the causal graph replaces ``attn_mask`` (torch
        runs its causal kernel then, and does not read the mask); otherwise the mask is used.

        Returns:
            (out, weights): out shaped like ``query``; weights [B, L, S'] if
            ``average_attn_weights`` else [B, H, L, S'] (no B when unbatched), 0 where masked,
            or None when ``need_weights`` is False.

        Raises:
            ShapeAssertionError: bad ranks, widths or padding-mask shape (a ValueError and
                torch's AssertionError).
            ShapeRuntimeError: a wrongly shaped ``attn_mask``, ``is_causal`` without
                ``attn_mask`` (a ValueError and torch's RuntimeError).
            DtypeAssertionError: a mask neither bool nor float (a TypeError and an
                AssertionError).
            DeviceRuntimeError: key, value or a mask on another device than query (a
                ValueError and a RuntimeError).
            TypeError: inputs or masks that are not tensors.
        """
        key_padding_mask = check_mask_dtype(key_padding_mask, "key_padding_mask", attn_mask)
        attn_mask = check_mask_dtype(attn_mask, "attn_mask")
        H = self.num_heads
        dims = (self.embed_dim, self.kdim, self.vdim)
        batched = check_inputs(
            query, key, value, key_padding_mask, attn_mask, num_heads=H, dims=dims
        )
        if is_causal and attn_mask is None:
            raise ShapeRuntimeError(
                "is_causal=True needs attn_mask: Need attn_mask if specifying the is_causal "
                "hint. You may use the Transformer module method "
                "`generate_square_subsequent_mask` to create this mask (or run GraphAttention "
                "on ga.causal_graph)"
            )
        # torch's causal kernel: the hint replaces the mask when nothing else needs it
        causal = is_causal and key_padding_mask is None and not need_weights
        if causal:
            attn_mask = None
        if not batched:  # one sequence, masks without B
            q, k, v = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)  # [1, L, C]
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)  # [1, S]
        elif self.batch_first:
            q, k, v = query, key, value  # [B, L, C]
        else:
            q, k, v = (t.transpose(0, 1) for t in (query, key, value))  # [B, L, C]
        B, L, S = q.size(0), q.size(1), k.size(1)
        if k.size(0) != B:
            raise ShapeRuntimeError(
                f"query has batch size {B} but key and value have {k.size(0)} "
                f"(query {list(query.shape)}, key {list(key.shape)})"
            )
        check_mask_shapes(key_padding_mask, attn_mask, batch=B, num_heads=H, tgt_len=L, src_len=S)
        extra = int(self.bias_k is not None) + int(self.add_zero_attn)  # extra key nodes
        graph, bias = attention_graph(
            B, H, L, S + extra,
            key_padding_mask=pad_keys(key_padding_mask, extra),
            attn_mask=pad_keys(attn_mask, extra),
            causal=causal, need_weights=need_weights, dtype=q.dtype, device=q.device,
        )  # fmt: skip
        xq = q.reshape(B * L, q.size(-1))  # [B·L, C] (explicit widths: B, L or S may be 0)
        xk = xq if key is query else k.reshape(B * S, k.size(-1))  # [B·S, kdim]
        xv = xk if value is key else v.reshape(B * S, v.size(-1))  # [B·S, vdim]
        qh, kh, vh = proj.project(self, xq, xk, xv)  # [B·L, H, D], 2 x [B·S, H, D]
        if extra:
            kh, vh = self._extra_keys(kh, vh, B, S)  # 2 x [B·S', H, D]
        p = Problem(
            q=qh,
            k=kh,
            v=vh,
            graph=graph,
            score=_PLAIN if bias is None else _MASKED,
            edge_attr=bias,  # a GridInput: SDPA reads the mask itself, the edges get it lazily
            dropout=self.dropout,
            training=self.training,
            need_weights=need_weights,
        )
        res = attend(p, self.backend)
        out = self.out_proj(res.out.reshape(B * L, self.embed_dim))  # [B·L, C]
        out = out.view(B, L, self.embed_dim)  # [B, L, C]
        if not batched:
            out = out.squeeze(0)  # [L, C]
        elif not self.batch_first:
            out = out.transpose(0, 1)  # [L, B, C]
        if not need_weights:
            return out, None
        assert res.weights is not None
        weights = dense_weights(res.weights, graph, B, L, S + extra)  # [B, H, L, S']
        if average_attn_weights:
            weights = weights.mean(1)  # [B, L, S']
        return out, weights if batched else weights.squeeze(0)

    def _extra_keys(self, k: Tensor, v: Tensor, B: int, S: int) -> tuple[Tensor, Tensor]:
        """Append the extra key nodes of every sequence: (bias_k, bias_v), then (0, 0).

        Shapes:
            k, v [B·S, H_kv, D] -> [B·S', H_kv, D], key j of sequence b at row b·S' + j.
        """
        H, D = k.size(1), self.head_dim  # H_kv key/value heads
        ks, vs = [k.view(B, S, H, D)], [v.view(B, S, H, D)]
        if self.bias_k is not None and self.bias_v is not None:
            ks.append(self.bias_k.view(1, 1, H, D).expand(B, 1, H, D))
            vs.append(self.bias_v.view(1, 1, H, D).expand(B, 1, H, D))
        if self.add_zero_attn:
            ks.append(k.new_zeros(B, 1, H, D))
            vs.append(v.new_zeros(B, 1, H, D))
        k_all, v_all = torch.cat(ks, 1), torch.cat(vs, 1)  # [B, S', H, D]
        return k_all.reshape(-1, H, D), v_all.reshape(-1, H, D)

    # ------------------------------------------------------------------ the GNN form
    def graph_forward(self, x: Tensor, graph: TokenGraph | Tensor) -> Tensor:
        """Self-attention on node features with the given graph (the GNN form, eqs. 0-3).

        Equal to ``GraphAttention`` with these weights and the scaled_dot score; used by
        ``GraphTransformerEncoderLayer(..., graph=...)``.

        Args:
            x: node features [N, C].
            graph: a TokenGraph or an edge_index [2, E] over the N nodes.

        Raises:
            ValueError: ``x`` is not [N, embed_dim], kdim/vdim differ from embed_dim, or the
                module uses add_bias_kv / add_zero_attn (keys that are no node of the graph).
        """
        inputs.check_features(x, "x", self.embed_dim, "embed_dim")
        if not self._qkv_same_embed_dim or self.bias_k is not None or self.add_zero_attn:
            raise ValueError(
                "graph_forward is self-attention over the graph's nodes: it needs kdim == vdim "
                "== embed_dim and no add_bias_kv / add_zero_attn"
            )
        inputs.check_graph_device(graph, x, type(self).__name__)
        g = as_token_graph(graph, num_src=x.size(0), num_dst=x.size(0))
        q, k, v = proj.project(self, x, x, x)  # 3 x [N, H, D]
        p = Problem(q, k, v, g, _PLAIN, dropout=self.dropout, training=self.training)
        out = attend(p, self.backend).out  # [N, H, D]
        return self.out_proj(out.reshape(-1, self.embed_dim))  # [N, C]

    def extra_repr(self) -> str:
        return f"batch_first={self.batch_first}, backend={self.backend!r}"

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` calls this first: refuse with a clear message."""
        raise_not_scriptable(self)


def raise_not_scriptable(module: nn.Module) -> NoReturn:
    """The drop-ins are plain Python (graphs, dispatch): TorchScript cannot compile them.

    Raises:
        TypeError: always, naming the module and the supported alternatives.
    """
    raise TypeError(
        f"{type(module).__name__} cannot be compiled by TorchScript (torch.jit.script, "
        "deprecated since torch 2.13): its graph construction and backend dispatch are Python. "
        "Use torch.compile or torch.export instead (docs/interop.md)"
    )


def _load_gatattn_010(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
) -> None:
    """load_state_dict pre-hook: the drop-in of gatattn 0.1.0 held a GraphAttention as ``attn``
    (keys ``attn.q_proj.weight``... or ``attn.in_proj_weight``...); load them under today's
    (torch's) names."""
    old = f"{prefix}attn."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + key[len(old) :]] = state_dict.pop(key)
    proj.load_legacy_projections(module, state_dict, prefix)
