"""The block backend's slab forms (gatattn/backends/slabs.py): the band view and its adjoint
against written-out loops, gradients of first and second order, the choice of form, and the
block backend on band and gather slabs against the edge backend (the reference formula) in fp64.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import gatattn as ga
import gatattn.backends.block as block
import gatattn.backends.slabs as slabs
from gatattn.backends.slabs import band_sum, band_view

H, D = 3, 5


def _band_loop(t: torch.Tensor, nr: int, size: int, offset: int, width: int) -> torch.Tensor:
    """out[r, h, w·S + a] = t[(r + offset + w)·S + a, h], zero outside t: one entry at a time."""
    out = torch.zeros(nr, t.size(1), width * size, t.size(2), dtype=t.dtype) + 0 * t.sum()
    for r in range(nr):
        for w in range(width):
            for a in range(size):
                m = (r + offset + w) * size + a
                if 0 <= m < t.size(0):
                    out[r, :, w * size + a] = t[m]
    return out


# (n, nr, S, offset, W): windows (offset < 0), causal (W = 1 - offset), offsets that run past
# the end, n not a multiple of S, one row-block, slabs wider than t
CASES = [(37, 3, 16, -1, 3), (32, 4, 8, -2, 5), (29, 8, 4, -3, 4), (20, 5, 4, 0, 2),
         (11, 1, 16, 0, 1), (9, 3, 4, -1, 6), (40, 5, 8, 1, 2), (7, 2, 4, -4, 3)]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_band_view_equals_the_loop(case: tuple[int, int, int, int, int]) -> None:
    n, nr, size, offset, width = case
    t = torch.randn(n, H, D, dtype=torch.float64)
    got = band_view(t, nr, size, offset, width)
    assert got.shape == (nr, H, width * size, D)
    assert torch.equal(got, _band_loop(t, nr, size, offset, width))


@pytest.mark.parametrize("case", CASES)
def test_band_sum_is_the_adjoint(case: tuple[int, int, int, int, int]) -> None:
    """<band_view(t), g> = <t, band_sum(g)> for every t and g, and band_sum equals the
    transpose of the loop's linear map."""
    n, nr, size, offset, width = case
    t = torch.randn(n, H, D, dtype=torch.float64)
    g = torch.randn(nr, H, width * size, D, dtype=torch.float64)
    lhs = (band_view(t, nr, size, offset, width) * g).sum()
    rhs = (t * band_sum(g, n, size, offset)).sum()
    torch.testing.assert_close(lhs, rhs, atol=1e-12, rtol=1e-12)
    tt = t.clone().requires_grad_()
    (want,) = torch.autograd.grad((_band_loop(tt, nr, size, offset, width) * g).sum(), tt)
    torch.testing.assert_close(band_sum(g, n, size, offset), want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("case", CASES[:4])
def test_band_ops_gradients_of_first_and_second_order(case: tuple[int, ...]) -> None:
    n, nr, size, offset, width = case
    t = torch.randn(n, 2, 2, dtype=torch.float64, requires_grad=True)
    g = torch.randn(nr, 2, width * size, 2, dtype=torch.float64, requires_grad=True)
    view = lambda x: band_view(x, nr, size, offset, width)  # noqa: E731
    adj = lambda x: band_sum(x, n, size, offset)  # noqa: E731
    assert torch.autograd.gradcheck(view, (t,))
    assert torch.autograd.gradgradcheck(view, (t,))
    assert torch.autograd.gradcheck(adj, (g,))
    assert torch.autograd.gradgradcheck(adj, (g,))


def _form(g: ga.TokenGraph, size: int) -> slabs.Slabs | None:
    return block._slabs_of(block.block_layout(g, size))


def test_windows_take_the_band_form_and_other_layouts_the_gather_form() -> None:
    win = _form(ga.window_graph(100, 10), 16)
    assert win is not None and win.table is None and (win.offset, win.width) == (-1, 3)
    causal = _form(ga.window_graph(100, 20, causal=True), 16)
    assert causal is not None and causal.table is None and (causal.offset, causal.width) == (-2, 3)
    # every row-block attends to tile 0 and its own diagonal tile: two tiles per row-block,
    # on diagonals 0 and -r (a band of width nr): the gather form, two slots each
    n, s = 64, 8
    dst = torch.arange(n).repeat_interleave(2)
    src = torch.stack([torch.zeros(n, dtype=torch.long), torch.arange(n)], 1).reshape(-1)
    star = _form(ga.TokenGraph(torch.stack([src, dst]), n, n), s)
    assert star is not None and star.table is not None and star.width == 2
    assert star.table[:, 0].tolist() == [0] * (n // s)


def test_uneven_rows_take_no_slab() -> None:
    n, s = 64, 8  # row-block 0 attends everywhere, the rest to their own tile
    dst = torch.cat([torch.arange(s).repeat_interleave(n), torch.arange(s, n)])
    src = torch.cat([torch.arange(n).repeat(s), torch.arange(s, n)])
    assert _form(ga.TokenGraph(torch.stack([src, dst]), n, n), s) is None


def _grads(layer: ga.GraphAttention, x: torch.Tensor, g: ga.TokenGraph) -> list[torch.Tensor]:
    x = x.clone().requires_grad_()
    out = layer(x, g)
    grads = torch.autograd.grad((out * torch.cos(out)).sum(), [x, *layer.parameters()])
    return [out.detach(), *grads]


def _check_block_equals_edge(g: ga.TokenGraph, seed: int = 0) -> None:
    torch.manual_seed(seed)
    blk = ga.GraphAttention(H * D, H, backend="block").double()
    edge = copy.deepcopy(blk)
    edge.backend = "edge"
    x = torch.randn(g.num_dst, H * D, dtype=torch.float64)
    for a, b in zip(_grads(blk, x, g), _grads(edge, x, g)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


GRAPHS = {
    "window": lambda: ga.window_graph(45, 6),
    "causal window": lambda: ga.window_graph(45, 9, causal=True),
    "dilated window": lambda: ga.window_graph(45, 4, dilation=3),
    "window, several sequences": lambda: ga.window_graph(window=5, lengths=[13, 1, 20, 9]),
}


@pytest.mark.parametrize("name", list(GRAPHS))
@pytest.mark.parametrize("form", ["band", "gather"])
def test_block_slabs_equal_the_edge_backend(
    name: str, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outputs and every gradient (input and parameters) equal the edge backend in fp64."""
    monkeypatch.setattr(block, "BLOCK_SIZES", (8,))
    g = GRAPHS[name]()
    fresh = ga.TokenGraph(g.edge_index, g.num_src, g.num_dst)  # no cached layout
    monkeypatch.setattr(slabs, "BAND_FORM", form == "band")
    chosen = block._slabs_of(block.block_layout(fresh, 8))
    assert chosen is not None and (chosen.table is None) == (form == "band")
    _check_block_equals_edge(fresh)


def test_block_diagonal_graph_takes_the_gather_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sequences of uneven lengths: tiles on diagonals -2..2, but at most 3 per row-block, so
    the gather form (a band of width 5 would pad beyond MAX_SLAB_PADDING)."""
    monkeypatch.setattr(block, "BLOCK_SIZES", (8,))
    g = ga.complete_graph(lengths=[8, 16, 5, 13])
    chosen = block._slabs_of(block.block_layout(g, 8))
    assert chosen is not None and chosen.table is not None and chosen.width == 3
    _check_block_equals_edge(g)


def test_block_band_second_order_equals_the_edge_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gradient penalty through the band slabs: d/dθ |∂L/∂x|² equals the edge backend's."""
    monkeypatch.setattr(block, "BLOCK_SIZES", (8,))
    g = ga.window_graph(27, 5)
    torch.manual_seed(1)
    blk = ga.GraphAttention(H * D, H, backend="block").double()
    edge = copy.deepcopy(blk)
    edge.backend = "edge"
    x = torch.randn(27, H * D, dtype=torch.float64)
    got = []
    for layer in (blk, edge):
        xx = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(layer(xx, g).pow(2).sum(), xx, create_graph=True)
        got.append(torch.autograd.grad(gx.pow(2).sum(), list(layer.parameters())))
    for a, b in zip(*got):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 70),
    window=st.integers(0, 12),
    causal=st.booleans(),
    dilation=st.integers(1, 3),
    tile=st.sampled_from([4, 8, 16]),
    drop=st.floats(0.0, 0.5),
    dup=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_banded_graphs_equal_the_edge_backend(
    n: int, window: int, causal: bool, dilation: int, tile: int, drop: float, dup: bool, seed: int
) -> None:
    """Windows with random edges removed (empty rows included) and duplicated, any tile."""
    g = ga.window_graph(n, window, causal=causal, dilation=dilation)
    gen = torch.Generator().manual_seed(seed)
    ei = g.edge_index[:, torch.rand(g.num_edges, generator=gen) >= drop]  # [2, E']
    if dup and ei.size(1):
        ei = torch.cat([ei, ei[:, : max(1, ei.size(1) // 3)]], 1)
    assume(ei.size(1) > 0)
    fresh = ga.TokenGraph(ei, n, n)
    old = block.BLOCK_SIZES
    block.BLOCK_SIZES = (tile,)
    try:
        _check_block_equals_edge(fresh, seed)
    finally:
        block.BLOCK_SIZES = old


def test_graph_used_in_inference_mode_then_for_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """The layout and slabs made under torch.inference_mode are kept apart from those a
    training call uses (an inference tensor cannot be saved for backward)."""
    monkeypatch.setattr(block, "BLOCK_SIZES", (8,))
    g = ga.window_graph(40, 5)
    layer = ga.GraphAttention(H * D, H, backend="block").double()
    x = torch.randn(40, H * D, dtype=torch.float64)
    with torch.inference_mode():  # e.g. an evaluation before the first epoch
        first = layer(x, g)
    torch.testing.assert_close(first, layer(x, g).detach(), atol=0, rtol=0)
    _check_block_equals_edge(g)
