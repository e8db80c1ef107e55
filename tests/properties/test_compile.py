"""``torch.compile`` of the layer equals eager, with no graph breaks on the complete-graph path."""

from __future__ import annotations

import torch
import torch._dynamo

import gatattn as ga

N, H, D = 6, 2, 5
C = H * D


def test_compiled_layer_equals_eager_without_graph_breaks() -> None:
    torch._dynamo.reset()
    layer = ga.GraphAttention(C, H)
    g = ga.complete_graph(N)
    x = torch.randn(N, C)
    explanation = torch._dynamo.explain(layer)(x, g)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(layer)
    xe = x.clone().requires_grad_(True)
    xc = x.clone().requires_grad_(True)
    out = compiled(xc, g)
    eager = layer(xe, g)
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    eager.sum().backward()
    out.sum().backward()
    assert xe.grad is not None and xc.grad is not None
    torch.testing.assert_close(xc.grad, xe.grad, atol=1e-5, rtol=1e-5)
