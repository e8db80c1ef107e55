"""TransformerBlock: attention + feed-forward with residuals and layer norms, defined once.

    post-norm:  x = LN_1(x + SA(x)),  x = LN_2(x + FF(x))      (Vaswani et al. 2017)
    pre-norm:   x = x + SA(LN_1(x)),  x = x + FF(LN_2(x))      (Xiong et al. 2020)
    FF(x) = W_2 · dropout(act(W_1 x + b_1)) + b_2

The attention module SA is passed in: ``GraphAttention`` in ``ga.GraphTransformerBlock`` (pyg.py) and
in the BERT layers of pretrained.py, ``GraphMultiheadAttention`` in the drop-in
``ga.GraphTransformerEncoderLayer`` (interop/encoder.py). Those three subclass this block and differ
only in how they call SA (``_attend``). Names and registration order follow
``nn.TransformerEncoderLayer``, so its state_dict keys are this block's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "TransformerBlock", "resolve_activation"]

#: Activation names accepted wherever a block takes ``activation`` (torch's two; GELU is erf GELU).
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "gelu": F.gelu}


def resolve_activation(activation: str | Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """The function named by ``activation`` (a key of ``ACTIVATIONS``), or the callable itself.

    Raises:
        ValueError: an unknown name (the message names it and the known ones).
        TypeError: neither a string nor a callable.
    """
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)} or a callable, got {activation!r}"
            )
        return ACTIVATIONS[activation]
    if not callable(activation):
        raise TypeError(f"activation must be a string or a callable, got {activation!r}")
    return activation


class TransformerBlock(nn.Module):
    """One transformer layer around a given attention module (Vaswani et al. 2017, "Attention Is
    All You Need"; pre-norm: Xiong et al. 2020, "On Layer Normalization in the Transformer
    Architecture").

    .. math::
        \\text{post-norm:}\\; x \\leftarrow \\mathrm{LN}_1(x + \\mathrm{SA}(x)), \\;
        x \\leftarrow \\mathrm{LN}_2(x + \\mathrm{FF}(x)) \\qquad
        \\text{pre-norm:}\\; x \\leftarrow x + \\mathrm{SA}(\\mathrm{LN}_1 x), \\;
        x \\leftarrow x + \\mathrm{FF}(\\mathrm{LN}_2 x)

    with FF(x) = W_2 dropout(act(W_1 x + b_1)) + b_2, and dropout after SA and after FF.
    Sub-modules, in ``nn.TransformerEncoderLayer``'s names and order: self_attn, linear1, dropout,
    linear2, norm1, norm2, dropout1, dropout2 (and activation, if it is a module).

    Args:
        self_attn: SA, a module mapping [..., C] to [..., C] (called by ``_attend``).
        embed_dim: C.
        ffn_dim: hidden width of FF.
        dropout: p of every dropout of the block (default 0).
        activation: ``"relu"``, ``"gelu"`` or a callable (default ``"relu"``).
        norm_first: pre-norm if True, post-norm if False (default False, as torch).
        layer_norm_eps, bias, device, dtype: as ``nn.TransformerEncoderLayer`` (bias applies to
            the linear layers and the layer norms).

    Shapes:
        x [N, C] (or any [..., C] that SA accepts) -> like x.
    """

    def __init__(
        self,
        self_attn: nn.Module,
        embed_dim: int,
        ffn_dim: int,
        *,
        dropout: float = 0.0,
        activation: str | Callable[[Tensor], Tensor] = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        act = resolve_activation(activation)
        fk: dict[str, Any] = {"device": device, "dtype": dtype}
        self.self_attn = self_attn
        self.linear1 = nn.Linear(embed_dim, ffn_dim, bias=bias, **fk)  # W_1 [ffn, C]
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, embed_dim, bias=bias, **fk)  # W_2 [C, ffn]
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(embed_dim, eps=layer_norm_eps, bias=bias, **fk)
        self.norm2 = nn.LayerNorm(embed_dim, eps=layer_norm_eps, bias=bias, **fk)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = act

    def reset_parameters(self) -> None:
        """Re-initialise every sub-module that has parameters (PyG convention)."""
        reset = getattr(self.self_attn, "reset_parameters", None)
        if callable(reset):
            reset()
        for m in (self.linear1, self.linear2, self.norm1, self.norm2):
            m.reset_parameters()

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """One block on x [N, C]; ``args`` and ``kwargs`` go to ``_attend`` (the graph, masks...)."""
        if self.norm_first:
            x = x + self.dropout1(self._attend(self.norm1(x), *args, **kwargs))  # [N, C]
            return x + self._ff_block(self.norm2(x))  # [N, C]
        x = self.norm1(x + self.dropout1(self._attend(x, *args, **kwargs)))  # [N, C]
        return self.norm2(x + self._ff_block(x))  # [N, C]

    def _attend(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """SA(x) [N, C] -> [N, C]: ``self_attn(x, *args, **kwargs)``. A subclass whose attention
        takes other arguments, or returns more than a tensor, overrides this."""
        out: Tensor = self.self_attn(x, *args, **kwargs)
        return out

    def _ff_block(self, x: Tensor) -> Tensor:
        """dropout2(FF(x)), [N, C] -> [N, C]."""
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))
