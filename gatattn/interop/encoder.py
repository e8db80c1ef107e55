"""GraphTransformerEncoderLayer: nn.TransformerEncoderLayer with graph self-attention.

    post-norm:  x = LN_1(x + SA(x)),  x = LN_2(x + FF(x))
    pre-norm:   x = x + SA(LN_1(x)),  x = x + FF(LN_2(x))
    FF(x) = W_2 · dropout(act(W_1 x + b_1)) + b_2

(Vaswani et al. 2017; pre-norm: Xiong et al. 2020, "On Layer Normalization in the Transformer
Architecture"). SA is GraphMultiheadAttention on dense input, or GraphAttention on [N, C] node
features with a token graph (the GNN form).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..graph import TokenGraph
from .mha import GraphMultiheadAttention

__all__ = ["GraphTransformerEncoderLayer"]

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "gelu": F.gelu}


class GraphTransformerEncoderLayer(nn.Module):
    """Drop-in for ``nn.TransformerEncoderLayer`` whose self-attention is graph attention.

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
        super().__init__()
        fk: dict[str, Any] = {"device": device, "dtype": dtype}
        self.self_attn = GraphMultiheadAttention(
            d_model,
            nhead,
            dropout=dropout,
            bias=bias,
            batch_first=batch_first,
            backend=backend,
            **fk,
        )
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, **fk)  # W_1
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, **fk)  # W_2
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **fk)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **fk)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        if isinstance(activation, str):
            if activation not in _ACTIVATIONS:
                raise ValueError(
                    f"activation must be 'relu', 'gelu' or a callable, got {activation!r}"
                )
            activation = _ACTIVATIONS[activation]
        if not callable(activation):
            raise TypeError(f"activation must be a string or a callable, got {activation!r}")
        self.activation = activation

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
        twin.self_attn = GraphMultiheadAttention.from_torch(layer.self_attn, backend=backend)
        for name in ("linear1", "linear2", "norm1", "norm2"):
            getattr(twin, name).load_state_dict(getattr(layer, name).state_dict())
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
            ValueError: ``graph`` given together with dense masks (put them in the graph).
        """
        if graph is not None and (
            src_mask is not None or src_key_padding_mask is not None or is_causal
        ):
            raise ValueError(
                "with graph=..., the graph is the mask: src_mask, src_key_padding_mask and "
                "is_causal must be left unset"
            )
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal, graph)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal, graph))
        return self.norm2(x + self._ff_block(x))

    def _sa_block(
        self,
        x: Tensor,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        is_causal: bool,
        graph: TokenGraph | Tensor | None,
    ) -> Tensor:
        if graph is not None:
            out = self.self_attn.attn(x, graph)  # [N, C]
        else:
            out = self.self_attn(
                x,
                x,
                x,
                attn_mask=attn_mask,
                key_padding_mask=key_padding_mask,
                need_weights=False,
                is_causal=is_causal,
            )[0]
        return self.dropout1(out)

    def _ff_block(self, x: Tensor) -> Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))
