"""A raw edge_index passed to a layer is made into a TokenGraph once and reused only while it
holds the same edges (gatattn/graph.py, ``_RawGraphs``): every way of changing the tensor, or
passing another one, still gives the right answer (the dense formula in fp64, at 1e-10)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gatattn as ga
from gatattn import graph as graph_mod
from gatattn.reference import dense_reference

N, C, H = 7, 15, 3  # D = 5
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    graph_mod.RAW_GRAPHS.clear()


def _layer() -> ga.GraphAttention:
    torch.manual_seed(0)
    return ga.GraphAttention(C, H).double()


def _x(n: int = N) -> torch.Tensor:
    return torch.randn(n, C, dtype=torch.float64, generator=torch.Generator().manual_seed(n))


def _edges() -> torch.Tensor:
    return torch.tensor([[0, 1, 2, 3, 4, 5, 6, 2, 2], [1, 2, 3, 4, 5, 6, 0, 5, 5]])


def _check(layer: ga.GraphAttention, x: torch.Tensor, ei: torch.Tensor) -> None:
    """layer(x, ei): output and input gradient equal the dense formula on a fresh graph of a
    copy of the edges (fp64, 1e-10)."""
    x = x.detach().requires_grad_()
    got = layer(x, ei)
    (gx,) = torch.autograd.grad(got.square().sum(), x)
    fresh = ga.TokenGraph(ei.clone(), x.size(0), x.size(0))
    want = dense_reference(layer, x, fresh).out
    (wx,) = torch.autograd.grad(want.square().sum(), x)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    torch.testing.assert_close(gx, wx, atol=1e-10, rtol=0)


def test_the_same_tensor_reuses_one_graph_and_its_cache() -> None:
    ei = _edges()
    a = ga.as_token_graph(ei, N, N)
    assert ga.as_token_graph(ei, N, N) is a
    assert len(graph_mod.RAW_GRAPHS) == 1
    layer = _layer()
    _check(layer, _x(), ei)
    table = a.derived(("dispatch", "probe"), dict)  # the graph's cache survives the calls
    _check(layer, _x(), ei)
    assert a.derived(("dispatch", "probe"), dict) is table


def test_the_graph_holds_a_private_copy_of_the_edges() -> None:
    ei = _edges()
    g = ga.as_token_graph(ei, N, N)
    assert g.edge_index is not ei and torch.equal(g.edge_index, ei)
    g.edge_index[0, 0] = 3  # a write into the graph's edges is not a write into the user's
    assert int(ei[0, 0]) == 0
    assert ga.as_token_graph(ei, N, N) is not g  # and the next call does not trust it
    _check(_layer(), _x(), ei)


@pytest.mark.parametrize("how", ["in place", "through .data", "through numpy"])
def test_every_write_to_the_tensor_gives_a_new_graph(how: str) -> None:
    ei, layer, x = _edges(), _layer(), _x()
    first = ga.as_token_graph(ei, N, N)
    _check(layer, x, ei)
    if how == "in place":
        ei[1, 7] = 0
    elif how == "through .data":
        ei.data[1, 7] = 0  # .data has its own version counter: only the values tell
    else:
        ei.numpy()[1, 7] = 0
    assert ga.as_token_graph(ei, N, N) is not first
    _check(layer, x, ei)


def test_a_write_that_breaks_the_edges_is_refused_as_before() -> None:
    ei = _edges()
    layer, x = _layer(), _x()
    _check(layer, x, ei)
    ei.data[0, 3] = N + 2  # out of range, unseen by the version counter
    with pytest.raises(ValueError, match=f"source index {N + 2} but there are only {N} source"):
        layer(x, ei)


def test_another_tensor_with_the_same_values_and_other_node_counts() -> None:
    ei, layer = _edges(), _layer()
    _check(layer, _x(), ei)
    same = ei.clone()
    assert ga.as_token_graph(same, N, N) is not ga.as_token_graph(ei, N, N)
    _check(layer, _x(), same)
    bigger = _x(N + 4)  # the same edges among more nodes: targets 7..10 have no edges
    g = ga.as_token_graph(ei, N + 4, N + 4)
    assert (g.num_src, g.num_dst) == (N + 4, N + 4)
    _check(layer, bigger, ei)
    _check(layer, _x(), ei)
    assert len(graph_mod.RAW_GRAPHS) == 3


def test_a_transposed_view_and_a_bipartite_graph() -> None:
    pairs = _edges().t().contiguous()  # [E, 2]: its transpose is a non-contiguous edge_index
    ei = pairs.t()
    assert not ei.is_contiguous()
    _check(_layer(), _x(), ei)
    pairs[0, 0] = 4  # a write through the base tensor changes the view
    _check(_layer(), _x(), ei)
    cross = torch.tensor([[0, 3, 3, 1], [0, 0, 1, 1]])  # 4 sources, 2 targets
    g = ga.as_token_graph(cross, 4, 2)
    assert (g.num_src, g.num_dst) == (4, 2)
    assert ga.as_token_graph(cross, 4, 2) is g


def test_entries_hold_no_reference_to_their_tensor() -> None:
    """The cache keeps the tensor neither alive nor weakly referenced (swap_tensors refuses
    both); a later tensor at the same id is judged by its values (test_adversarial_raw_graphs)."""
    ei = _edges()
    ga.as_token_graph(ei, N, N)
    assert len(graph_mod.RAW_GRAPHS) == 1 and weakref.getweakrefcount(ei) == 0
    ref = weakref.ref(ei)
    del ei
    gc.collect()
    assert ref() is None


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graph_mod._RawGraphs, "MAX_ENTRIES", 4)
    kept = [_edges() for _ in range(9)]
    graphs = [ga.as_token_graph(t, N, N) for t in kept]
    assert len(graph_mod.RAW_GRAPHS) == 4
    assert ga.as_token_graph(kept[-1], N, N) is graphs[-1]  # the most recent stay
    assert ga.as_token_graph(kept[0], N, N) is not graphs[0]  # the oldest left
    monkeypatch.setattr(graph_mod._RawGraphs, "MAX_EDGES", 20)  # 9 edges each: two fit
    graph_mod.RAW_GRAPHS.clear()
    for t in kept[:5]:
        ga.as_token_graph(t, N, N)
    assert len(graph_mod.RAW_GRAPHS) == 2
    monkeypatch.setattr(graph_mod._RawGraphs, "MAX_EDGES", 5)  # larger graphs: not cached
    assert ga.as_token_graph(kept[0], N, N) is not ga.as_token_graph(kept[0], N, N)


def test_tensor_subclasses_are_not_cached() -> None:
    class Marked(torch.Tensor):
        pass

    ei = _edges().as_subclass(Marked)
    assert ga.as_token_graph(ei, N, N) is not ga.as_token_graph(ei, N, N)
    assert len(graph_mod.RAW_GRAPHS) == 0


def test_bad_edge_index_errors_are_unchanged() -> None:
    with pytest.raises(TypeError, match="dtype torch.long"):
        ga.as_token_graph(_edges().int(), N, N)
    with pytest.raises(ValueError, match=r"shape \[2, E\], got \[3, 2\]"):
        ga.as_token_graph(torch.zeros(3, 2, dtype=torch.long), N, N)
    with pytest.raises(ValueError, match=r"shape \[2, E\], got \[6\]"):
        ga.as_token_graph(torch.zeros(6, dtype=torch.long), N, N)
    assert len(graph_mod.RAW_GRAPHS) == 0


@given(
    st.lists(st.tuples(st.integers(0, N - 1), st.integers(0, N - 1)), min_size=1, max_size=20),
    st.lists(st.tuples(st.integers(0, 1), st.integers(0, 19), st.integers(0, N - 1)), max_size=4),
    st.sampled_from(["in place", ".data"]),
)
def test_random_graphs_and_writes(
    pairs: list[tuple[int, int]], writes: list[tuple[int, int, int]], how: str
) -> None:
    """Random edges (duplicates and self-loops included), then random writes to them; after
    each write the layer on the raw tensor equals the dense formula on a fresh copy."""
    graph_mod.RAW_GRAPHS.clear()
    ei = torch.tensor(pairs).t().contiguous()
    layer, x = _layer(), _x()
    _check(layer, x, ei)
    for row, col, value in writes:
        col %= ei.size(1)
        target = ei if how == "in place" else ei.data
        target[row, col] = value
        _check(layer, x, ei)


@pytest.mark.parametrize("backend", ["auto", "edge"])
def test_inference_mode_before_and_after_training(backend: str) -> None:
    """The cache is not used under torch.inference_mode (a copy, or a backend's cached value,
    made there would be an inference tensor, which a later training call could not save for
    backward): a new graph per call, as before. Every call equals the dense formula."""
    ei, x = _edges(), _x()
    torch.manual_seed(0)
    layer = ga.GraphAttention(C, H, backend=backend).double()
    want = dense_reference(layer, x, ga.TokenGraph(ei.clone(), N, N)).out.detach()
    with torch.inference_mode():
        torch.testing.assert_close(layer(x, ei), want, atol=1e-10, rtol=0)
    assert len(graph_mod.RAW_GRAPHS) == 0
    _check(layer, x, ei)  # training after inference: made now, from a normal tensor
    made = ga.as_token_graph(ei, N, N)
    with torch.inference_mode():
        assert ga.as_token_graph(ei, N, N) is not made
        torch.testing.assert_close(layer(x, ei), want, atol=1e-10, rtol=0)
    _check(layer, x, ei)
