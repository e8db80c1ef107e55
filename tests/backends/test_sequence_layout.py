"""q, k, v per sequence ([B, H, L, D], SDPA's and transformers' layout; ``Problem``) equal the
same Problem on nodes ([B·L, H, D]) on every backend, forward and gradients in fp64.

    node b·L + l  <->  t[b, :, l, :]

The dense backend runs them as they are (``sequence_layout``); ``attend`` lays them out as nodes
for the others, and for the per-edge scores and weights. Sizes are pairwise distinct (B=2,
H=6, H_kv=3, D=5, L_q=4, L_k=7) so that a transposed axis fails.
"""

from __future__ import annotations

import pytest
import torch

import gatattn as ga
from gatattn.backends import BACKENDS, Problem, as_nodes, attend, per_sequence
from gatattn.scores import ScaledDotScale

pytestmark = pytest.mark.usefixtures("one_thread")

B, H, KV, D = 2, 6, 3, 5


def _graphs() -> dict[str, ga.TokenGraph]:
    """Graphs of B sequences of one length each side: (L_q, L_k) = (4, 4) or (4, 7)."""
    allowed = torch.rand(B, 4, 7, generator=torch.Generator().manual_seed(3)) < 0.6
    allowed[:, :, 0] = True  # every query sees a key
    return {
        "complete": ga.complete_graph(lengths=[4] * B),
        "causal": ga.causal_graph(lengths=[4] * B),
        "bipartite": ga.bipartite_graph([4] * B, [7] * B),
        "mask": ga.from_mask(allowed),
        "window": ga.window_graph(window=1, causal=True, lengths=[4] * B),
    }


def _sequences(g: ga.TokenGraph, seed: int = 0) -> list[torch.Tensor]:
    Lq, Lk = g.sequence_lengths("dst")[0], g.sequence_lengths("src")[0]
    gen = torch.Generator().manual_seed(seed)
    shapes = [(B, H, Lq, D), (B, KV, Lk, D), (B, KV, Lk, D)]
    return [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]


@pytest.mark.parametrize("backend", ["dense", "edge", "block"])
@pytest.mark.parametrize("name", list(_graphs()))
@pytest.mark.parametrize("sinks", [False, True], ids=["plain", "sinks"])
def test_per_sequence_equals_nodes(backend: str, name: str, sinks: bool) -> None:
    g = _graphs()[name]
    q, k, v = _sequences(g)
    s = torch.randn(H, dtype=torch.float64) if sinks else None
    seq = Problem(q, k, v, g, ScaledDotScale(0.3), sinks=s, need_weights=True)
    nodes = as_nodes(seq)
    assert per_sequence(seq) and not per_sequence(nodes)
    assert nodes.k.shape == (B * k.size(2), KV, D)
    assert torch.equal(nodes.k[k.size(2) + 1], k[1, :, 1])  # node b·L + l is [b, :, l, :]
    if BACKENDS[backend].supports(nodes):  # block declines sinks: on nodes and per sequence
        assert backend == "block" and sinks
        with pytest.raises(ValueError, match="backend='block' cannot run"):
            attend(seq, backend)
        return
    a, b = attend(seq, backend), attend(nodes, "edge")
    torch.testing.assert_close(a.out, b.out, rtol=0, atol=1e-12)
    assert a.scores is not None and b.scores is not None and a.weights is not None
    torch.testing.assert_close(a.weights, b.weights, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(a.out.square().sum(), (q, k, v))
    ref = torch.autograd.grad(b.out.square().sum(), (q, k, v))
    for x, y in zip(grads, ref, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-11)


def test_dense_runs_per_sequence_tensors_as_they_are() -> None:
    """No copy into nodes for the dense backend: SDPA reads the caller's tensors."""
    g = _graphs()["bipartite"]
    q, k, v = (t.detach() for t in _sequences(g))
    seen: list[torch.Tensor] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args: torch.Tensor, **kwargs: object) -> torch.Tensor:
        seen.extend(args[:3])
        return sdpa(*args, **kwargs)  # type: ignore[arg-type]

    torch.nn.functional.scaled_dot_product_attention = spy  # type: ignore[assignment]
    try:
        out = attend(Problem(q, k, v, g, ScaledDotScale(0.3)), "dense").out
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
    assert [t.data_ptr() for t in seen] == [q.data_ptr(), k.data_ptr(), v.data_ptr()]
    assert out.shape == (B * 4, H, D)


def test_per_sequence_shapes_must_match_the_graph() -> None:
    g = _graphs()["bipartite"]  # B = 2 sequences, L_q = 4, L_k = 7
    q, k, v = (t.detach() for t in _sequences(g))
    score = ScaledDotScale(0.3)
    with pytest.raises(ValueError, match=r"got q \[2, 6, 4, 5\], k \[2, 3, 6, 5\]"):
        attend(Problem(q, k[:, :, :6], v[:, :, :6], g, score))
    with pytest.raises(ValueError, match="target lengths \\[4, 4\\] and source lengths \\[7, 7\\]"):
        attend(Problem(q[:1], k[:1], v[:1], g, score))
    with pytest.raises(ValueError, match="must be nodes \\[N, H, D\\] or per sequence"):
        attend(Problem(q, k.transpose(1, 2).reshape(14, KV, D), v, g, score))
    swapped = ga.window_graph(window=1, lengths=[3, 5])  # sequences of two lengths
    q2 = torch.randn(B, H, 4, D, dtype=torch.float64)
    k2 = torch.randn(B, KV, 4, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="target lengths \\[3, 5\\]"):
        attend(Problem(q2, k2, k2, swapped, score))
    dense = BACKENDS["dense"]
    with pytest.raises(ValueError, match=r"do not match the graph's grid \(B, L_q, L_k\)"):
        dense.run(Problem(q, k[:, :, :6], v[:, :, :6], g, score))
