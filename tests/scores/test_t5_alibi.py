"""T5 buckets and ALiBi slopes against transformers' own functions (gatattn/scores/biases.py).

* ``t5_bucket`` equals ``T5Attention._relative_position_bucket`` (bidirectional and causal, the
  T5 defaults and other bucket counts), and ``RelativePositionBias`` equals T5's bias lookup;
* ``alibi_slopes`` equals BLOOM's slopes (``build_alibi_tensor``) for powers of two and others.
"""

from __future__ import annotations

import pytest
import torch

import gatattn as ga
from gatattn.scores import DenseContext, Edges, alibi_slopes, t5_bucket

t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize(("buckets", "max_distance"), [(32, 128), (8, 20), (64, 300), (6, 9)])
def test_t5_bucket_equals_transformers(bidirectional: bool, buckets: int, max_distance: int):
    rel = torch.arange(-700, 701)  # j - i, far beyond max_distance both ways
    want = t5.T5Attention._relative_position_bucket(
        rel, bidirectional=bidirectional, num_buckets=buckets, max_distance=max_distance
    )
    assert torch.equal(t5_bucket(rel, bidirectional, buckets, max_distance), want)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_bias_equals_t5_compute_bias(bidirectional: bool) -> None:
    """T5's compute_bias: embedding(bucket(memory_position - context_position)) -> [1, H, L, L]."""
    H, Lq, Lk = 3, 6, 9
    bias = ga.RelativePositionBias(H, 8, 20, bidirectional=bidirectional).double()
    ctx_pos = torch.arange(Lq)[:, None]
    mem_pos = torch.arange(Lk)[None, :]
    buckets = t5.T5Attention._relative_position_bucket(
        mem_pos - ctx_pos, bidirectional=bidirectional, num_buckets=8, max_distance=20
    )
    want = bias.embedding(buckets).permute(2, 0, 1)  # [H, L_q, L_k]
    got = bias.dense(DenseContext(torch.arange(Lq), torch.arange(Lk)))
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    g = ga.bipartite_graph(Lq, Lk)
    edges = Edges(g.edge_index[0], g.edge_index[1], g)
    per_edge = bias(edges)  # [E, H]
    torch.testing.assert_close(per_edge, want[:, g.edge_index[1], g.edge_index[0]].T)


def test_t5_bias_causal_layer_equals_written_out_and_gradcheck() -> None:
    """A causal decoder with T5's unidirectional bias: per-edge α = <q_i, k_j> + B[bucket]."""
    N, H, D = 7, 3, 5
    score = ga.make_score("dot", H, D) + ga.RelativePositionBias(H, 8, 20, bidirectional=False)
    layer = ga.GraphAttention(H * D, H, score=score, backend="auto").double()
    with torch.no_grad():
        layer.score.biases[0].embedding.weight.normal_()
    x = torch.randn(N, H * D, dtype=torch.float64, requires_grad=True)
    g = ga.causal_graph(N)
    out = layer(x, g)
    q, k, v = (t.transpose(0, 1) for t in layer.project(x, x, x))  # [H, N, D]
    rel = torch.arange(N)[None, :] - torch.arange(N)[:, None]
    b = t5.T5Attention._relative_position_bucket(
        rel, bidirectional=False, num_buckets=8, max_distance=20
    )
    logits = q @ k.transpose(-1, -2) + layer.score.biases[0].embedding(b).permute(2, 0, 1)
    logits = logits.masked_fill(~g.to_dense_mask(), float("-inf"))
    ref = layer.out_proj((logits.softmax(-1) @ v).transpose(0, 1).reshape(N, H * D))
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    wrt = [x, *layer.parameters()]
    for a, c in zip(torch.autograd.grad(out.sum(), wrt), torch.autograd.grad(ref.sum(), wrt)):
        torch.testing.assert_close(a, c, atol=1e-10, rtol=0)
    emb = layer.score.biases[0]
    edges = Edges(g.edge_index[0], g.edge_index[1], g)
    w = emb.embedding.weight.detach().clone().requires_grad_()

    def fn(weight: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(
            t5_bucket(edges.pos_src() - edges.pos_dst(), False, 8, 20), weight
        )

    assert torch.autograd.gradcheck(fn, (w,))


@pytest.mark.parametrize("heads", [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 40, 64, 112])
def test_alibi_slopes_equal_bloom(heads: int) -> None:
    mask = torch.ones(1, 4, dtype=torch.long)
    alibi = bloom.build_alibi_tensor(mask, heads, torch.float64)  # [H, 1, L]: m_h · j
    bloom_slopes = alibi[:, 0, 1]  # position 1: m_h
    torch.testing.assert_close(alibi_slopes(heads).double(), bloom_slopes, atol=0, rtol=1e-6)
    # BLOOM raises fp32 powers with torch.pow: up to ~8 fp32 units apart (measured) from the rounded value
    slopes = bloom._get_alibi_slopes(heads, torch.device("cpu"))
    torch.testing.assert_close(alibi_slopes(heads), slopes, atol=0, rtol=16 * 2**-24)


def test_alibi_on_a_causal_graph_equals_bloom_bias_up_to_a_row_constant() -> None:
    """BLOOM adds m_h·j; gatattn adds -m_h·|i - j| = m_h·(j - i) on a causal graph: the two
    differ by -m_h·i, constant over each row, so the softmax weights are equal."""
    H, L = 5, 6
    bias = ga.ALiBi(H).double()
    ours = bias.dense(DenseContext(torch.arange(L), torch.arange(L)))  # [H, L, L]
    alibi = bloom.build_alibi_tensor(torch.ones(1, L, dtype=torch.long), H, torch.float64)
    theirs = alibi.expand(H, L, L)  # [H, L, L]: m_h·j
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    w1 = ours.masked_fill(~causal, float("-inf")).softmax(-1)
    w2 = theirs.masked_fill(~causal, float("-inf")).softmax(-1)
    torch.testing.assert_close(w1, w2, atol=1e-12, rtol=0)
