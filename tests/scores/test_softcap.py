"""Softcap (gatattn/scores/softcap.py; docs/scores.md, "Softcapping").

α_ij = c·tanh(w(i, j)/c), checked against Gemma 2's eager formula written out densely, in fp64.
"""

from __future__ import annotations

import math

import pytest
import torch

import gatattn as ga
from gatattn.scores import DenseContext, Edges, ScaledDot

N, H, D = 5, 3, 7
C = H * D


def _gemma2_eager(x: torch.Tensor, layer: ga.GraphAttention, cap: float, mask: torch.Tensor):
    """transformers' Gemma 2 eager attention, written out: scores = QKᵀ·s; tanh cap; mask;
    softmax; @V; then W_o. mask [N_t, N_s] True = may attend (fully masked rows give 0)."""
    q = layer.q_proj(x).view(-1, H, D).transpose(0, 1)  # [H, N, D]
    k = layer.k_proj(x).view(-1, H, D).transpose(0, 1)
    v = layer.v_proj(x).view(-1, H, D).transpose(0, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(D)  # [H, N, N]
    s = torch.tanh(s / cap) * cap
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.nan_to_num(torch.softmax(s, -1), nan=0.0)  # fully masked rows -> 0
    return layer.out_proj((p @ v).transpose(0, 1).reshape(-1, C))


@pytest.mark.parametrize("backend", ["edge", "block", "auto"])
@pytest.mark.parametrize(
    "graph",
    [ga.complete_graph(N), ga.causal_graph(N), ga.window_graph(N, 1)],
    ids=["complete", "causal", "window"],
)
def test_softcap_equals_gemma2_eager(backend: str, graph: ga.TokenGraph) -> None:
    cap = 0.7  # small: the cap bends every logit
    layer = ga.GraphAttention(C, H, score=ga.Softcap(ScaledDot(), cap), backend=backend).double()
    x = torch.randn(N, C, dtype=torch.float64, requires_grad=True)
    ours = layer(x, graph)
    ref = _gemma2_eager(x, layer, cap, graph.to_dense_mask())
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=0)
    wrt = [x, *layer.parameters()]
    for a, b in zip(torch.autograd.grad(ours.sum(), wrt), torch.autograd.grad(ref.sum(), wrt)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_registry_name_is_gemma2_cap_50() -> None:
    score = ga.make_score("softcap+alibi", H, D)
    base, (bias,) = score.parts()
    assert isinstance(base, ga.Softcap) and base.cap == 50.0 and isinstance(bias, ga.ALiBi)
    q, k = torch.randn(H, 4, D, dtype=torch.float64), torch.randn(H, 6, D, dtype=torch.float64)
    ctx = DenseContext(torch.arange(4), torch.arange(6))
    want = 50 * torch.tanh(q @ k.transpose(-1, -2) / math.sqrt(D) / 50)
    torch.testing.assert_close(base.dense(q, k, ctx), want, atol=1e-12, rtol=0)


def test_softcap_forward_edge_scores_and_dense_agree_and_gradcheck() -> None:
    score = ga.Softcap(ga.make_score("gatv2+relative_position", H, D), 1.5).double()
    g = ga.TokenGraph(torch.tensor([[0, 1, 1, 3, 2, 4], [1, 1, 1, 0, 3, 2]]), N, N)
    edges = Edges(g.edge_index[0], g.edge_index[1], g)
    q = torch.randn(N, H, D, dtype=torch.float64, requires_grad=True)
    k = torch.randn(N, H, D, dtype=torch.float64, requires_grad=True)
    src, dst = g.edge_index
    per_edge = score(q[dst], k[src], edges)  # [E, H]
    torch.testing.assert_close(score.edge_scores(q, k, edges), per_edge, atol=1e-12, rtol=0)
    pos = g.positions()
    dense = score.dense(q.transpose(0, 1), k.transpose(0, 1), DenseContext(pos, pos))
    torch.testing.assert_close(dense[:, dst, src].T, per_edge, atol=1e-12, rtol=0)
    assert per_edge.abs().max() < 1.5
    params = list(score.parameters())

    def fn(q: torch.Tensor, k: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return score.edge_scores(q, k, edges)

    assert torch.autograd.gradcheck(fn, (q, k, *params))


def test_block_backend_only_without_biases() -> None:
    """Softcap declares a dense form only when its score has one of q and k alone, and never an
    sdpa_scale; the backends decide from that."""
    plain, biased = (
        ga.Softcap(ScaledDot(), 2.0),
        ga.Softcap(ga.make_score("scaled_dot+alibi", H, D), 2.0),
    )
    assert plain.has_dense and not biased.has_dense
    assert plain.sdpa_scale(D) is None and biased.sdpa_scale(D) is None  # SDPA cannot cap
    q = torch.empty(0, H, D)
    g = ga.window_graph(N, 2)
    assert ga.backends.BACKENDS["block"].supports(ga.Problem(q, q, q, g, plain)) == ()
    assert ga.backends.BACKENDS["block"].supports(ga.Problem(q, q, q, g, biased))
    assert ga.backends.BACKENDS["dense"].supports(ga.Problem(q, q, q, g, plain))
    layer = ga.GraphAttention(C, H, score="softcap")
    assert layer.explain_backend(torch.randn(N, C), ga.complete_graph(N)).startswith("edge")


@pytest.mark.parametrize("cap", [0, -1.0, float("inf"), float("nan")])
def test_bad_cap_is_refused(cap: float) -> None:
    with pytest.raises(ValueError, match="cap must be a finite number > 0"):
        ga.Softcap(ScaledDot(), cap)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="Softcap wraps a ScoreFunction"):
        ga.Softcap("scaled_dot", 50.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cap must be a number"):
        ga.Softcap(ScaledDot(), "50")  # type: ignore[arg-type]
