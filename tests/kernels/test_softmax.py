"""The neighbourhood softmax (docs/math.md, eq. 2; gatattn/kernels/softmax.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch_geometric.utils import softmax as pyg_softmax

from gatattn import neighbourhood_softmax


def _per_group_softmax(scores: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros_like(scores)
    for i in range(n):
        sel = index == i
        if sel.any():
            out[sel] = torch.softmax(scores[sel], dim=0)
    return out


def test_equals_torch_softmax_per_group_and_pyg() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(11, 3, dtype=torch.float64, generator=gen)
    index = torch.tensor([0, 2, 2, 1, 0, 2, 4, 4, 4, 1, 0])
    got = neighbourhood_softmax(scores, index, 5)
    torch.testing.assert_close(got, _per_group_softmax(scores, index, 5), atol=1e-15, rtol=0)
    torch.testing.assert_close(got, pyg_softmax(scores, index, num_nodes=5), atol=1e-14, rtol=0)


def test_two_scores_known_values() -> None:
    # α = (1, 0) into one target: weights (e, 1) / (1 + e)
    w = neighbourhood_softmax(
        torch.tensor([[1.0], [0.0]], dtype=torch.float64), torch.tensor([0, 0]), 1
    )
    e = torch.e
    torch.testing.assert_close(
        w[:, 0], torch.tensor([e / (1 + e), 1 / (1 + e)], dtype=torch.float64)
    )


def test_duplicate_edges_are_separate_edges() -> None:
    w = neighbourhood_softmax(torch.tensor([[0.0], [0.0], [0.0]]), torch.tensor([0, 0, 0]), 1)
    torch.testing.assert_close(w, torch.full((3, 1), 1 / 3))


def test_all_minus_inf_group_gives_zero_and_finite_grads() -> None:
    scores = torch.tensor(
        [[-torch.inf, 0.3], [-torch.inf, 0.1], [2.0, -torch.inf]], requires_grad=True
    )
    w = neighbourhood_softmax(scores, torch.tensor([0, 0, 1]), 3)  # target 2 has no edges
    assert torch.equal(w[:, 0], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.equal(w[2, 1], torch.tensor(0.0))
    assert (
        pyg_softmax(scores.detach(), torch.tensor([0, 0, 1]), num_nodes=3).isnan().any()
    )  # the bug we fix
    (w * torch.randn_like(w)).sum().backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_stable_for_large_logits_in_every_dtype(dtype: torch.dtype) -> None:
    scores = torch.tensor([[1e4], [-1e4], [1e4 - 1], [-1e4]], dtype=dtype, requires_grad=True)
    w = neighbourhood_softmax(scores, torch.tensor([0, 0, 0, 1]), 2)
    assert w.dtype == dtype and torch.isfinite(w).all()
    ref = _per_group_softmax(scores.detach().double(), torch.tensor([0, 0, 0, 1]), 2)
    assert (w.double() - ref).abs().max() < 1e-2
    w.sum().backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError, match="scores has 3 rows but index has 2 edges"):
        neighbourhood_softmax(torch.zeros(3, 1), torch.tensor([0, 1]), 2)
    with pytest.raises(
        ValueError, match=r"index has 2 edges \(shape \[1, 2\]\); index must be \[E\]"
    ):
        neighbourhood_softmax(torch.zeros(2, 1), torch.tensor([[0, 1]]), 2)


@pytest.mark.parametrize(
    ("index", "match"),
    [
        ([0, 1, 5], r"index holds target 5 \(edge 2\), outside \[0, num_nodes=3\)"),
        ([0, 3, 1], r"index holds target 3 \(edge 1\), outside \[0, num_nodes=3\)"),
        ([0, -1, 2], r"index holds target -1 \(edge 1\), outside \[0, num_nodes=3\)"),
    ],
)
def test_index_out_of_range_raises(index: list[int], match: str) -> None:
    """An index >= num_nodes (or negative) used to crash inside PyG's scatter."""
    with pytest.raises(ValueError, match=match):
        neighbourhood_softmax(torch.zeros(3, 2), torch.tensor(index), 3)


def test_index_on_another_device_raises() -> None:
    with pytest.raises(ValueError, match="index is on meta but scores are on cpu"):
        neighbourhood_softmax(torch.zeros(2, 1), torch.tensor([0, 1], device="meta"), 2)


def test_bad_index_dtype_and_num_nodes_raise() -> None:
    with pytest.raises(TypeError, match="index must be a LongTensor .* got torch.int32"):
        neighbourhood_softmax(torch.zeros(2, 1), torch.tensor([0, 1], dtype=torch.int32), 2)
    with pytest.raises(TypeError, match="index must be a LongTensor .* got list"):
        neighbourhood_softmax(torch.zeros(2, 1), [0, 1], 2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="num_nodes must be an int >= 0, got 2.0"):
        neighbourhood_softmax(torch.zeros(2, 1), torch.tensor([0, 1]), 2.0)  # type: ignore[arg-type]
    assert neighbourhood_softmax(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), 0).shape == (
        0,
        2,
    )


@given(
    st.integers(1, 6).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(st.tuples(st.integers(0, n - 1), st.floats(-50, 50)), min_size=0, max_size=20),
        )
    )
)
def test_property_matches_per_group_softmax(case: tuple[int, list[tuple[int, float]]]) -> None:
    n, rows = case
    index = torch.tensor([r[0] for r in rows], dtype=torch.long)
    scores = torch.tensor([[r[1], -r[1]] for r in rows], dtype=torch.float64).reshape(-1, 2)
    got = neighbourhood_softmax(scores, index, n)
    torch.testing.assert_close(got, _per_group_softmax(scores, index, n), atol=1e-12, rtol=0)
    sums = torch.zeros(n, 2, dtype=torch.float64).index_add_(0, index, got)
    has = torch.bincount(index, minlength=n) > 0
    torch.testing.assert_close(sums[has], torch.ones_like(sums[has]))
    assert (sums[~has] == 0).all()
