"""GraphTransformerEncoderLayer: nn.TransformerEncoderLayer with graph self-attention.

The block formula (post- and pre-norm, Vaswani et al. 2017; Xiong et al. 2020) is the shared
``TransformerBlock`` of gatattn/nn/block.py. Here SA is GraphMultiheadAttention on dense input, or
its GraphAttention on [N, C] node features with a token graph (the GNN form).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..graph import TokenGraph
from ..nn.block import TransformerBlock
from .checks import check_mask_dtype
from .mha import GraphMultiheadAttention, raise_not_scriptable

__all__ = ["GraphTransformerEncoderLayer"]


class GraphTransformerEncoderLayer(TransformerBlock):
    """Drop-in for ``nn.TransformerEncoderLayer`` whose self-attention is graph attention.

    The shared ``TransformerBlock`` (gatattn/nn/block.py) with a ``GraphMultiheadAttention`` as
    ``self_attn``. It subclasses the block rather than holding one, so that the sub-modules sit
    directly on the layer under torch's names and in torch's order (a held block would prefix
    every state_dict key).

    .. math::
        x \\leftarrow \\mathrm{LN}_1(x + \\mathrm{SA}(x)), \\quad
        x \\leftarrow \\mathrm{LN}_2(x + W_2\\,\\mathrm{act}(W_1 x))

    Args:
        d_model, nhead, dim_feedforward, dropout, activation (``"relu"``, ``"gelu"`` or a
            callable), layer_norm_eps, batch_first, norm_first, bias, device, dtype: as
            ``nn.TransformerEncoderLayer``.
        backend: GraphAttention backend name (default ``"auto"``: dispatch picks one).

    Shapes:
        dense: src [L, B, C] ([B, L, C] if batch_first, [L, C] unbatched), src_mask [L, S] or
        [B·H, L, S], src_key_padding_mask [B, L] -> like src.
        GNN form: src [N, C] with ``graph`` (TokenGraph or edge_index [2, E]) -> [N, C].
    """

    self_attn: GraphMultiheadAttention

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str | Callable[[Tensor], Tensor] = F.relu,
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        backend: str = "auto",
    ) -> None:
        both: dict[str, Any] = {"dropout": dropout, "bias": bias, "device": device, "dtype": dtype}
        attn = GraphMultiheadAttention(
            d_model, nhead, batch_first=batch_first, backend=backend, **both
        )
        super().__init__(
            attn,
            d_model,
            dim_feedforward,
            activation=activation,
            norm_first=norm_first,
            layer_norm_eps=layer_norm_eps,
            **both,
        )
        # torch's attribute: 1 for ReLU, 2 for GELU (its fused kernel's code), else 0
        act = self.activation
        if act is F.relu or isinstance(act, nn.ReLU):
            self.activation_relu_or_gelu = 1
        elif act is F.gelu or isinstance(act, nn.GELU):
            self.activation_relu_or_gelu = 2
        else:
            self.activation_relu_or_gelu = 0

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` calls this first: refuse with a clear message."""
        raise_not_scriptable(self)

    @property
    def batch_first(self) -> bool:
        return self.self_attn.batch_first

    @classmethod
    def from_torch(
        cls, layer: nn.TransformerEncoderLayer, *, backend: str = "auto"
    ) -> GraphTransformerEncoderLayer:
        """A twin of ``layer`` with copies of its weights, activation and train/eval mode."""
        if not isinstance(layer, nn.TransformerEncoderLayer):
            raise TypeError(
                f"from_torch needs an nn.TransformerEncoderLayer, got {type(layer).__name__}"
            )
        ref = layer.linear1.weight
        twin = cls(
            layer.linear1.in_features,
            layer.self_attn.num_heads,
            dim_feedforward=layer.linear1.out_features,
            dropout=layer.dropout.p,
            activation=layer.activation,
            layer_norm_eps=layer.norm1.eps,
            batch_first=layer.self_attn.batch_first,
            norm_first=layer.norm_first,
            bias=layer.linear1.bias is not None,
            device=ref.device,
            dtype=ref.dtype,
            backend=backend,
        )
        twin.load_state_dict(layer.state_dict())  # the same names and shapes
        for p_new, p_old in zip(twin.parameters(), layer.parameters(), strict=True):
            p_new.requires_grad_(p_old.requires_grad)
        for d_new, d_old in ((twin.dropout1, layer.dropout1), (twin.dropout2, layer.dropout2)):
            d_new.p = d_old.p
        return twin.train(layer.training)

    def forward(
        self,
        src: Tensor,
        src_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
        *,
        graph: TokenGraph | Tensor | None = None,
    ) -> Tensor:
        """nn.TransformerEncoderLayer.forward; with ``graph``, the GNN form on [N, C].

        Raises:
            DtypeAssertionError (a TypeError and torch's AssertionError): a mask that is neither
                bool nor float.
            ValueError: ``graph`` given together with dense masks (put them in the graph).
        """
        check_mask_dtype(src_key_padding_mask, "src_key_padding_mask", src_mask)
        check_mask_dtype(src_mask, "src_mask")
        if graph is not None and (
            src_mask is not None or src_key_padding_mask is not None or is_causal
        ):
            raise ValueError(
                "with graph=..., the graph is the mask: src_mask, src_key_padding_mask and "
                "is_causal must be left unset"
            )
        return super().forward(src, src_mask, src_key_padding_mask, is_causal, graph)

    def _attend(
        self,
        x: Tensor,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        is_causal: bool,
        graph: TokenGraph | Tensor | None,
    ) -> Tensor:
        """SA(x): the GNN form on [N, C] with ``graph``, else torch's dense call."""
        if graph is not None:
            return self.self_attn.graph_forward(x, graph)  # [N, C]
        out: Tensor = self.self_attn(
            x,
            x,
            x,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            need_weights=False,
            is_causal=is_causal,
        )[0]
        return out  # like x
