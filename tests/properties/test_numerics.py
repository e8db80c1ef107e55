"""Numerics: empty and all -inf neighbourhoods, huge logits, half precision (docs/math.md, "Conventions")."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gatattn as ga
from gatattn.kernels import ops

N, H, D = 5, 3, 7
C = H * D


def test_isolated_target_outputs_zero_message_and_finite_grads() -> None:
    layer = ga.GraphAttention(C, H).double()
    x = torch.randn(N, C, dtype=torch.float64, requires_grad=True)
    g = ga.TokenGraph(torch.tensor([[0, 1, 2], [1, 1, 2]]), N, N)  # targets 0, 3, 4: no edges
    res = layer(x, g, return_attention=True)
    assert layer.out_proj.bias is not None
    for i in (0, 3, 4):  # zero message: output is W_o · 0 + b_o
        torch.testing.assert_close(res.out[i], layer.out_proj.bias, atol=0, rtol=0)
    res.out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_all_minus_inf_neighbourhood_gives_zero_weights() -> None:
    def masked(q_i: torch.Tensor, k_j: torch.Tensor) -> torch.Tensor:
        s = (q_i * k_j).sum(-1)
        return s.masked_fill(torch.ones_like(s, dtype=torch.bool), float("-inf"))

    layer = ga.GraphAttention(C, H, score=masked)
    x = torch.randn(N, C, requires_grad=True)
    res = layer(x, ga.complete_graph(N), return_attention=True)
    assert torch.equal(res.weights, torch.zeros_like(res.weights))
    assert torch.isfinite(res.out).all()
    res.out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_huge_logits_stay_finite(scale: float) -> None:
    layer = ga.GraphAttention(C, H, score=lambda q, k: scale * torch.tanh((q * k).sum(-1)))
    x = torch.randn(N, C, requires_grad=True)
    res = layer(x, ga.complete_graph(N), return_attention=True)
    assert torch.isfinite(res.out).all() and torch.isfinite(res.weights).all()
    res.out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("score", ["scaled_dot", "gatv2", "cosine", "neg_distance"])
def test_half_precision_has_no_nan(dtype: torch.dtype, score: str) -> None:
    layer = ga.GraphAttention(C, H, score=score).to(dtype)
    x = (10 * torch.randn(N, C)).to(dtype).requires_grad_(True)
    g = ga.TokenGraph(torch.tensor([[0, 1, 2, 3, 3], [1, 1, 2, 2, 4]]), N, N)  # isolated 0 and 3
    out = layer(x, g)
    assert out.dtype == dtype and torch.isfinite(out).all()
    out.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_fully_masked_row_matches_multihead_attention() -> None:
    torch.manual_seed(4)
    mha = nn.MultiheadAttention(C, H, dtype=torch.float64).eval()
    layer = ga.GraphAttention.from_torch(mha)
    allowed = torch.ones(N, N, dtype=torch.bool)
    allowed[2] = False  # query 2 may attend nothing
    x = torch.randn(N, 1, C, dtype=torch.float64)
    # nn.MultiheadAttention's boolean attn_mask means True = NOT allowed: convert explicitly
    y, _ = mha(x, x, x, attn_mask=~allowed, need_weights=False)
    out = layer(x[:, 0], ga.from_mask(allowed))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(out, y[:, 0], atol=1e-10, rtol=0)


class _MaxNumel(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("path", ["gather", "csr"])
@pytest.mark.parametrize("score", ["scaled_dot", "gatv2", "neg_distance", "additive", "bilinear"])
def test_edge_backend_never_holds_an_E_H_D_tensor(
    score: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forward and backward on 24 nodes (E = 576): no op output reaches E·H·D elements, on the
    chunked-gather path and on the CSR path (forced here below its size threshold)."""
    monkeypatch.setattr(ops, "CHUNK_ELEMENTS", 64 * H * D)  # 64 edges per chunk
    monkeypatch.setattr(ops, "SPARSE_MIN_EDGES", 1 if path == "csr" else 10**9)
    n = 24
    layer = ga.GraphAttention(C, H, score=score, backend="edge")
    x = torch.randn(n, C, requires_grad=True)
    g = ga.complete_graph(n)
    with _MaxNumel() as probe:
        layer(x, g).sum().backward()
    e_h_d = g.num_edges * H * D
    assert probe.largest < e_h_d / 4, (probe.largest, e_h_d)


# ------------------------------------------------- issue 11: half-precision overflow, NaN locality
def _half_problem(value: float, need: bool) -> ga.backends.Problem:
    """fp16 q = k with one huge pair: <q_3, k_3> = 16·value² overflows fp16 for value >= 64,
    the scaled logit 4·value² stays inside the fp16 range for value < 128."""
    n, h, d = 6, 2, 16
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(n, h, d, generator=gen)
    q[3] = value
    v = torch.randn(n, h, d, generator=gen)
    g = ga.complete_graph(n)
    return ga.backends.Problem(
        q.half(), q.half(), v.half(), g, ga.make_score("scaled_dot", h, d), need_weights=need
    )


@pytest.mark.parametrize("backend", ["edge", "dense", "block"])
def test_fp16_dot_product_beyond_the_half_range_does_not_overflow(backend: str) -> None:
    """Largest scaled logit 4·76² = 23,104 (inside fp16), dot product 92,416 (outside): the edge
    backend accumulates the dot product in fp32 and scales it there, as SDPA does."""
    p = _half_problem(76.0, need=False)
    out = ga.backends.BACKENDS[backend].run(p).out  # [N, H, D]
    q, v = p.q.double().transpose(0, 1), p.v.double().transpose(0, 1)  # [H, N, D]
    gold = torch.nn.functional.scaled_dot_product_attention(q, q, v).transpose(0, 1)
    ref = torch.nn.functional.scaled_dot_product_attention(
        p.q.transpose(0, 1), p.k.transpose(0, 1), p.v.transpose(0, 1)
    ).transpose(0, 1)  # torch's own fp16 attention
    assert torch.isfinite(out).all()
    err, torch_err = (out.double() - gold).abs().max(), (ref.double() - gold).abs().max()
    assert err <= 2 * torch_err + 2 * torch.finfo(torch.float16).eps, (err, torch_err)


@pytest.mark.parametrize("backend", ["edge", "dense", "block"])
def test_fp16_weights_are_finite_where_the_output_is(backend: str) -> None:
    """A scaled logit of 4·300² = 360,000 is beyond fp16: the returned score is +inf (its fp16
    value), and the weights, computed from the fp32 scores, are finite like the output."""
    p = _half_problem(300.0, need=True)
    res = ga.backends.attend(p, backend)  # fast backends take α, Attn from the edge formula
    assert torch.isfinite(res.out).all()
    assert res.weights is not None and res.scores is not None
    assert torch.isfinite(res.weights).all()
    torch.testing.assert_close(
        res.weights.float().view(6, 6, 2).sum(1), torch.ones(6, 2), atol=1e-2, rtol=0
    )
    assert torch.isinf(res.scores).any()  # the logit itself does not fit in fp16
