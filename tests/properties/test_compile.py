"""``torch.compile`` of the layer equals eager, with no graph breaks on the complete-graph path."""

from __future__ import annotations

import torch
import torch._dynamo

import gatattn as ga

N, H, D = 6, 2, 5
C = H * D


def test_compiled_layer_equals_eager_without_graph_breaks() -> None:
    torch._dynamo.reset()
    layer = ga.GraphAttention(C, H).double()  # fp64: compiled and eager agree to rounding
    g = ga.complete_graph(N)
    x = torch.randn(N, C, dtype=torch.float64)
    explanation = torch._dynamo.explain(layer)(x, g)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(layer)
    xe = x.clone().requires_grad_(True)
    xc = x.clone().requires_grad_(True)
    out = compiled(xc, g)
    eager = layer(xe, g)
    torch.testing.assert_close(out, eager, atol=1e-12, rtol=1e-12)
    eager.sum().backward()
    out.sum().backward()
    assert xe.grad is not None and xc.grad is not None
    torch.testing.assert_close(xc.grad, xe.grad, atol=1e-12, rtol=1e-12)


def _padded(x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    layer = _LAYER
    return layer(x, ga.from_padding_mask(pad))  # the graph is built inside the compiled code


def _complete(x: torch.Tensor) -> torch.Tensor:
    return _LAYER(x, ga.complete_graph(lengths=[N, N]))


_LAYER = ga.GraphAttention(C, H).double()


def test_graphs_built_inside_compiled_code_have_no_graph_breaks() -> None:
    """complete_graph and from_padding_mask defer their edges, so building them inside a
    compiled function and running the dense backend needs no data-dependent size. In fp64
    compiled and eager agree to rounding; a fully padded row is 0 in both."""
    torch._dynamo.reset()
    x = torch.randn(2 * N, C, dtype=torch.float64)
    pad = torch.zeros(2, N, dtype=torch.bool)
    pad[0, 4:] = True
    pad[1] = True
    for fn, args in ((_padded, (x, pad)), (_complete, (x,))):
        explanation = torch._dynamo.explain(fn)(*args)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        out = torch.compile(fn, fullgraph=True)(*args)
        torch.testing.assert_close(out, fn(*args), atol=1e-12, rtol=1e-12)
    out = torch.compile(_padded, fullgraph=True)(x, pad)
    assert torch.equal(out[N:], _LAYER.out_proj.bias.expand(N, C))  # W_o·0 + b_o
