"""Hop distances and shortest paths (gatattn/patterns/shortest_path.py) against networkx."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import networkx as nx
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import gatattn as ga

pytestmark = pytest.mark.usefixtures("one_thread")


@st.composite
def batches(draw: st.DrawFn) -> tuple[torch.Tensor, int, torch.Tensor, bool]:
    """A batch of 1-4 random graphs of 1-11 nodes (isolated nodes, self-loops and duplicate
    edges allowed), directed or stored with both directions."""
    directed = draw(st.booleans())
    sizes = draw(st.lists(st.integers(1, 11), min_size=1, max_size=4))
    edges, batch, start = [], [], 0
    for b, n in enumerate(sizes):
        pairs = draw(
            st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=2 * n)
        )
        for j, i in pairs:
            edges.append((start + j, start + i))
            if not directed:
                edges.append((start + i, start + j))
        batch += [b] * n
        start += n
    ei = torch.tensor(edges, dtype=torch.long).t().reshape(2, -1)
    return ei, start, torch.tensor(batch), directed


def _nx_distance(ei: torch.Tensor, batch: torch.Tensor, max_distance: int) -> list[int]:
    """dist in complete-graph edge order (graph by graph, target i major, source j minor)."""
    G = nx.DiGraph()
    G.add_nodes_from(range(batch.numel()))
    G.add_edges_from(ei.t().tolist())
    lengths = dict(nx.all_pairs_shortest_path_length(G))  # lengths[j][i]: hops j -> i
    out = []
    for b in batch.unique().tolist():
        nodes = (batch == b).nonzero().squeeze(1).tolist()
        for i in nodes:
            for j in nodes:
                d = lengths[j].get(i)
                out.append(max_distance + 1 if d is None else min(d, max_distance))
    return out


@given(batches(), st.integers(0, 6))
def test_distances_equal_networkx(data: tuple, max_distance: int) -> None:
    ei, n, batch, _ = data
    g, dist = ga.shortest_path_distances(ei, n, batch=batch, max_distance=max_distance)
    assert dist.dtype == torch.long and dist.shape == (g.num_edges,)
    assert dist.tolist() == _nx_distance(ei, batch, max_distance)
    sizes = torch.bincount(batch).tolist()
    ref = ga.complete_graph(lengths=sizes)
    assert g.edge_index.equal(ref.edge_index) and g.lengths == tuple(sizes)
    assert g.trusted_structure() == "complete"


@given(batches(), st.integers(1, 4))
def test_paths_are_shortest_paths(data: tuple, max_hops: int) -> None:
    ei, n, batch, _ = data
    res = ga.shortest_paths(ei, n, batch=batch, max_distance=30, max_hops=max_hops)
    assert res.path is not None and res.path.shape == (res.graph.num_edges, max_hops)
    src, dst = res.graph.edge_index
    for e in range(res.graph.num_edges):
        j, i, d = int(src[e]), int(dst[e]), int(res.distance[e])
        ids = [int(k) for k in res.path[e] if k >= 0]
        if d == 31:  # no path
            assert ids == []
            continue
        assert len(ids) == min(d, max_hops)
        assert (res.path[e, len(ids) :] == -1).all()
        node = j
        for k in ids:  # consecutive edges from j, each one hop closer to i
            assert int(ei[0, k]) == node
            node = int(ei[1, k])
        if d <= max_hops:
            assert node == i


def test_paths_on_a_tree_are_networkx_paths() -> None:
    """On a tree the shortest path is unique: the edge ids are those of networkx's path."""
    parent = [0, 0, 1, 1, 2, 4, 4, 6]  # node k + 1 hangs under parent[k]
    pairs = [(p, k + 1) for k, p in enumerate(parent)]
    ei = torch.tensor(pairs + [(b, a) for a, b in pairs]).t()
    res = ga.shortest_paths(ei, 9, max_hops=6)
    G = nx.DiGraph(ei.t().tolist())
    eid = {tuple(e): k for k, e in enumerate(ei.t().tolist())}
    assert res.path is not None
    for e, (j, i) in enumerate(res.graph.edge_index.t().tolist()):
        nodes = nx.shortest_path(G, j, i)
        want = [eid[(a, b)] for a, b in itertools.pairwise(nodes)][:6]
        assert [int(k) for k in res.path[e] if k >= 0] == want


def test_direction_follows_row0_to_row1() -> None:
    # 0 -> 1 -> 2: dist[i, j] = hops from j to i; nothing reaches 0
    _, dist = ga.shortest_path_distances(torch.tensor([[0, 1], [1, 2]]), 3, max_distance=5)
    assert dist.view(3, 3).tolist() == [[0, 6, 6], [1, 0, 6], [2, 1, 0]]


def test_isolated_nodes_one_node_graphs_and_no_edges() -> None:
    batch = torch.tensor([0, 1, 1, 2])
    g, dist = ga.shortest_path_distances(torch.tensor([[1], [2]]), 4, batch=batch, max_distance=3)
    assert g.lengths == (1, 2, 1)
    assert dist.tolist() == [0, 0, 4, 1, 0, 0]
    g, dist = ga.shortest_path_distances(torch.empty(2, 0, dtype=torch.long), 1)
    assert g.num_edges == 1 and dist.tolist() == [0]


