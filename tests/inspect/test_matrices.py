"""Head choice, duplicate merge, residual adjustment and dense matrices (gatattn.inspect.matrices)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gatattn as ga
from gatattn.inspect import matrices

N, H, D = 5, 3, 7  # pairwise-distinct sizes: a transposed axis fails
C = H * D


def _result(g: ga.TokenGraph) -> ga.Attention:
    x = torch.randn(g.num_dst, C, dtype=torch.float64)
    return ga.GraphAttention(C, H).double()(x, g, return_attention=True)


# ------------------------------------------------------------------ check_head
@pytest.mark.parametrize("head", ["mean", "all", 0, 2, np.int64(1)])
def test_check_head_accepts(head: object) -> None:
    assert matrices.check_head(head, H) is None


def test_check_head_rejects() -> None:
    with pytest.raises(
        ValueError, match=r"head 3 is out of range: the layer has 3 heads \(0\.\.2\)"
    ):
        matrices.check_head(3, H)
    with pytest.raises(ValueError, match=r"head -1 is out of range"):
        matrices.check_head(-1, H)
    with pytest.raises(
        ValueError, match=r"head must be one of \('mean', 'all'\) or an int, got 'max'"
    ):
        matrices.check_head("max", H)
    with pytest.raises(ValueError, match=r"head must be one of \('mean',\) or an int, got 'all'"):
        matrices.check_head("all", H, allow_all=False)
    with pytest.raises(TypeError, match=r"head must be .* got bool"):
        matrices.check_head(True, H)
    with pytest.raises(TypeError, match=r"head must be .* got float"):
        matrices.check_head(1.0, H)


# ------------------------------------------------------------------ merge_duplicates
def test_merge_duplicates_analytic() -> None:
    # keys 4 and 9; key 4 appears twice with scores log 1 and log 3: merged score log 4
    keys = np.array([9, 4, 4])
    scores = np.log(np.array([[2.0, 1.0], [1.0, 5.0], [3.0, 5.0]]))  # [E, H=2]
    weights = np.array([[0.5, 0.1], [0.125, 0.2], [0.375, 0.3]])  # [E, H]
    got = matrices.merge_duplicates(keys, scores, weights)
    assert isinstance(got, matrices.MergedEdges)
    assert got.keys.tolist() == [4, 9] and got.multiplicity.tolist() == [2, 1]  # sorted keys
    assert np.allclose(got.scores, np.log([[4.0, 10.0], [2.0, 1.0]]), atol=1e-15, rtol=0)
    assert np.allclose(got.weights, [[0.5, 0.5], [0.5, 0.1]], atol=1e-15, rtol=0)
    k, s, w, c = got  # unpacks as the 4-tuple it used to be
    assert k is got.keys and s is got.scores and w is got.weights and c is got.multiplicity


def test_merge_duplicates_without_duplicates_keeps_order_and_arrays() -> None:
    keys = np.array([7, 1, 3])
    scores, weights = np.random.default_rng(0).random((2, 3, H))  # [E, H] each
    got = matrices.merge_duplicates(keys, scores, weights)
    assert got.keys is keys and got.scores is scores and got.weights is weights
    assert got.multiplicity.tolist() == [1, 1, 1] and got.multiplicity.dtype == np.int64


def test_merge_duplicates_all_minus_inf_group_stays_minus_inf() -> None:
    keys = np.array([0, 0, 1])
    scores = np.array([[-np.inf], [-np.inf], [0.5]])  # [E, 1]
    weights = np.array([[0.0], [0.0], [1.0]])
    got = matrices.merge_duplicates(keys, scores, weights)
    assert got.scores[0, 0] == -np.inf and got.scores[1, 0] == 0.5
    assert got.weights[:, 0].tolist() == [0.0, 1.0]


def test_merged_edges_keys_are_target_major() -> None:
    # edges j -> i: (1 -> 0) twice, (2 -> 0), (0 -> 1); 3 sources
    g = ga.TokenGraph(torch.tensor([[1, 1, 2, 0], [0, 0, 0, 1]]), 3, 3)
    res = _result(g)
    got = matrices.merged_edges(res, 3)
    assert got.keys.tolist() == [0 * 3 + 1, 0 * 3 + 2, 1 * 3 + 0]
    assert got.multiplicity.tolist() == [2, 1, 1]
    w = res.weights.detach().numpy()  # [E, H]
    assert np.allclose(got.weights, [w[0] + w[1], w[2], w[3]], atol=1e-15, rtol=0)
    assert got.scores.dtype == np.float64 and got.scores.shape == (3, H)


def test_node_counts() -> None:
    g = ga.TokenGraph(torch.tensor([[0, 3], [1, 1]]), 4, 2)  # bipartite: 4 sources, 2 targets
    x, xs = torch.randn(2, C, dtype=torch.float64), torch.randn(4, C, dtype=torch.float64)
    res = ga.GraphAttention(C, H).double()(x, g, x_src=xs, return_attention=True)
    assert matrices.node_counts(res) == (2, 4)
    bare = ga.Attention(res.out, res.edge_index, res.scores, res.weights)  # no graph attached
    assert matrices.node_counts(bare) == (4, 4)  # 1 + the largest index
    empty = torch.zeros(0, H, dtype=torch.float64)
    none = ga.Attention(res.out, torch.zeros(2, 0, dtype=torch.long), empty, empty)
    assert matrices.node_counts(none) == (0, 0)


# ------------------------------------------------------------------ attention_matrix
def test_attention_matrix_equals_multihead_attention() -> None:
    mha = nn.MultiheadAttention(C, H, dtype=torch.float64)
    x = torch.randn(N, C, dtype=torch.float64)
    res = ga.GraphAttention.from_torch(mha)(x, ga.complete_graph(N), return_attention=True)
    _, attn = mha(x, x, x, need_weights=True, average_attn_weights=False)  # [H, N, N]
    want = attn.detach().numpy()
    got = matrices.attention_matrix(res, head="all")  # [H, N, N] row = query
    assert got.shape == (H, N, N) and np.abs(got - want).max() < 1e-12
    assert np.abs(matrices.attention_matrix(res) - want.mean(0)).max() < 1e-12
    assert np.abs(matrices.attention_matrix(res, head=2) - want[2]).max() < 1e-12


def test_attention_matrix_sums_duplicates_and_merges_scores() -> None:
    g = ga.TokenGraph(torch.tensor([[1, 1, 2, 0], [0, 0, 0, 1]]), 3, 3)
    res = _result(g)
    s, w = res.scores.detach().numpy(), res.weights.detach().numpy()  # [E, H]
    A = matrices.attention_matrix(res, head=1)
    assert A[0, 1] == pytest.approx(w[0, 1] + w[1, 1], abs=1e-15)
    assert np.abs(A.sum(1) - [1.0, 1.0, 0.0]).max() < 1e-12  # target 2 has no edge
    S = matrices.attention_matrix(res, which="score", head=1)
    assert S[0, 1] == pytest.approx(np.logaddexp(s[0, 1], s[1, 1]), abs=1e-12)
    assert np.isnan(S[2]).all()
    assert (matrices.attention_matrix(res, which="score", fill=-1.0)[2] == -1.0).all()


def test_score_matrix_blank_off_graph() -> None:
    g = ga.TokenGraph(torch.tensor([[0, 1, 1], [0, 0, 1]]), 2, 2)
    res = _result(g)
    S = matrices.attention_matrix(res, which="score", head=0)
    assert np.isnan(S[1, 0]) and S[0, 1] == pytest.approx(
        float(res.scores.detach()[1, 0]), abs=1e-15
    )
    assert matrices.attention_matrix(res, head="all").shape == (H, 2, 2)


def test_attention_matrix_bad_input() -> None:
    res = _result(ga.complete_graph(N))
    with pytest.raises(ValueError, match=r"which must be 'weight' or 'score', got 'alpha'"):
        matrices.attention_matrix(res, which="alpha")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"expected a gatattn.Attention, got ndarray"):
        matrices.attention_matrix(np.eye(3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"head 3 is out of range"):
        matrices.attention_matrix(res, head=3)


# ------------------------------------------------------------------ residual
def test_residual_adjust_by_hand() -> None:
    a = np.array([[0.0, 1.0], [0.25, 0.75]])
    # 0.5·A + 0.5·I = [[0.5, 0.5], [0.125, 0.875]]: rows already sum to 1
    assert np.allclose(matrices.residual_adjust(a), [[0.5, 0.5], [0.125, 0.875]], atol=1e-15)
    z = np.array([[0.0, 0.0], [0.0, 2.0]])  # row 0 empty: 0.5·I makes it [1, 0]
    assert np.allclose(matrices.residual_adjust(z), [[1.0, 0.0], [0.0, 1.0]], atol=1e-15)
    ints = matrices.residual_adjust(np.eye(3, dtype=np.int64))
    assert ints.dtype == np.float64 and np.array_equal(ints, np.eye(3))


def test_residual_adjust_never_divides_by_zero() -> None:
    m = np.array([[-1.0, 0.0], [0.0, 1.0]])  # row 0 of 0.5·A + 0.5·I is [0, 0]
    got = matrices.residual_adjust(m)
    assert np.isfinite(got).all() and got[0].tolist() == [0.0, 0.0]


def test_adjusted_matrices() -> None:
    res = _result(ga.complete_graph(N))
    A = matrices.attention_matrix(res)
    hat = 0.5 * A + 0.5 * np.eye(N)
    hat /= hat.sum(1, keepdims=True)
    got = matrices.adjusted_matrices([res, torch.from_numpy(A)])
    assert len(got) == 2 and all(np.abs(m - hat).max() < 1e-15 for m in got)
    plain = matrices.adjusted_matrices([res], residual=False, head=0)
    assert np.abs(plain[0] - matrices.attention_matrix(res, head=0)).max() < 1e-15
    with pytest.raises(ValueError, match=r"head must be one of \('mean',\) or an int, got 'all'"):
        matrices.adjusted_matrices([res], head="all")
    with pytest.raises(ValueError, match=r"attentions is empty"):
        matrices.adjusted_matrices([])
    with pytest.raises(TypeError, match=r"attentions must be a list with one entry per layer"):
        matrices.adjusted_matrices(np.eye(3))  # type: ignore[arg-type]
    assert math.isclose(float(got[0].sum()), N, abs_tol=1e-12)  # each row sums to 1
