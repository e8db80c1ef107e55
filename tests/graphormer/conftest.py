"""Shared reference for the Graphormer tests: dense multi-head attention per graph, by torch."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import gatattn as ga

DenseRef = Callable[[ga.GraphAttention, Tensor, list[int], list[Tensor]], Tensor]


def _dense_attention(
    layer: ga.GraphAttention, x: Tensor, sizes: list[int], bias: list[Tensor]
) -> Tensor:
    """Dense multi-head attention per graph with an additive bias [H, n, n], by torch's SDPA,
    with ``layer``'s weights: out = W_o softmax(QKᵀ/√D + bias) V for each graph of ``sizes``."""
    H, C = layer.num_heads, layer.embed_dim
    D = C // H
    q, k, v = F.linear(x, layer.in_proj_weight, layer.in_proj_bias).chunk(3, dim=-1)  # [N, C] x 3
    outs, start = [], 0
    for n, b in zip(sizes, bias):
        sl = slice(start, start + n)
        qh, kh, vh = (t[sl].view(n, H, D).transpose(0, 1) for t in (q, k, v))  # [H, n, D]
        o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=b)  # [H, n, D]
        outs.append(o.transpose(0, 1).reshape(n, C))
        start += n
    return layer.out_proj(torch.cat(outs))  # [N, C]


@pytest.fixture
def dense_attention() -> DenseRef:
    """The reference above, for tests to compare a layer with."""
    return _dense_attention