def test_clipping_and_unreachable() -> None:
    ei = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])  # a directed path of 5 nodes, plus node 5
    _, dist = ga.shortest_path_distances(ei, 6, max_distance=2)
    d = dist.view(6, 6)
    assert d[4, 0] == 2 and d[2, 0] == 2 and d[1, 0] == 1  # 4 hops clipped to 2
    assert d[0, 4] == 3 and d[5, 0] == 3 and d[0, 5] == 3  # no path: max_distance + 1
    _, dist0 = ga.shortest_path_distances(ei, 6, max_distance=0)
    assert set(dist0.tolist()) == {0, 1}


def test_large_graph_and_many_sizes() -> None:
    """Several buckets (sizes 1..40) at once, and one graph wider than a bucket's chunk."""
    gen = torch.Generator().manual_seed(1)
    sizes = [*range(1, 41), 130]
    edges, start = [], 0
    for n in sizes:
        m = 2 * n
        e = torch.randint(0, n, (2, m), generator=gen) + start
        edges.append(e)
        start += n
    ei = torch.cat(edges, 1)
    batch = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    _, dist = ga.shortest_path_distances(ei, start, batch=batch, max_distance=7)
    assert dist.tolist() == _nx_distance(ei, batch, 7)
    res = ga.shortest_paths(ei, start, batch=batch, max_distance=7, max_hops=2)
    assert res.distance.equal(dist)


@st.composite
def long_graphs(draw: st.DrawFn) -> tuple[torch.Tensor, int, torch.Tensor]:
    """A batch of 1-3 graphs of 1-60 nodes: a directed or two-way path (long distances, far
    beyond max_distance) plus a few random edges, some isolated nodes."""
    sizes = draw(st.lists(st.integers(1, 60), min_size=1, max_size=3))
    edges, batch, start = [], [], 0
    for b, n in enumerate(sizes):
        two_way = draw(st.booleans())
        chain = draw(st.integers(0, n - 1))  # nodes 0..chain form a path
        pairs = [(k, k + 1) for k in range(chain)]
        pairs += draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=3))
        for j, i in pairs:
            edges.append((start + j, start + i))
            if two_way:
                edges.append((start + i, start + j))
        batch += [b] * n
        start += n
    return torch.tensor(edges, dtype=torch.long).t().reshape(2, -1), start, torch.tensor(batch)


@given(long_graphs(), st.integers(0, 5))
def test_long_distances_equal_networkx(data: tuple, max_distance: int) -> None:
    """Distances beyond max_distance are clipped, and "no path" stays apart from "far"."""
    ei, n, batch = data
    _, dist = ga.shortest_path_distances(ei, n, batch=batch, max_distance=max_distance)
    assert dist.tolist() == _nx_distance(ei, batch, max_distance)
    res = ga.shortest_paths(ei, n, batch=batch, max_distance=max_distance, max_hops=1)
    assert res.distance.equal(dist)


def _ops(fn: Callable[[], object]) -> int:
    """How many aten operators ``fn`` dispatches."""

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


@pytest.mark.parametrize("two_way", [False, True])
def test_search_stops_at_max_distance(two_way: bool) -> None:
    """A chain of P nodes with max_distance=3 takes O(max_distance + log P) search steps, not
    O(P): doubling the chain adds a constant number of operators (a few, not P more levels)."""

    def chain(P: int) -> Callable[[], object]:
        ei = torch.stack([torch.arange(P - 1), torch.arange(1, P)])  # [2, P - 1]
        if two_way:
            ei = torch.cat([ei, ei.flip(0)], 1)
        return lambda: ga.shortest_path_distances(ei, P, max_distance=3)

    small, large = _ops(chain(100)), _ops(chain(200))
    assert large - small <= 30, (small, large)
    _, dist = chain(200)()  # type: ignore[misc]
    d = dist.view(200, 200)
    assert d[199, 0] == 3 and d[3, 0] == 3 and d[2, 0] == 2
    assert d[0, 199] == (3 if two_way else 4)  # far (clipped), or no path (max_distance + 1)


def test_path_inputs() -> None:
    ei = torch.tensor([[0, 1, 2], [1, 2, 3]])
    feats = torch.arange(3.0).unsqueeze(1) + 1  # edge k has feature k + 1
    res = ga.shortest_paths(ei, 4, max_hops=2)
    inp = res.path_inputs(feats)
    assert set(inp) == {"distance", "path_attr", "path_len"}
    e = 3 * 4 + 0  # target 3, source 0: edges 0, 1, 2; first two kept
    assert inp["path_attr"][e].tolist() == [[1.0], [2.0]] and int(inp["path_len"][e]) == 2
    assert inp["path_attr"][0].tolist() == [[0.0], [0.0]] and int(inp["path_len"][0]) == 0
    assert res.path_inputs(feats.squeeze(1))["path_attr"].shape == (16, 2, 1)


