"""``sink_window_graph``: StreamingLLM's sinks plus a causal recent window, against a written-out
mask N(i) = {j ≤ i : j < s or i − j < w}."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gatattn as ga


def written_out(lengths: list[int], s: int, w: int) -> torch.Tensor:
    """The mask of the equation, one (i, j) at a time, block-diagonal over ``lengths``."""
    n = sum(lengths)
    mask = torch.zeros(n, n, dtype=torch.bool)
    start = 0
    for L in lengths:
        for i in range(L):
            for j in range(i + 1):
                mask[start + i, start + j] = j < s or i - j < w
        start += L
    return mask


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 13), min_size=1, max_size=4),
    s=st.integers(0, 5),
    w=st.integers(1, 7),
)
def test_equals_the_written_out_mask(lengths: list[int], s: int, w: int) -> None:
    g = ga.sink_window_graph(lengths=lengths, num_sinks=s, window=w)
    assert torch.equal(g.to_dense_mask(), written_out(lengths, s, w))
    src, dst = g.edge_index
    key = dst * g.num_src + src
    assert bool((key[1:] > key[:-1]).all())  # sorted by target, then source; no duplicates
    pos = torch.cat([torch.arange(L) for L in lengths])
    assert torch.equal(g.in_degree(), torch.clamp(pos + 1, max=s + w))
    assert g.structure == "sink_window" and g.params == {"num_sinks": s, "window": w}
    assert g.lengths == tuple(lengths)


def test_one_sequence_and_special_cases() -> None:
    g = ga.sink_window_graph(10, num_sinks=2, window=3)
    assert g.lengths is None and torch.equal(g.to_dense_mask(), written_out([10], 2, 3))
    # no sinks: the causal window; a window as long as the sequence: the causal graph
    no_sinks = ga.sink_window_graph(9, num_sinks=0, window=3)
    assert torch.equal(no_sinks.to_dense_mask(), ga.window_graph(9, 2, causal=True).to_dense_mask())
    full = ga.sink_window_graph(9, num_sinks=1, window=9)
    assert torch.equal(full.to_dense_mask(), ga.causal_graph(9).to_dense_mask())


def test_a_list_is_read_as_lengths_so_a_partial_is_a_graph_fn() -> None:
    fn = functools.partial(ga.sink_window_graph, num_sinks=2, window=3)
    a, b = fn([6, 4]), ga.sink_window_graph(lengths=[6, 4], num_sinks=2, window=3)
    assert torch.equal(a.edge_index, b.edge_index) and a.lengths == b.lengths == (6, 4)
    assert torch.equal(fn(torch.tensor([6, 4])).edge_index, b.edge_index)


def test_prefix_of_the_graph_is_the_graph_of_the_prefix() -> None:
    """Why generation with and without the KV cache agree under this swap."""
    big = ga.sink_window_graph(12, num_sinks=2, window=4).to_dense_mask()
    for n in range(1, 12):
        assert torch.equal(
            ga.sink_window_graph(n, num_sinks=2, window=4).to_dense_mask(), big[:n, :n]
        )


def test_errors() -> None:
    with pytest.raises(ValueError, match="sink_window_graph needs window=<int >= 1>"):
        ga.sink_window_graph(8)
    with pytest.raises(ValueError, match="window must be an int >= 1, got 0"):
        ga.sink_window_graph(8, window=0)
    with pytest.raises(ValueError, match="num_sinks must be an int >= 0, got -1"):
        ga.sink_window_graph(8, num_sinks=-1, window=2)
    with pytest.raises(ValueError, match="takes either n or lengths"):
        ga.sink_window_graph([3, 4], window=2, lengths=[3, 4])
    with pytest.raises(ValueError, match="takes either n or lengths"):
        ga.sink_window_graph(window=2)
    with pytest.raises(ValueError, match="sink_window_graph would create 9,963 edges, more than"):
        ga.sink_window_graph(1111, num_sinks=4, window=5, max_edges=100)
