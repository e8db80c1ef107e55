"""``Attention`` and ``dense_weights`` (gatattn/result.py): the result type's import paths, and
per-edge weights scattered into torch's dense [B, H, L_q, L_k]."""

from __future__ import annotations

import torch

import gatattn as ga
from gatattn.result import Attention, dense_weights


def test_attention_keeps_every_import_path() -> None:
    from gatattn.nn import inputs

    assert ga.Attention is ga.nn.Attention is inputs.Attention is Attention
    assert Attention.__module__ == "gatattn.result"


def test_dense_weights_equal_a_written_out_loop() -> None:
    """B = 2 sequences, L_q = 3 queries, L_k = 5 keys, H = 4 heads; random edges per sequence."""
    B, Lq, Lk, H = 2, 3, 5, 4
    gen = torch.Generator().manual_seed(0)
    keep = torch.rand(B, Lq, Lk, generator=gen) < 0.5  # [B, L_q, L_k]
    b, i, j = keep.nonzero(as_tuple=True)  # [E] each
    edge_index = torch.stack([b * Lk + j, b * Lq + i])  # [2, E]
    graph = ga.TokenGraph(edge_index, B * Lk, B * Lq)
    w = torch.randn(edge_index.size(1), H, dtype=torch.float64, requires_grad=True)  # [E, H]
    got = dense_weights(w, graph, B, Lq, Lk)  # [B, H, L_q, L_k]
    want = torch.zeros(B, H, Lq, Lk, dtype=torch.float64)
    for e in range(edge_index.size(1)):
        want[b[e], :, i[e], j[e]] = w[e].detach()
    assert got.shape == (B, H, Lq, Lk)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert (got[:, 0] != 0).eq(keep).all()  # 0 off the graph (randn is never exactly 0 here)
    g = torch.randn(B, H, Lq, Lk, dtype=torch.float64)
    (grad,) = torch.autograd.grad(got, w, g)
    torch.testing.assert_close(grad, g.permute(0, 2, 3, 1)[b, i, j], rtol=0, atol=0)