# ------------------------------------------------------------------ bad input
EI = torch.tensor([[0, 1], [1, 2]])


@pytest.mark.parametrize("bad", [-1, 2.0, True, "3", None])
def test_bad_max_distance(bad: object) -> None:
    with pytest.raises(ValueError, match="max_distance must be an int >= 0"):
        ga.shortest_path_distances(EI, 3, max_distance=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [2**63 - 1, 2**64])
def test_max_distance_beyond_int64(bad: int) -> None:
    """ "No path" is coded max_distance + 1 in a LongTensor: it must fit."""
    with pytest.raises(ValueError, match=rf"max_distance must be at most 2\*\*63 - 2.*{bad}"):
        ga.shortest_path_distances(EI, 3, max_distance=bad)


def test_largest_max_distance() -> None:
    _, dist = ga.shortest_path_distances(EI, 3, max_distance=2**63 - 2)
    assert dist.view(3, 3).tolist() == [[0, 2**63 - 1, 2**63 - 1], [1, 0, 2**63 - 1], [2, 1, 0]]


@pytest.mark.parametrize("bad", [-2, 1.5])
def test_bad_max_hops(bad: object) -> None:
    with pytest.raises(ValueError, match="max_hops must be an int >= 0"):
        ga.shortest_paths(EI, 3, max_hops=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -3, 2.0])
def test_bad_num_nodes(bad: object) -> None:
    with pytest.raises(ValueError, match="num_nodes must be an int >= 1"):
        ga.shortest_path_distances(EI, bad)  # type: ignore[arg-type]


def test_edge_index_out_of_range() -> None:
    with pytest.raises(ValueError, match="edge_index has target index 2"):
        ga.shortest_path_distances(EI, 2)
    with pytest.raises(TypeError, match="edge_index must have dtype torch.long"):
        ga.shortest_path_distances(EI.int(), 3)


def test_unsorted_batch() -> None:
    with pytest.raises(ValueError, match="batch must be sorted"):
        ga.shortest_path_distances(EI, 4, batch=torch.tensor([0, 1, 0, 1]))


def test_batch_disagrees_with_edge_index() -> None:
    with pytest.raises(ValueError, match=r"batch disagrees with edge_index: edge 1 \(1 -> 2\)"):
        ga.shortest_path_distances(EI, 3, batch=torch.tensor([0, 0, 1]))


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        (torch.tensor([0, 0]), r"batch must be a LongTensor \[num_nodes=3\], got \[2\]"),
        (torch.tensor([[0, 0, 0]]), r"batch must be a LongTensor \[num_nodes=3\]"),
        ([0, 0, 0], "got list"),
        (torch.tensor([0.0, 0.0, 0.0]), "batch must have dtype torch.long"),
        (torch.tensor([-1, 0, 0]), "batch holds a negative graph id"),
    ],
)
def test_malformed_batch(batch: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ga.shortest_path_distances(EI, 3, batch=batch)  # type: ignore[arg-type]


def test_gaps_in_batch_ids_are_skipped() -> None:
    g, dist = ga.shortest_path_distances(EI, 3, batch=torch.tensor([2, 2, 2]))
    assert g.lengths == (3,) and dist.numel() == 9


def test_path_inputs_errors() -> None:
    res = ga.shortest_paths(EI, 3)
    with pytest.raises(ValueError, match="path_inputs needs paths"):
        res.path_inputs(torch.ones(2, 1))
    res = ga.shortest_paths(EI, 3, max_hops=2)
    with pytest.raises(ValueError, match=r"edge_attr must be \[E_in, F\]"):
        res.path_inputs(torch.ones(2, 1, 1))
    with pytest.raises(ValueError, match="edge_attr has 1 rows but the paths use input edge 1"):
        res.path_inputs(torch.ones(1, 3))
    for dtype in (torch.bool, torch.long):
        with pytest.raises(TypeError, match=f"edge_attr must be floating point.*{dtype}"):
            res.path_inputs(torch.ones(2, 3, dtype=dtype))


def test_meta_edge_index_is_refused() -> None:
    for fn in (ga.shortest_paths, ga.shortest_path_distances):
        with pytest.raises(ValueError, match="edge_index is on the meta device"):
            fn(EI.to("meta"), 3)


def test_path_search_in_small_chunks_gives_the_same_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    from gatattn.patterns import shortest_path

    gen = torch.Generator().manual_seed(5)
    ei = torch.randint(0, 30, (2, 70), generator=gen)
    whole = ga.shortest_paths(ei, 30, max_hops=4)
    monkeypatch.setattr(shortest_path, "_PATH_CHUNK", 100)  # fewer than one graph's P³
    chunked = ga.shortest_paths(ei, 30, max_hops=4)
    assert whole.path is not None and chunked.path is not None
    assert chunked.path.equal(whole.path) and chunked.distance.equal(whole.distance)
