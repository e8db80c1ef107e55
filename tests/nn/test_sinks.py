"""Attention sinks (GraphAttention(sinks=True); kernels/softmax.py; backends edge and dense).

Attn_ij = exp(α_ij) / (exp(s_h) + Σ_k exp(α_ik)), compared with transformers' gpt-oss eager
attention (called directly) and with the formula written out, in fp64, outputs and gradients.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gatattn as ga

N, H, D = 5, 3, 7
C = H * D


def _layer(backend: str = "auto", **kw: object) -> ga.GraphAttention:
    layer = ga.GraphAttention(C, H, sinks=True, backend=backend, **kw).double()  # type: ignore[arg-type]
    with torch.no_grad():
        assert layer.sinks is not None
        layer.sinks.copy_(torch.tensor([-1.0, 0.5, 2.0]))
        layer.in_proj_bias.normal_(0, 0.1)  # type: ignore[union-attr]
    return layer


def _written_out(layer: ga.GraphAttention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """exp(α_ij) / (exp(s_h) + Σ_k exp(α_ik)) on the allowed pairs, then Σ_j Attn_ij v_j."""
    q = layer.q_proj(x).view(-1, H, D).transpose(0, 1)  # [H, N, D]
    k = layer.k_proj(x).view(-1, H, D).transpose(0, 1)
    v = layer.v_proj(x).view(-1, H, D).transpose(0, 1)
    e = torch.exp(q @ k.transpose(-1, -2) / math.sqrt(D)) * mask  # [H, N, N]
    assert layer.sinks is not None
    attn = e / (torch.exp(layer.sinks)[:, None, None] + e.sum(-1, keepdim=True))
    return layer.out_proj((attn @ v).transpose(0, 1).reshape(-1, C))


GRAPHS = {
    "complete": lambda: ga.complete_graph(N),
    "causal": lambda: ga.causal_graph(N),
    "window": lambda: ga.window_graph(N, 1),
    "padding": lambda: ga.from_padding_mask(torch.tensor([[False] * 3 + [True] * 2])),
    "isolated": lambda: ga.TokenGraph(torch.tensor([[0, 1, 1, 2], [1, 1, 0, 3]]), N, N),
    "batched": lambda: ga.causal_graph(lengths=[2, 3]),
}


@pytest.mark.parametrize("backend", ["edge", "dense", "auto"])
@pytest.mark.parametrize("graph", list(GRAPHS))
def test_sinks_equal_written_out_formula(backend: str, graph: str) -> None:
    g = GRAPHS[graph]()
    layer = _layer(backend)
    x = torch.randn(N, C, dtype=torch.float64, requires_grad=True)
    res = layer(x, g, return_attention=True)
    ref = _written_out(layer, x, g.to_dense_mask())
    torch.testing.assert_close(res.out, ref, atol=1e-10, rtol=0)
    wrt = [x, *layer.parameters()]
    cot = torch.randn_like(ref)
    g1 = torch.autograd.grad(res.out, wrt, cot)
    g2 = torch.autograd.grad(ref, wrt, cot)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    # per-edge weights sum to less than 1: the sink takes the rest
    sums = torch.zeros(N, H, dtype=torch.float64).index_add_(0, g.edge_index[1], res.weights)
    assert (sums < 1).all()


def test_sinks_equal_transformers_gpt_oss_eager() -> None:
    gpt_oss = pytest.importorskip("transformers.models.gpt_oss.modeling_gpt_oss")
    layer = _layer("auto")
    B, L = 2, 4
    x = torch.randn(B * L, C, dtype=torch.float64)
    ours = layer(x, ga.causal_graph(lengths=[L] * B), return_attention=True)
    q, k, v = (t.view(B, L, H, D).transpose(1, 2) for t in layer.project(x, x, x))  # [B, H, L, D]
    causal = torch.full((L, L), float("-inf"), dtype=torch.float64).triu(1)  # [L, L]
    module = SimpleNamespace(sinks=layer.sinks, num_key_value_groups=1, training=False)
    out, w = gpt_oss.eager_attention_forward(module, q, k, v, causal[None, None], 1 / math.sqrt(D))
    ref = layer.out_proj(out.reshape(B * L, C))  # [B·L, C]
    torch.testing.assert_close(ours.out, ref, atol=1e-10, rtol=0)
    src, dst = ours.edge_index  # weights per edge = the eager [B, H, L, L] at (i, j)
    dense_w = w.permute(0, 2, 3, 1).reshape(B * L, L, H)  # [B·L, L, H]
    torch.testing.assert_close(ours.weights, dense_w[dst, src % L], atol=1e-12, rtol=0)


def test_softmax_with_sinks_gradcheck_and_extremes() -> None:
    index = torch.tensor([0, 0, 2, 2, 2])  # target 1 has no edge
    scores = torch.randn(5, H, dtype=torch.float64, requires_grad=True)
    sinks = torch.randn(H, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda s, k: ga.neighbourhood_softmax(s, index, 3, k), (scores, sinks)
    )
    # an all -inf group and a very negative sink: weights 0, no NaN
    s = torch.full((2, H), float("-inf"), dtype=torch.float64)
    w = ga.neighbourhood_softmax(s, torch.tensor([0, 0]), 1, torch.full((H,), -1e4))
    assert torch.equal(w, torch.zeros_like(w))
    # huge logits: stable
    big = torch.full((2, H), 1e4, dtype=torch.float64)
    w = ga.neighbourhood_softmax(big, torch.tensor([0, 0]), 1, sinks.detach())
    torch.testing.assert_close(w, torch.full((2, H), 0.5, dtype=torch.float64))


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=25), st.integers(0, 99))
def test_random_graphs_edge_equals_dense_reference(pairs: list, seed: int) -> None:
    from gatattn.reference import dense_reference

    torch.manual_seed(seed)
    ei = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2).T.contiguous()  # [2, E]
    g = ga.TokenGraph(ei, 6, 6)
    layer = _layer("edge")
    x = torch.randn(6, C, dtype=torch.float64)
    res = layer(x, g, return_attention=True)
    ref = dense_reference(layer, x, g)
    torch.testing.assert_close(res.out, ref.out, atol=1e-10, rtol=0)
    torch.testing.assert_close(res.weights, ref.weights, atol=1e-10, rtol=0)


def test_sinks_state_dict_and_refusals() -> None:
    layer = ga.GraphAttention(C, H, sinks=True)
    assert layer.sinks is not None and layer.sinks.shape == (H,)
    assert "sinks" in layer.state_dict() and "sinks" not in ga.GraphAttention(C, H).state_dict()
    with pytest.raises(ValueError, match="attention sinks"):
        layer.to_torch()
    block = ga.GraphAttention(C, H, sinks=True, backend="block")
    with pytest.raises(ValueError, match="attention sinks: the edge and dense backends"):
        block(torch.randn(N, C), ga.window_graph(N, 1))


@pytest.mark.parametrize("backend", ["edge", "dense", "auto"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_sinks_are_refused_on_every_backend(backend: str, value: float) -> None:
    """The docs ask for finite sinks; every backend refuses others with the same error (the
    dense backend gave NaN and the edge backend 0 for +inf)."""
    layer = _layer(backend)
    with torch.no_grad():
        layer.sinks[1] = value
    x = torch.randn(5, C, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"sinks must be finite, got \[.*(inf|nan)"):
        layer(x, ga.complete_graph(5))
