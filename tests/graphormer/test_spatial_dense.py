"""SpatialBias on the dense backend's grid path (backends/dense_mask.py, scores/grid.py): the
distances scattered into the padded grid once per graph, the bias gathered from its table there
(table gradient in one pass, ``table_gather``), attention with the learned mask by ``biased_sdpa``. Every
comparison is fp64 against the edge backend at 1e-10: outputs, q/k/v gradients and the table's.

Sizes are pairwise distinct: H=3, D=5, graphs of 4, 7 and 2 nodes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import gatattn as ga
from gatattn.backends import Problem, attend
from gatattn.backends.bias_sdpa import biased_sdpa, use_biased_sdpa
from gatattn.backends.dense import dense_keys
from gatattn.backends.dense_mask import scattered_inputs
from gatattn.scores.grid import GridInput, table_gather

H, D = 3, 5


def _graph(sizes: list[int], seed: int = 0) -> tuple[ga.TokenGraph, torch.Tensor]:
    """Complete graphs of random trees (each node under an earlier one) and their distances."""
    gen = torch.Generator().manual_seed(seed)
    edges, start = [], 0
    for n in sizes:
        child = torch.arange(1, n)
        parent = (torch.rand(n - 1, generator=gen) * child).long()
        e = torch.stack([parent, child]) + start
        edges.append(torch.cat([e, e.flip(0)], 1))
        start += n
    batch = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    g, dist = ga.shortest_path_distances(torch.cat(edges, 1), start, batch=batch, max_distance=3)
    return g, dist


def _run(g: ga.TokenGraph, score: ga.ScoreFunction, attr: object, backend: str) -> list:
    score.zero_grad()
    gen = torch.Generator().manual_seed(1)
    q, k, v = (
        torch.randn(n, H, D, generator=gen, dtype=torch.float64).requires_grad_()
        for n in (g.num_dst, g.num_src, g.num_src)
    )
    out = attend(Problem(q, k, v, g, score, edge_attr=attr), backend).out  # type: ignore[arg-type]
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return [out.detach(), q.grad, k.grad, v.grad, *(p.grad.clone() for p in score.parameters())]


def _equal(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=1e-10, rtol=0)


def _spatial(token: bool = False) -> ga.ScoreFunction:
    torch.manual_seed(3)
    bias = ga.SpatialBias(H, 3, graph_token=token)
    with torch.no_grad():
        for p in bias.parameters():
            p.normal_()
    return (ga.make_score("scaled_dot", H, D) + bias).double()


@pytest.mark.parametrize("sizes", [[4, 7, 2], [6, 6]], ids=["unequal", "equal"])
@pytest.mark.parametrize("named", [False, True])
def test_spatial_bias_grid_path_equals_edge(sizes: list[int], named: bool) -> None:
    g, dist = _graph(sizes)
    attr = {"distance": dist} if named else dist
    score = _spatial()
    _equal(_run(g, score, attr, "dense"), _run(g, score, attr, "edge"))
    keys = dense_keys(g)
    assert isinstance(keys, torch.Tensor)
    gi = scattered_inputs(g, keys, attr, (len(sizes), max(sizes), max(sizes)))
    assert isinstance(gi, GridInput)  # the path taken: the distances as a grid
    assert scattered_inputs(g, keys, attr, (len(sizes), max(sizes), max(sizes))) is gi  # kept


def test_graph_token_distances_on_the_grid_path() -> None:
    g, dist = _graph([5, 3])
    dist = dist.clone()
    dist[::4] = -1  # pairs with the graph token: their own bias
    score = _spatial(token=True)
    _equal(_run(g, score, dist, "dense"), _run(g, score, dist, "edge"))


def test_an_edited_distance_tensor_is_scattered_again() -> None:
    g, dist = _graph([4, 7, 2], seed=2)
    score = _spatial()
    before = _run(g, score, dist, "dense")
    with torch.no_grad():
        dist.clamp_(max=1)  # in place: a new version of the same tensor
    after = _run(g, score, dist, "dense")
    _equal(after, _run(g, score, dist, "edge"))
    assert not torch.allclose(before[0], after[0])


def test_out_of_range_distances_raise_on_the_grid_path() -> None:
    g, dist = _graph([4, 3])
    score = _spatial()
    with pytest.raises(ValueError, match=r"holds values in \[0, 9\], outside the table"):
        _run(g, score, dist.clamp(max=0) + 9 * (dist == dist.max()), "dense")


def test_a_learned_bias_with_minus_inf_rows_gives_zero() -> None:
    # a table entry of -inf on every pair of one row: the grid is not finite, so the rows that
    # allow no key are found in the mask, as on the edge backend (out 0 there, finite grads)
    g, dist = _graph([4, 3], seed=4)
    score = _spatial()
    bias = score.parts()[1][0]
    with torch.no_grad():
        bias.weight[:, 1] = float("-inf")  # head 1: every distance
    dense, edge = _run(g, score, dist, "dense"), _run(g, score, dist, "edge")
    torch.testing.assert_close(dense[0], edge[0], atol=1e-10, rtol=0)
    assert (dense[0][:, 1] == 0).all()
    for t in dense[1:4]:
        assert torch.isfinite(t).all()


@pytest.mark.parametrize(
    "shape",
    [(2, 3, 4, 6), (1, 3, 4, 6), (2, 1, 4, 6), (2, 3, 1, 6)],
    ids=["full", "B1", "H1", "L1"],
)
@pytest.mark.parametrize("dims", [(D, 7), (9, 11)], ids=["narrow", "wide"])  # around NARROW_HEAD
def test_biased_sdpa_equals_sdpa_math(
    shape: tuple[int, int, int, int], dims: tuple[int, int]
) -> None:
    gen = torch.Generator().manual_seed(6)
    d, dv = dims
    q = torch.randn(2, 3, 4, d, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 3, 6, d, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 3, 6, dv, generator=gen, dtype=torch.float64, requires_grad=True)
    m = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    assert use_biased_sdpa(q, k, m, 0.0) and not use_biased_sdpa(q, k, m, 0.1)
    assert not use_biased_sdpa(q, k, m.detach(), 0.0)
    results = []
    for fn in (
        lambda: biased_sdpa(q, k, v, m, 0.3),
        lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.3),
    ):
        with sdpa_kernel([SDPBackend.MATH]):
            out = fn()
        grads = torch.autograd.grad((out * out.detach().cos()).sum(), (q, k, v, m))
        results.append([out, *grads])
    _equal(*results)


def test_biased_sdpa_twice_differentiable() -> None:
    gen = torch.Generator().manual_seed(7)
    args = [
        torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True)
        for s in ((1, 2, 3, 2), (1, 2, 4, 2), (1, 2, 4, 2), (1, 2, 3, 4))
    ]
    assert torch.autograd.gradgradcheck(lambda *a: biased_sdpa(*a, 0.7), args)
    q = args[0].detach()  # one input without a gradient: None in its place
    out = biased_sdpa(q, *args[1:], 0.7)
    assert torch.autograd.grad(out.sum(), args[3])[0].shape == args[3].shape


def test_table_gather_gradient_is_the_sum_per_entry() -> None:
    gen = torch.Generator().manual_seed(8)
    table = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 6, (3, 5), generator=gen)
    grad = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    out = table_gather(table, index)
    torch.testing.assert_close(out, table.detach()[index], atol=0, rtol=0)
    (got,) = torch.autograd.grad(out, table, grad)
    want = torch.zeros(6, dtype=torch.float64).index_add(0, index.reshape(-1), grad.reshape(-1))
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    assert torch.autograd.gradgradcheck(lambda t: table_gather(t, index), (table,))


def test_two_spatial_biases_on_one_grid_keep_their_own_checks() -> None:
    # the grid's cached index is per (max_distance, graph_token, H): a bias without the token
    # still refuses distance -1 after one with the token read the same grid
    g, dist = _graph([5, 3], seed=9)
    dist = dist.clone()
    dist[::5] = -1
    token, plain = ga.SpatialBias(H, 3, graph_token=True), ga.SpatialBias(H, 4)
    score = (ga.make_score("scaled_dot", H, D) + token + plain).double()
    with pytest.raises(ValueError, match=r"holds values in \[-1, .*valid: 0\.\.5"):
        _run(g, score, dist, "dense")
    both = (ga.make_score("scaled_dot", H, D) + token + ga.SpatialBias(H, 3)).double()
    _equal(_run(g, both, dist.clamp(min=0), "dense"), _run(g, both, dist.clamp(min=0), "edge"))
