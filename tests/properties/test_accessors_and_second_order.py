"""Properties of issue 21: writes through public accessors never change a graph, and second-order
gradients work on every backend's default path.

- Immutability: hypothesis writes random values into whatever a public accessor of a TokenGraph
  returns (``dense_mask`` both ways, ``csr``, ``positions``, ``sequence``, ``in_degree``,
  ``to_dense_mask``, ``edge_counts``, ``params``); the dense and the edge backend then still
  agree with an fp64 dense reference (softmax over the graph's mask, written out) computed from
  the graph as it was built. (A write through ``edge_index`` itself is the version counter's job,
  tests/properties/test_adversarial.py; one through ``edge_index.numpy()`` is not detected, as
  TokenGraph's docstring says.)
- Second order: a gradient penalty (the gradient of ‖∂out/∂x‖²) through the default backend
  equals the same penalty through the dense reference, on random graphs of every plan.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import gatattn as ga

H, D = 2, 3
C = H * D


def _reference(layer: ga.GraphAttention, x: Tensor, allowed: Tensor) -> Tensor:
    """out = W_o softmax(QKᵀ/√D masked by ``allowed`` [N, N]) V; a row with no key gives 0."""
    q, k, v = (t.transpose(0, 1) for t in layer.project(x, x, x))  # [H, N, D]
    has = allowed.any(-1, keepdim=True)  # [N, 1] rows with a key (others output 0)
    logits = (q @ k.transpose(-1, -2) / D**0.5).masked_fill(~(allowed | ~has), float("-inf"))
    weights = torch.softmax(logits, -1) * has  # [H, N, N]
    return layer.out_proj((weights @ v).transpose(0, 1).reshape(-1, C))  # [N, C]


@st.composite
def masks(draw: st.DrawFn) -> Tensor:
    n = draw(st.integers(2, 7))
    bits = draw(st.lists(st.booleans(), min_size=n * n, max_size=n * n))
    return torch.tensor(bits, dtype=torch.bool).view(1, n, n)


def _write_into_every_accessor(g: ga.TokenGraph, fill: int) -> None:
    outputs: list[object] = [
        g.dense_mask(),
        g.dense_mask(compact=True),
        *g.csr(),
        g.positions("dst"),
        g.positions("src"),
        g.sequence(),
        g.in_degree(),
        g.to_dense_mask(),
        g.edge_counts(),
    ]
    for out in outputs:
        if isinstance(out, Tensor):
            out.fill_(bool(fill) if out.dtype == torch.bool else fill)
    g.params["self_loops"] = False  # a copy: the graph's own params stay


@settings(max_examples=25, deadline=None)
@given(masks(), st.integers(-3, 3), st.sampled_from(["mask", "window", "complete"]))
def test_writes_through_accessors_never_change_the_answer(
    mask: Tensor, fill: int, kind: str
) -> None:
    n = mask.size(-1)
    if kind == "mask":
        g = ga.from_mask(mask)
    elif kind == "window":
        g = ga.window_graph(n, 1)
    else:
        g = ga.complete_graph(n)
    allowed = g.to_dense_mask().clone()  # [N, N] before any write
    torch.manual_seed(0)
    layer = ga.GraphAttention(C, H).double()
    x = torch.randn(n, C, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    first = layer(x, g)  # fills the graph's caches
    _write_into_every_accessor(g, fill)
    want = _reference(layer, x, allowed)
    for backend in ("auto", "dense", "edge"):
        layer.backend = backend
        torch.testing.assert_close(layer(x, g), want, atol=1e-12, rtol=0)
    torch.testing.assert_close(first, want, atol=1e-12, rtol=0)


def _penalty(out_fn, x: Tensor) -> Tensor:  # type: ignore[no-untyped-def]
    x = x.detach().requires_grad_()
    (gx,) = torch.autograd.grad(out_fn(x).sin().sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(gx.pow(2).sum(), x)
    return gg


@settings(max_examples=20, deadline=None)
@given(masks(), st.sampled_from(["mask", "window", "causal", "complete", "lengths"]))
@pytest.mark.parametrize("backend", ["auto", "dense", "block", "edge"])
def test_second_order_gradients_on_every_default_path(
    backend: str, mask: Tensor, kind: str
) -> None:
    n = mask.size(-1)
    graphs = {
        "mask": lambda: ga.from_mask(mask),
        "window": lambda: ga.window_graph(n, 1),
        "causal": lambda: ga.causal_graph(n),
        "complete": lambda: ga.complete_graph(n),
        "lengths": lambda: ga.complete_graph(lengths=[1, n - 1]),
    }
    g = graphs[kind]()
    if backend == "block" and g.num_edges == 0:
        return  # the block backend declines a graph without edges (dispatch says why)
    torch.manual_seed(0)
    layer = ga.GraphAttention(C, H, backend=backend).double()
    x = torch.randn(n, C, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    allowed = g.to_dense_mask()
    got = _penalty(lambda t: layer(t, g), x)
    want = _penalty(lambda t: _reference(layer, t, allowed), x)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
