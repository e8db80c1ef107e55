"""The Q/K/V projections of ``GraphAttention`` (docs/math.md, eq. 0), stored as
``nn.MultiheadAttention`` stores them:

    [q; k; v] = in_proj_weight · x + in_proj_bias        in_proj_weight [3C, C], in_proj_bias [3C]

or ``q_proj_weight`` [C, C], ``k_proj_weight`` [C, kdim], ``v_proj_weight`` [C, vdim] when the key
or value width differs from C. One stored tensor, so self-attention projects with one GEMM and no
per-call concatenation; ``Projection`` is a view of one of the three.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..scores import ScaledDot

__all__ = [
    "Projection",
    "ProjectionView",
    "add_projections",
    "init_like_mha",
    "layer_from_mha",
    "load_legacy_projections",
    "mha_from_layer",
    "mha_options",
    "project",
    "reset_in_projections",
    "widths",
]

_NAMES = ("q", "k", "v")
L = TypeVar("L", bound=nn.Module)
#: A GraphAttention (typed loosely here: this module sits below nn/attention.py).
Layer = Any


class Projection:
    """A view of W_q, W_k or W_v of a GraphAttention: ``.weight`` [C, in], ``.bias`` [C] or None,
    and ``proj(x)`` = x Wᵀ + b. Writing into ``.weight`` (e.g. ``copy_`` under no_grad) writes
    into the layer's stored parameter.

    Args:
        layer: the GraphAttention.  index: 0 (queries), 1 (keys) or 2 (values).
    """

    def __init__(self, layer: Layer, index: int) -> None:
        self.layer, self.index = layer, index

    @property
    def weight(self) -> Tensor:
        """W [C, in_features] (a view of the stored parameter; [C_kv, in] for k, v)."""
        packed = self.layer.in_proj_weight
        if packed is not None:
            return packed.split(widths(self.layer))[self.index]
        w = getattr(self.layer, f"{_NAMES[self.index]}_proj_weight")
        assert w is not None
        return w

    @property
    def bias(self) -> Tensor | None:
        """b [C] (a view of ``in_proj_bias``) or None."""
        b = self.layer.in_proj_bias
        return None if b is None else b.split(widths(self.layer))[self.index]

    def __call__(self, x: Tensor) -> Tensor:
        """x [N, in_features] -> [N, C]."""
        return F.linear(x, self.weight, self.bias)

    def __repr__(self) -> str:
        w = self.weight
        return (
            f"Projection({_NAMES[self.index]}, in_features={w.size(1)}, out_features={w.size(0)})"
        )


class ProjectionView:
    """Class attribute that gives ``layer.q_proj`` etc. as a ``Projection`` of that layer.

    Args:
        index: 0 (W_q), 1 (W_k) or 2 (W_v).  label: the name shown in docs.
    """

    def __init__(self, index: int, label: str) -> None:
        self.index, self.__doc__ = index, f"{label} as a view: .weight, .bias, and a call."

    def __get__(self, layer: Layer | None, owner: type | None = None) -> Any:
        return self if layer is None else Projection(layer, self.index)


def widths(layer: Layer) -> tuple[int, int, int]:
    """(C, C_kv, C_kv): the output widths of W_q, W_k, W_v; C_kv = H_kv·D (grouped-query
    attention; C when ``num_kv_heads`` is unset)."""
    C = layer.embed_dim
    kv = getattr(layer, "num_kv_heads", None)
    c_kv = C if kv is None else kv * layer.head_dim
    return C, c_kv, c_kv


def add_projections(
    module: nn.Module,
    C: int,
    kdim: int,
    vdim: int,
    bias: bool,
    *,
    kv_width: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Register W_q, W_k, W_v on ``module`` as nn.MultiheadAttention does: ``in_proj_weight``
    [3C, C] when kdim == vdim == C, else ``q_proj_weight`` [C, C], ``k_proj_weight`` [C, kdim],
    ``v_proj_weight`` [C, vdim] (the others registered as None, so names and order match);
    ``in_proj_bias`` [3C] or None, on ``device`` with ``dtype``. Values are set by
    ``init_like_mha``. With grouped-query attention W_k and W_v have ``kv_width`` = C_kv =
    H_kv·D rows: ``in_proj_weight`` [C + 2·C_kv, C], ``in_proj_bias`` [C + 2·C_kv]."""
    c_kv = C if kv_width is None else kv_width
    same = kdim == C and vdim == C
    module.__dict__["_qkv_same_embed_dim"] = same  # read by torch transformer fast paths
    shapes = {"in_proj_weight": (C + 2 * c_kv, C)} if same else {}
    if not same:
        shapes.update(q_proj_weight=(C, C), k_proj_weight=(c_kv, kdim), v_proj_weight=(c_kv, vdim))
    fk: dict[str, Any] = {"device": device, "dtype": dtype}
    for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
        shape = shapes.get(name)
        param = None if shape is None else nn.Parameter(torch.empty(shape, **fk))
        module.register_parameter(name, param)
    module.register_parameter(
        "in_proj_bias", nn.Parameter(torch.empty(C + 2 * c_kv, **fk)) if bias else None
    )


