"""BLOOM's attention as graph attention: its own projections and cache, gatattn's softmax.

BLOOM (BigScience 2022) computes its attention inline (``alibi.baddbmm``, softmax, ``bmm``):
it calls no attention function that gatattn could register. ``convert`` therefore gives each
``BloomAttention`` module a ``forward`` of its own (``GraphBloomForward``, an instance
attribute: the class, parameters and state_dict keys stay), which runs the module's fused
projection, its cache update and its output projection as before, and the attention through
``graph_attention``:

    α_ij = s <q_i, k_j> + m_h p_j,    Attn_ij = softmax_{j ∈ N(i)} α_ij

with BLOOM's ALiBi term m_h p_j (p_j the key's position among the real tokens, m_h the slopes
of Press et al. 2022, equal to ``gatattn.scores.alibi_slopes``) carried per edge. On a causal
graph it differs from gatattn's ALiBi bias −m_h |i − j| by m_h p_i, a constant per query row,
which the softmax removes.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .attention import UnsupportedModelError, graph_attention

__all__ = ["GraphBloomForward", "check", "install"]


class GraphBloomForward:
    """``BloomAttention.forward`` with the attention computed by ``graph_attention``.

    Shapes:
        hidden_states [B, L_q, C], residual [B, L_q, C], alibi [B·H, 1, L_k],
        attention_mask [B, 1, L_q, L_k] bool or None -> ([B, L_q, C], Attn [B, H, L_q, L_k] | None).
    """

    def __init__(self, module: Any) -> None:
        self.module = module  # a cycle (module.forward -> self -> module): copy and pickle keep it

    def __call__(
        self,
        hidden_states: Tensor,
        residual: Tensor,
        alibi: Tensor,
        attention_mask: Tensor | None,
        layer_past: Any = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        **kwargs: Any,
    ) -> tuple[Tensor, Tensor | None]:
        m: Any = self.module
        B, Lq, _ = hidden_states.shape
        query, key, value = m._reshape(m.query_key_value(hidden_states))  # [B, H, L, D] each
        if layer_past is not None:
            key, value = layer_past.update(key, value, m.layer_idx)
        Lk = key.size(2)
        bias = alibi.view(B, m.num_heads, 1, alibi.size(-1))[..., -Lk:]  # [B, H, 1, L_k]
        out, weights = graph_attention(
            m,
            query,
            key,
            value,
            attention_mask,
            scaling=m.inv_norm_factor,
            dropout=m.attention_dropout.p if m.training else 0.0,
            position_bias=bias.expand(B, m.num_heads, Lq, Lk),
            output_attentions=output_attentions,
            is_causal=True,
        )
        context = out.reshape(B, Lq, m.hidden_size)  # [B, L_q, C]
        output = m.dense(context)
        output = residual + F.dropout(output, p=m.hidden_dropout, training=m.training)
        return output, weights


def check(module: Any) -> None:
    """Refuse what ``GraphBloomForward`` does not reproduce.

    Raises:
        UnsupportedModelError: ``pretraining_tp > 1`` with ``slow_but_exact`` (an output
            projection summed slice by slice).
    """
    if module.pretraining_tp > 1 and module.slow_but_exact:
        raise UnsupportedModelError(
            "BloomAttention with pretraining_tp > 1 and slow_but_exact=True (a sliced output "
            "projection) is not converted"
        )


def install(module: nn.Module) -> None:
    """Give one ``BloomAttention`` gatattn's forward (an instance attribute, not a new class)."""
    check(module)
    module.forward = GraphBloomForward(module)
