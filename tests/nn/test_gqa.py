"""Grouped-query attention (GraphAttention / GraphMultiheadAttention ``num_kv_heads``).

Query head h reads key/value head h // (H / H_kv); compared with transformers' eager form
(``repeat_kv``, then softmax attention), written out densely, in fp64, outputs and gradients.
"""

from __future__ import annotations

import math

import pytest
import torch

import gatattn as ga
from gatattn.backends import Problem, attend

N, H, D = 5, 6, 4
C = H * D
f64 = torch.float64


def _repeat_kv(t: torch.Tensor, groups: int) -> torch.Tensor:
    """transformers' repeat_kv: [H_kv, L, D] -> [H_kv·groups, L, D], head h from h // groups."""
    hk, L, d = t.shape
    return t[:, None].expand(hk, groups, L, d).reshape(hk * groups, L, d)


def _eager(layer: ga.GraphAttention, x: torch.Tensor, mask: torch.Tensor, sinks: bool = False):
    q, k, v = (t.transpose(0, 1) for t in layer.project(x, x, x))  # [H | H_kv, N, D]
    g = H // k.size(0)
    k, v = _repeat_kv(k, g), _repeat_kv(v, g)  # [H, N, D]
    s = (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(~mask, float("-inf"))
    if sinks:
        assert layer.sinks is not None
        col = layer.sinks[:, None, None].expand(H, s.size(1), 1)
        p = torch.cat([s, col], -1).softmax(-1)[..., :-1]
    else:
        p = torch.nan_to_num(s.softmax(-1))  # rows without an edge: 0
    return layer.out_proj((p @ v).transpose(0, 1).reshape(-1, C))


GRAPHS = {
    "complete": lambda: ga.complete_graph(N),
    "causal": lambda: ga.causal_graph(lengths=[2, 3]),
    "window": lambda: ga.window_graph(N, 1),
    "padding": lambda: ga.from_padding_mask(torch.tensor([[False] * 3 + [True] * 2])),
    "irregular": lambda: ga.TokenGraph(torch.tensor([[0, 1, 4, 3, 2], [1, 1, 1, 0, 3]]), N, N),
}


@pytest.mark.parametrize("kv", [1, 2, 3, 6])
@pytest.mark.parametrize("backend", ["edge", "dense", "auto"])
@pytest.mark.parametrize("graph", list(GRAPHS))
def test_gqa_equals_repeat_kv_eager(graph: str, backend: str, kv: int) -> None:
    g = GRAPHS[graph]()
    layer = ga.GraphAttention(C, H, num_kv_heads=kv, backend=backend).double()
    with torch.no_grad():
        layer.in_proj_bias.normal_(0, 0.1)  # type: ignore[union-attr]
    assert layer.in_proj_weight is not None
    assert layer.in_proj_weight.shape == (C + 2 * kv * D, C)
    x = torch.randn(N, C, dtype=f64, requires_grad=True)
    res = layer(x, g, return_attention=True)
    ref = _eager(layer, x, g.to_dense_mask())
    assert res.weights.shape == (g.num_edges, H)
    torch.testing.assert_close(res.out, ref, atol=1e-10, rtol=0)
    wrt = [x, *layer.parameters()]
    cot = torch.randn_like(ref)
    for a, b in zip(
        torch.autograd.grad(res.out, wrt, cot), torch.autograd.grad(ref, wrt, cot), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("backend", ["edge", "dense"])
def test_gqa_with_sinks_and_rotary_equals_written_out(backend: str) -> None:
    """gpt-oss's attention: GQA + sinks (+ rotary: the dense reference of the layer's score)."""
    from gatattn.reference import dense_reference

    g = ga.causal_graph(N)
    layer = ga.GraphAttention(C, H, num_kv_heads=2, sinks=True, backend=backend).double()
    with torch.no_grad():
        layer.sinks.normal_()  # type: ignore[union-attr]
    x = torch.randn(N, C, dtype=f64)
    torch.testing.assert_close(layer(x, g), _eager(layer, x, g.to_dense_mask(), sinks=True))
    rot = ga.GraphAttention(C, H, score="rotary", num_kv_heads=3, sinks=True, backend=backend)
    rot = rot.double()
    res = rot(x, g, return_attention=True)
    ref = dense_reference(rot, x, g)
    torch.testing.assert_close(res.out, ref.out, atol=1e-10, rtol=0)
    torch.testing.assert_close(res.weights, ref.weights, atol=1e-10, rtol=0)


def test_dropin_gqa_equals_eager_with_padding() -> None:
    mha = ga.GraphMultiheadAttention(C, H, batch_first=True, num_kv_heads=2, dtype=f64)
    assert mha.in_proj_weight is not None and mha.in_proj_weight.shape == (C + 4 * D, C)
    B, L = 2, 4
    x = torch.randn(B, L, C, dtype=f64, requires_grad=True)
    pad = torch.tensor([[False] * 4, [False, False, True, True]])
    out, w = mha(x, x, x, key_padding_mask=pad, average_attn_weights=False)
    assert w is not None and w.shape == (B, H, L, L)
    proj_ = ga.GraphAttention(C, H, num_kv_heads=2).double()
    proj_.load_state_dict(mha.state_dict())  # the same parameter layout
    refs = []
    for b in range(B):
        mask = (~pad[b])[None, :].expand(L, L)
        refs.append(_eager(proj_, x[b], mask))
    ref = torch.stack(refs)  # [B, L, C]
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    (g1,) = torch.autograd.grad(out.sum(), [x], retain_graph=True)
    (g2,) = torch.autograd.grad(ref.sum(), [x])
    torch.testing.assert_close(g1, g2, atol=1e-10, rtol=0)
    kv_bias = ga.GraphMultiheadAttention(C, H, add_bias_kv=True, num_kv_heads=3)
    assert kv_bias.bias_k is not None and kv_bias.bias_k.shape == (1, 1, 3 * D)
    y, _ = kv_bias(torch.randn(L, 1, C), torch.randn(L, 1, C), torch.randn(L, 1, C))
    assert y.shape == (L, 1, C)


def test_default_keeps_torch_layout_and_state_dict() -> None:
    torch.manual_seed(0)
    ours = ga.GraphMultiheadAttention(C, H)
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(C, H)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        assert torch.equal(a, b)


def test_errors() -> None:
    with pytest.raises(ValueError, match="num_heads=6 is not divisible by num_kv_heads=4"):
        ga.GraphAttention(C, H, num_kv_heads=4)
    with pytest.raises(ValueError, match="num_kv_heads must be a positive int or None"):
        ga.GraphAttention(C, H, num_kv_heads=0)
    with pytest.raises(ValueError, match="num_heads=6 is not divisible by num_kv_heads=5"):
        ga.GraphMultiheadAttention(C, H, num_kv_heads=5)
    with pytest.raises(ValueError, match="to_torch cannot express grouped-query"):
        ga.GraphMultiheadAttention(C, H, num_kv_heads=2).to_torch()
    with pytest.raises(ValueError, match="to_torch cannot express grouped-query"):
        ga.GraphAttention(C, H, num_kv_heads=2).to_torch()
    q = torch.randn(N, H, D)
    k = torch.randn(N, 4, D)
    p = Problem(q=q, k=k, v=k, graph=ga.complete_graph(N), score=ga.make_score("dot", H, D))
    with pytest.raises(ValueError, match="got q 6, k 4, v 4 heads"):
        attend(p, "edge")
    p = p._replace(k=torch.randn(N, 2, D), v=torch.randn(N, 3, D))
    with pytest.raises(ValueError, match="got q 6, k 2, v 3 heads"):
        attend(p)
