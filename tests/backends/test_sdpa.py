"""Second-order gradients on every backend's default path (gatattn/backends/sdpa.py).

torch's fused SDPA kernels have no derivative of their backward, so gradient penalties and
Hessian-vector products used to fail on the dense and block backends with "derivative for
aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented".
``torch.autograd.gradgradcheck`` in fp64 checks the second derivatives numerically.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import gatattn as ga
from gatattn.backends import Problem, attend, select_backend
from gatattn.backends.sdpa import sdpa

N, H, D = 5, 2, 3  # small: gradgradcheck perturbs every input element
C = H * D


def _graphs() -> dict[str, tuple[ga.TokenGraph, str]]:
    """A graph per backend plan, and the backend that runs it (default or forced)."""
    mask = torch.tensor([[1, 1, 0, 0, 1], [0, 1, 1, 0, 0], [1, 0, 1, 1, 0], [0, 0, 0, 1, 1],
                         [1, 1, 1, 1, 1]], dtype=torch.bool)  # fmt: skip
    irregular = ga.TokenGraph(torch.tensor([[0, 1, 3, 2, 4], [1, 1, 0, 3, 2]]), N, N)
    return {
        "complete": (ga.complete_graph(N), "auto"),  # dense, tagged plan
        "causal": (ga.causal_graph(N), "auto"),  # dense, SDPA's is_causal
        "batched": (ga.complete_graph(lengths=[2, 3]), "auto"),  # dense, padded
        "window": (ga.window_graph(N, 1), "auto"),  # dense, scatter plan
        "mask": (ga.from_mask(mask), "auto"),  # dense, mask plan
        "irregular": (irregular, "auto"),  # edge
        "block": (ga.window_graph(N, 1), "block"),  # block, SDPA slabs
    }


@pytest.mark.parametrize("name", list(_graphs()))
def test_gradgradcheck_on_every_default_path(name: str) -> None:
    graph, backend = _graphs()[name]
    torch.manual_seed(0)
    layer = ga.GraphAttention(C, H, backend=backend).double()
    x = torch.randn(N, C, dtype=torch.float64, requires_grad=True)
    q = x.new_empty(0, H, D)
    chosen, _ = select_backend(backend, Problem(q, q, q, graph, layer.score))
    assert chosen == {"irregular": "edge", "block": "block"}.get(name, "dense")
    assert torch.autograd.gradgradcheck(lambda t: layer(t, graph), (x,), fast_mode=True)


@pytest.mark.parametrize("score", ["scaled_dot+spatial", "bilinear", "scaled_dot+alibi"])
def test_gradgradcheck_with_biases_and_other_scores(score: str) -> None:
    """Biases as a differentiable SDPA mask (dense scatter plan), position biases in the tagged
    plan, and the block backend's tile softmax (a score SDPA cannot run)."""
    torch.manual_seed(1)
    if score == "scaled_dot+spatial":
        graph, edge_attr = ga.shortest_path_distances(
            torch.tensor([[0, 1, 2], [1, 2, 3]]), N, max_distance=3
        )
        score = ga.make_score("scaled_dot", H, D) + ga.SpatialBias(H, 3)
        layer = ga.GraphAttention(C, H, score=score).double()
    elif score == "bilinear":
        graph, edge_attr = ga.window_graph(N, 1), None
        layer = ga.GraphAttention(C, H, score=score, backend="block").double()
    else:
        graph, edge_attr = ga.causal_graph(N), None
        layer = ga.GraphAttention(C, H, score=score).double()
    x = torch.randn(N, C, dtype=torch.float64, requires_grad=True)
    params = [p for p in layer.score.parameters()]

    def f(t: Tensor, *ps: Tensor) -> Tensor:
        return layer(t, graph, edge_attr=edge_attr)

    assert torch.autograd.gradgradcheck(f, (x, *params), fast_mode=True)


def test_sdpa_equals_torch_first_and_second_order() -> None:
    """The wrapper's forward, gradient and gradient-of-gradient equal SDPA's math kernel (which
    autograd differentiates twice), with a differentiable float mask and a bool mask."""
    gen = torch.Generator().manual_seed(2)

    def inputs() -> list[Tensor]:
        shapes = [(2, H, 4, D), (2, H, 6, D), (2, H, 6, D), (2, H, 4, 6)]
        return [torch.randn(s, dtype=torch.float64, generator=gen).requires_grad_() for s in shapes]

    def run(fn: Callable[..., Tensor], ts: list[Tensor], **kw: object) -> list[Tensor]:
        out = fn(*ts[:3], attn_mask=ts[3], **kw)
        grads = torch.autograd.grad(out.sin().sum(), ts, create_graph=True)
        penalty = sum(g.pow(2).sum() for g in grads)
        return [out, *grads, *torch.autograd.grad(penalty, ts)]

    ts = inputs()
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        want = run(F.scaled_dot_product_attention, ts, scale=0.3)
    got = run(sdpa, ts, scale=0.3)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    assert torch.autograd.gradgradcheck(
        lambda q, k, v: sdpa(q, k, v, attn_mask=ts[3].detach() > 0), ts[:3], fast_mode=True
    )


def test_first_order_backward_twice_with_retain_graph() -> None:
    """A second backward through a retained graph recomputes the freed fused forward."""
    q = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    out = sdpa(q, q, q).sum()
    (g1,) = torch.autograd.grad(out, q, retain_graph=True)
    (g2,) = torch.autograd.grad(out, q)
    torch.testing.assert_close(g1, g2, atol=0, rtol=0)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(out, q)


def test_attend_second_order_on_the_dense_backend_equals_the_edge_backend() -> None:
    """A Hessian-vector product through ``attend`` equals the edge backend's (exact formula)."""
    gen = torch.Generator().manual_seed(3)
    qkv = torch.randn(3, N, H, D, dtype=torch.float64, generator=gen, requires_grad=True)
    vec = torch.randn(3, N, H, D, dtype=torch.float64, generator=gen)
    graph, score = ga.complete_graph(lengths=[2, 3]), ga.make_score("scaled_dot", H, D)

    def hvp(backend: str) -> Tensor:
        out = attend(Problem(qkv[0], qkv[1], qkv[2], graph, score), backend).out
        (g,) = torch.autograd.grad(out.pow(3).sum(), qkv, create_graph=True)
        (hv,) = torch.autograd.grad((g * vec).sum(), qkv)
        return hv

    torch.testing.assert_close(hvp("dense"), hvp("edge"), atol=1e-12, rtol=0)
