"""Rollout, flow, entropy, normalisation, top edges and centrality (gatattn.inspect.analysis)."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
import torch
from torch import nn

import gatattn as ga
from gatattn.inspect import analysis, matrices

N, H, D = 5, 3, 7  # pairwise-distinct sizes
C = H * D


def _rownorm(m: np.ndarray) -> np.ndarray:
    return m / m.sum(1, keepdims=True)


def _attend(layers: list[ga.GraphAttention], x: torch.Tensor) -> list[ga.Attention]:
    out, g = [], ga.complete_graph(x.size(0))
    for layer in layers:
        res = layer(x, g, return_attention=True)
        out.append(res)
        x = res.out.detach()
    return out


def test_rollout_equals_numpy_product_of_torch_attention() -> None:
    """3 layers: R = Â3 Â2 Â1 with Â = rownorm(0.5 A + 0.5 I), A from nn.MultiheadAttention."""
    mhas = [nn.MultiheadAttention(C, H, dtype=torch.float64) for _ in range(3)]
    x = torch.randn(N, C, dtype=torch.float64)
    results = _attend([ga.GraphAttention.from_torch(m) for m in mhas], x)
    hats, h = [], x
    for mha in mhas:  # the same stack, run through PyTorch's own attention
        out, attn = mha(h, h, h, need_weights=True, average_attn_weights=True)  # attn [N, N]
        hats.append(_rownorm(0.5 * attn.detach().numpy() + 0.5 * np.eye(N)))
        h = out.detach()
    want = hats[2] @ hats[1] @ hats[0]
    got = ga.attention_rollout(results)
    assert np.abs(got - want).max() < 1e-10
    assert np.abs(got.sum(1) - 1).max() < 1e-12  # rows stay distributions
    assert np.abs(got - hats[0] @ hats[1] @ hats[2]).max() > 1e-3  # the order matters here


def test_rollout_orientation_by_hand() -> None:
    # layer 1: every token copies token 0; layer 2: token 2 copies token 1, others themselves
    a1 = np.zeros((3, 3))
    a1[:, 0] = 1
    a2 = np.eye(3)
    a2[2] = [0, 1, 0]
    got = ga.attention_rollout([a1, a2], residual=False)
    assert np.array_equal(got, a1)  # after layer 2 every output still comes from input 0
    assert np.array_equal(ga.attention_rollout([a2, a1], residual=False), a1 @ a2)


def test_one_layer_without_residual_is_the_attention_matrix() -> None:
    res = _attend([ga.GraphAttention(C, H).double()], torch.randn(N, C, dtype=torch.float64))
    A = matrices.attention_matrix(res[0])  # [N, N]
    w = res[0].weights.detach().mean(1).view(N, N).numpy()  # complete graph: edges target-major
    assert np.abs(A - w).max() < 1e-15
    assert np.abs(ga.attention_rollout(res, residual=False) - A).max() < 1e-15
    assert np.abs(ga.attention_flow(res, residual=False) - A).max() < 1e-12
    h1 = ga.attention_rollout(res, residual=False, head=1)
    assert np.abs(h1 - res[0].weights.detach()[:, 1].view(N, N).numpy()).max() < 1e-15


def test_flow_hand_computed() -> None:
    # rows = queries. Paths from input j to output i through the middle layer m:
    #   F[i, j] = Σ_m min(A1[m, j], A2[i, m])  (the paths share no edge here)
    a1 = np.array([[0.5, 0.5], [0.25, 0.75]])
    a2 = np.array([[1.0, 0.0], [0.5, 0.5]])
    # F[0,0] = min(.5,1) + min(.25,0) = .5      F[0,1] = min(.5,1) + min(.75,0) = .5
    # F[1,0] = min(.5,.5) + min(.25,.5) = .75   F[1,1] = min(.5,.5) + min(.75,.5) = 1
    want = np.array([[0.5, 0.5], [0.75, 1.0]])
    got = ga.attention_flow([a1, a2], residual=False)
    assert np.abs(got - want).max() < 1e-12
    only = ga.attention_flow([a1, a2], residual=False, targets=[1])
    assert np.array_equal(only[0], [0.0, 0.0]) and np.abs(only[1] - want[1]).max() < 1e-12
    # residual on a swap: Â = rownorm(0.5·[[0,1],[1,0]] + 0.5·I) = all 0.5
    swap = ga.attention_flow([np.array([[0.0, 1.0], [1.0, 0.0]])])
    assert np.abs(swap - 0.5).max() < 1e-12


def test_entropy_against_torch_categorical() -> None:
    lengths = [2, 4]
    g = ga.complete_graph(lengths=lengths)
    layer = ga.GraphAttention(C, H).double()
    res = layer(torch.randn(6, C, dtype=torch.float64), g, return_attention=True)
    got = analysis.attention_entropy(res)  # [N, H]
    assert got.shape == (6, H)
    w = res.weights.detach()
    for i in range(6):
        probs = w[res.edge_index[1] == i]  # [|N(i)|, H]
        want = torch.distributions.Categorical(probs=probs.T).entropy()  # [H]
        assert torch.allclose(got[i], want, atol=1e-12, rtol=0)
    with torch.no_grad():
        layer.q_proj.weight.zero_()
        layer.q_proj.bias.zero_()  # q = 0: uniform attention, entropy log |N(i)|
    flat = analysis.attention_entropy(layer(torch.randn(6, C).double(), g, return_attention=True))
    want = torch.tensor([math.log(2)] * 2 + [math.log(4)] * 4, dtype=torch.float64)
    assert torch.allclose(flat, want.unsqueeze(1).expand(6, H), atol=1e-12, rtol=0)


def test_check_weights_sum() -> None:
    # target 2 has no incoming edge: exempt
    g = ga.TokenGraph(torch.tensor([[0, 1, 2, 0], [0, 0, 1, 1]]), 3, 3)
    res = ga.GraphAttention(C, H).double()(
        torch.randn(3, C, dtype=torch.float64), g, return_attention=True
    )
    assert analysis.check_weights_sum(res) < 1e-12
    G = ga.to_networkx(res)
    assert analysis.check_weights_sum(G) < 1e-12
    G[2][1]["weight"] *= 2
    with pytest.raises(ValueError, match=r"weights entering node 1 sum to 1\.\d+, not 1"):
        analysis.check_weights_sum(G)
    res.weights.data[3, 2] += 1e-3
    with pytest.raises(ValueError, match=r"weights entering target 1 \(head 2\) sum to"):
        analysis.check_weights_sum(res)
    with pytest.raises(TypeError, match=r"expected an Attention or an nx.DiGraph, got list"):
        analysis.check_weights_sum([])  # type: ignore[arg-type]


def test_top_edges() -> None:
    G = nx.DiGraph()
    G.add_weighted_edges_from([(0, 1, 0.2), (1, 0, 0.9), (2, 0, 0.5), (0, 2, 0.1)])
    assert analysis.top_edges(G, 2) == [(1, 0, 0.9), (2, 0, 0.5)]
    assert len(analysis.top_edges(G, 10)) == 4
    with pytest.raises(ValueError, match=r"k must be a positive int, got 0"):
        analysis.top_edges(G, 0)
    G.add_edge(3, 0)
    with pytest.raises(ValueError, match=r"edge 3 -> 0 has no 'weight' attribute"):
        analysis.top_edges(G)


def test_pagerank_follows_attention_rows() -> None:
    res = _attend([ga.GraphAttention(C, H).double()], torch.randn(N, C, dtype=torch.float64))[0]
    G = ga.to_networkx(res)
    A = matrices.attention_matrix(res)  # [N, N], rows (queries) sum to 1
    pi = np.full(N, 1 / N)
    for _ in range(500):  # power iteration of the walk query -> key with probabilities A[i, :]
        pi = 0.85 * A.T @ pi + 0.15 / N
    got = analysis.pagerank(G)
    assert max(abs(got[i] - pi[i]) for i in range(N)) < 1e-6
    info = analysis.pagerank(G, follow="information")
    assert max(abs(info[i] - got[i]) for i in range(N)) > 1e-4
    with pytest.raises(ValueError, match=r"follow must be 'attention' or 'information', got 'x'"):
        analysis.pagerank(G, follow="x")  # type: ignore[arg-type]


def test_strength() -> None:
    res = _attend([ga.GraphAttention(C, H).double()], torch.randn(N, C, dtype=torch.float64))[0]
    G = ga.to_networkx(res)
    A = matrices.attention_matrix(res)
    out, inn = analysis.strength(G), analysis.strength(G, direction="in")
    assert max(abs(out[j] - A[:, j].sum()) for j in range(N)) < 1e-12  # attention received
    assert max(abs(inn[i] - 1) for i in range(N)) < 1e-12  # attention paid
    with pytest.raises(ValueError, match=r"direction must be 'in' or 'out', got 'both'"):
        analysis.strength(G, direction="both")  # type: ignore[arg-type]


def test_bad_layer_inputs() -> None:
    res = _attend([ga.GraphAttention(C, H).double()], torch.randn(N, C, dtype=torch.float64))[0]
    with pytest.raises(ValueError, match=r"attentions is empty"):
        ga.attention_rollout([])
    with pytest.raises(TypeError, match=r"attentions must be a list with one entry per layer"):
        ga.attention_rollout(res)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"layer 0: attention matrix must be square \[N, N\], got \[2, 3\]"
    ):
        ga.attention_rollout([np.ones((2, 3))])
    with pytest.raises(ValueError, match=r"layer 1 has 4 tokens but layer 0 has 5"):
        ga.attention_flow([res, np.eye(4)])
    with pytest.raises(ValueError, match=r"head 7 is out of range"):
        ga.attention_rollout([res], head=7)
    with pytest.raises(ValueError, match=r"target 5 is out of range for 5 tokens"):
        ga.attention_flow([res], targets=[5])
    with pytest.raises(TypeError, match=r"expected a gatattn.Attention, got ndarray"):
        analysis.attention_entropy(np.eye(3))  # type: ignore[arg-type]