def project(layer: Layer, x: Tensor, xk: Tensor, xv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q = W_q x, k = W_k x_k, v = W_v x_v (eq. 0) from the stored projections, split into
    heads. Self-attention (``xk is x and xv is x``) runs one GEMM with the packed [3C, C]
    weight, and ``xk is xv`` one GEMM for keys and values, as nn.MultiheadAttention does.

    Args:
        layer: a module holding the projections of ``add_projections`` and ``num_heads``,
            ``head_dim``, ``embed_dim``.
        x: query features [N_t, C].  xk: key features [N_s, kdim].  xv: value features
            [N_s, vdim].

    Shapes:
        -> q [N_t, H, D], k [N_s, H_kv, D], v [N_s, H_kv, D] (H_kv = H unless the layer has
        ``num_kv_heads``).
    """
    H, D, C = layer.num_heads, layer.head_dim, layer.embed_dim
    sizes = widths(layer)
    Hkv = sizes[1] // D
    w, b = layer.in_proj_weight, layer.in_proj_bias
    if b is not None and b.dtype != x.dtype:  # e.g. a half bias with fp64 weights: as torch's
        b = b.to(x.dtype)  # 3-D matmul + add promotes (a 2-D addmm would refuse the mix)
    if w is not None and xk is x and xv is x:
        if Hkv == H:
            q, k, v = F.linear(x, w, b).view(-1, 3, H, D).unbind(1)  # 3 x [N, H, D]
            return q, k, v
        q, k, v = F.linear(x, w, b).split(sizes, -1)  # [N, C], 2 x [N, C_kv]
        return q.view(-1, H, D), k.view(-1, Hkv, D), v.view(-1, Hkv, D)
    bq, bk, bv = (None, None, None) if b is None else b.split(sizes)
    if w is not None:
        wq, wk, wv = w.split(sizes)
    else:
        wq, wk, wv = layer.q_proj_weight, layer.k_proj_weight, layer.v_proj_weight
    q = F.linear(x, wq, bq).view(-1, H, D)  # [N_t, H, D]
    if w is not None and xk is xv:
        bkv = None if b is None else b[C:]
        k, v = F.linear(xk, w[C:], bkv).view(-1, 2, Hkv, D).unbind(1)  # 2 x [N_s, H_kv, D]
        return q, k, v
    return q, F.linear(xk, wk, bk).view(-1, Hkv, D), F.linear(xv, wv, bv).view(-1, Hkv, D)


def init_like_mha(layer: Layer) -> None:
    """nn.MultiheadAttention's initialisation, drawing from the RNG in its order: out_proj as an
    nn.Linear (kaiming), then ``reset_in_projections``."""
    layer.out_proj.reset_parameters()
    reset_in_projections(layer)


def reset_in_projections(layer: Layer) -> None:
    """The part of torch's ``MultiheadAttention._reset_parameters`` that every layer in MHA
    layout shares: xavier_uniform_ on in_proj_weight [3C, C] (or on each of W_q, W_k, W_v),
    then zero in_proj_bias and out_proj.bias."""
    if layer.in_proj_weight is not None:
        nn.init.xavier_uniform_(layer.in_proj_weight)
    else:
        for w in (layer.q_proj_weight, layer.k_proj_weight, layer.v_proj_weight):
            assert w is not None
            nn.init.xavier_uniform_(w)
    for b in (layer.in_proj_bias, layer.out_proj.bias):
        if b is not None:
            nn.init.zeros_(b)


def load_legacy_projections(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
) -> None:
    """load_state_dict pre-hook: state_dicts saved by gatattn 0.1.0 hold ``q_proj.weight``,
    ``k_proj.weight``, ``v_proj.weight`` (and ``.bias``); pack them into today's names."""
    keys = [f"{prefix}{n}_proj.weight" for n in _NAMES]
    if not all(k in state_dict for k in keys):
        return
    ws = [state_dict.pop(k) for k in keys]
    if getattr(module, "in_proj_weight", None) is not None:
        state_dict[f"{prefix}in_proj_weight"] = torch.cat(ws)
    else:
        for n, w in zip(_NAMES, ws):
            state_dict[f"{prefix}{n}_proj_weight"] = w
    bias_keys = [f"{prefix}{n}_proj.bias" for n in _NAMES]
    if all(k in state_dict for k in bias_keys):
        state_dict[f"{prefix}in_proj_bias"] = torch.cat([state_dict.pop(k) for k in bias_keys])


def layer_from_mha(cls: type[L], mha: nn.MultiheadAttention, backend: str) -> L:
    """A ``cls`` (GraphAttention) with copies of ``mha``'s weights: the parameter layouts are
    the same, so this is a ``load_state_dict``; device and dtype follow ``mha``."""
    if not isinstance(mha, nn.MultiheadAttention):
        raise TypeError(f"from_torch needs an nn.MultiheadAttention, got {type(mha).__name__}")
    if mha.bias_k is not None or mha.add_zero_attn:
        raise ValueError("from_torch does not support add_bias_kv=True or add_zero_attn=True")
    ref = mha.out_proj.weight
    layer = cls(**mha_options(mha), backend=backend).to(device=ref.device, dtype=ref.dtype)
    layer.load_state_dict(mha.state_dict())
    return layer


def mha_options(mha: nn.MultiheadAttention) -> dict[str, Any]:
    """The constructor options of ``mha`` that GraphAttention and its drop-in share."""
    return {
        "embed_dim": mha.embed_dim,
        "num_heads": mha.num_heads,
        "dropout": mha.dropout,
        "bias": mha.in_proj_bias is not None,
        "kdim": mha.kdim,
        "vdim": mha.vdim,
    }


def mha_from_layer(layer: Layer, batch_first: bool) -> nn.MultiheadAttention:
    """An nn.MultiheadAttention with copies of ``layer``'s projections (scaled_dot score only)."""
    if type(layer.score) is not ScaledDot:
        raise ValueError(
            f"to_torch needs the scaled_dot score; this layer uses {layer.score.name!r}, which "
            "nn.MultiheadAttention cannot express"
        )
    if layer.edge_proj is not None or layer.skip_proj is not None:
        raise ValueError(
            "to_torch cannot express edge_dim or root_weight (TransformerConv options)"
        )
    if getattr(layer, "sinks", None) is not None:
        raise ValueError("to_torch cannot express attention sinks (sinks=True)")
    if layer.num_kv_heads not in (None, layer.num_heads):
        raise ValueError(
            f"to_torch cannot express grouped-query attention (num_kv_heads="
            f"{layer.num_kv_heads}): nn.MultiheadAttention has one key/value head per query head"
        )
    ref = layer.out_proj.weight
    mha = nn.MultiheadAttention(
        layer.embed_dim,
        layer.num_heads,
        dropout=layer.dropout,
        bias=layer.in_proj_bias is not None,
        kdim=layer.kdim,
        vdim=layer.vdim,
        batch_first=batch_first,
        device=ref.device,
        dtype=ref.dtype,
    )
    mha.load_state_dict(layer.state_dict())
    return mha
