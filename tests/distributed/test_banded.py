"""BandedGraph, shard_sizes and plan_shards (gatattn.distributed), in one process.

The halo and the slice graph are checked against the whole graph's edges: the targets [a, b)
of the global graph read exactly the sources [a − h_l, b + h_r), and the slice graph restricted
to those targets is the global graph restricted to them, shifted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gatattn as ga
import gatattn.distributed as gd


@st.composite
def banded_and_slice(draw: st.DrawFn) -> tuple[gd.BandedGraph, int, int]:
    kind = draw(st.sampled_from(gd.KINDS))
    L = draw(st.integers(1, 90))
    if kind == "block_banded":
        s, W = draw(st.integers(1, 12)), draw(st.sampled_from([1, 3, 5]))
        graph = gd.BandedGraph(kind, L, block_size=s, window_blocks=W)
    else:
        w, d = draw(st.integers(0, 9)), draw(st.integers(1, 3))
        graph = gd.BandedGraph(kind, L, window=w, dilation=d)
    a = draw(st.integers(0, L - 1))
    b = draw(st.integers(a + 1, L))
    return graph, a, b


def _restricted(ei: torch.Tensor, a: int, b: int) -> torch.Tensor:
    keep = (ei[1] >= a) & (ei[1] < b)
    return ei[:, keep]  # [2, E_ab]


@given(banded_and_slice())
def test_halo_and_slice_graph_match_the_whole_graph(case) -> None:
    graph, a, b = case
    whole = graph.graph()
    want = _restricted(whole.edge_index, a, b)  # [2, E_ab] edges into [a, b)
    left, right = graph.halo(a, b)
    first, end = a - left, b + right
    assert 0 <= first <= a <= b <= end <= graph.length
    if want.numel():  # the halo is what the targets read, never less
        assert int(want[0].min()) >= first and int(want[0].max()) < end
    local = graph.local_graph(a, b)
    assert local.num_dst == end - first
    got = _restricted(local.edge_index, left, left + b - a) + first  # [2, E_ab] global indices
    key = lambda ei: sorted(map(tuple, ei.t().tolist()))  # noqa: E731
    assert key(got) == key(want)


def test_halo_values() -> None:
    window = gd.BandedGraph("window", 100, window=8, dilation=2)
    assert window.halo(0, 30) == (0, 16) and window.halo(30, 60) == (16, 16)
    assert window.halo(90, 100) == (16, 0) and window.halo(5, 99) == (5, 1)
    causal = gd.BandedGraph("causal_window", 100, window=8)
    assert causal.halo(30, 60) == (8, 0)
    band = gd.BandedGraph("block_banded", 100, block_size=10, window_blocks=3)
    # targets 35..59 are in blocks 3..5; they read blocks 2..6 = tokens 20..69
    assert band.halo(35, 60) == (15, 10)
    assert band.describe() == "block_banded(L=100, s=10, W=3)"
    assert window.describe() == "window(L=100, w=8, d=2)"


def test_whole_graph_is_the_builders_graph() -> None:
    g = gd.BandedGraph("window", 50, window=3, dilation=2).graph()
    assert torch.equal(g.edge_index, ga.window_graph(50, 3, dilation=2).edge_index)
    c = gd.BandedGraph("causal_window", 50, window=3).graph()
    assert torch.equal(c.edge_index, ga.window_graph(50, 3, causal=True).edge_index)
    b = gd.BandedGraph("block_banded", 50, block_size=7, window_blocks=3).graph()
    bb = ga.bigbird_graph(50, block_size=7, global_blocks=0, random_blocks=0, seed=0)
    assert torch.equal(b.edge_index, bb.edge_index)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "ring", "length": 9}, "kind must be one of ['window', 'causal_window', "),
        ({"kind": "window", "length": 0}, "length must be an int >= 1, got 0"),
        ({"kind": "window", "length": 9, "window": -1}, "window must be an int >= 0, got -1"),
        ({"kind": "window", "length": 9, "dilation": 0}, "dilation must be an int >= 1, got 0"),
        ({"kind": "window", "length": 9, "block_size": 3}, "a window graph takes window and"),
        ({"kind": "block_banded", "length": 9}, "block_size must be an int >= 1, got 0"),
        (
            {"kind": "block_banded", "length": 9, "block_size": 3, "window_blocks": 2},
            "window_blocks must be odd, got 2",
        ),
        (
            {"kind": "block_banded", "length": 9, "block_size": 3, "window_blocks": 3, "window": 2},
            "a block_banded graph takes block_size and window_blocks, not window (2)",
        ),
        ({"kind": "window", "length": True}, "length must be an int >= 1, got True"),
    ],
)
def test_bad_graph_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        gd.BandedGraph(**kwargs)
    assert message in str(err.value)


def test_halo_needs_a_slice() -> None:
    g = gd.BandedGraph("window", 10, window=2)
    with pytest.raises(ValueError, match=r"need 0 <= start < stop <= length=10, got \[4, 4\)"):
        g.halo(4, 4)
    with pytest.raises(ValueError, match=r"got \[3, 11\)"):
        g.local_graph(3, 11)


def test_shard_sizes() -> None:
    assert gd.shard_sizes(10, 4) == [3, 3, 2, 2]
    assert gd.shard_sizes(65536, 4) == [16384] * 4
    assert sum(gd.shard_sizes(999, 7)) == 999
    with pytest.raises(ValueError, match="cannot split length=3 rows over 4 ranks"):
        gd.shard_sizes(3, 4)
    with pytest.raises(ValueError, match="world_size must be a positive int, got 0"):
        gd.shard_sizes(3, 0)
    with pytest.raises(ValueError, match="length must be a positive int, got 2.5"):
        gd.shard_sizes(2.5, 1)  # type: ignore[arg-type]


def test_plan_shards() -> None:
    g = gd.BandedGraph("window", 100, window=10)
    plans = gd.plan_shards(g, [30, 20, 50])
    assert [tuple(p) for p in plans] == [(0, 30, 0, 10), (30, 50, 10, 10), (50, 100, 10, 0)]
    assert plans[1].halo == (10, 10) and plans[1].start == 30
    with pytest.raises(ValueError, match="sizes\\[1\\] must be a positive int \\(rows of rank 1"):
        gd.plan_shards(g, [50, 0, 50])
    with pytest.raises(ValueError, match="sum to 90, not to the graph's length 100"):
        gd.plan_shards(g, [45, 45])
    with pytest.raises(ValueError) as err:
        gd.plan_shards(g, [45, 5, 50])
    assert "rank 0 needs a right halo of 10 tokens, more than the 5 tokens of rank 1" in str(
        err.value
    )
    # a causal window needs no right halo, so a short last shard is fine
    causal = gd.BandedGraph("causal_window", 100, window=10)
    assert gd.plan_shards(causal, [95, 5])[1].halo == (10, 0)


def test_sharded_sequence_needs_a_process_group() -> None:
    with pytest.raises(RuntimeError, match="call dist.init_process_group first"):
        gd.ShardedSequence(gd.BandedGraph("window", 10, window=1))


def test_package_imports_only_torch_distributed_basics() -> None:
    """gatattn.distributed (loaded by ``import gatattn``) imports, from outside gatattn, only
    the standard library, torch and torch.distributed's core (point-to-point and object
    collectives): no FSDP, no torch.distributed.checkpoint, no DTensor. (torch_geometric's
    import of torch._dynamo already loads parts of FSDP; this package adds nothing to that.)"""
    allowed = {"__future__", "collections.abc", "dataclasses", "numbers", "typing", "torch",
               "torch.distributed", "torch.autograd.function"}  # fmt: skip
    found = set()
    for path in Path(gd.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
    assert found - allowed == set()
    assert {"torch.distributed", "torch"} <= found
