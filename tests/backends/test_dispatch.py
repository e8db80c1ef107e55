"""Dispatch picks the intended backend for each builder's graph, and explains why.

Sizes are realistic (N = 1024) because the choice depends on the tile density and edge count;
only graphs are built here, nothing is run through attention except where stated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import torch

import gatattn as ga
from gatattn.backends import BACKENDS, Problem, attend, backend_names, select_backend
from gatattn.backends.dispatch import MIN_BLOCK_EDGES

N = 1024


def _points() -> torch.Tensor:
    return torch.rand(N, 3, generator=torch.Generator().manual_seed(0))  # [N, 3]


def _raw_window() -> ga.TokenGraph:
    """A window graph given as a raw edge_index: no tag, so only its tile density counts."""
    return ga.TokenGraph(ga.window_graph(N, 32).edge_index, N, N)


def _raw_random() -> ga.TokenGraph:
    g = torch.Generator().manual_seed(1)
    return ga.TokenGraph(torch.randint(0, N, (2, 40_000), generator=g), N, N)


#: builder -> intended backend on CPU for the scaled_dot score.
INTENDED: dict[str, tuple[Callable[[], ga.TokenGraph], str]] = {
    "complete": (lambda: ga.complete_graph(N), "dense"),
    "complete_batch": (lambda: ga.complete_graph(lengths=[300, 724]), "dense"),
    "causal": (lambda: ga.causal_graph(N), "dense"),
    "causal_batch": (lambda: ga.causal_graph(lengths=[1000, 24]), "dense"),
    "bipartite": (lambda: ga.bipartite_graph(100, N), "dense"),
    "window": (lambda: ga.window_graph(N, 32), "block"),
    "window_dilated": (lambda: ga.window_graph(N, 16, dilation=2), "block"),
    "window_causal": (lambda: ga.window_graph(N, 32, causal=True), "block"),
    "global": (lambda: ga.global_graph(N, [0, 1], window=32), "block"),
    # 55 % of the 1024² grid: one masked SDPA call beats 16 x 16 tiles
    "bigbird": (lambda: ga.bigbird_graph(N, block_size=64, seed=0), "dense"),
    "block": (lambda: ga.block_graph(N, 64), "block"),
    "strided": (lambda: ga.strided_graph(N, 32), "block"),
    "fixed": (lambda: ga.fixed_graph(N, 32), "block"),
    "star": (lambda: ga.star_graph(N), "edge"),  # E = 5116, tile density 0.06
    "knn": (lambda: ga.knn_graph(_points(), 16), "edge"),
    "radius": (lambda: ga.radius_graph(_points(), 0.2), "edge"),
    "raw_window": (_raw_window, "block"),
    "raw_random": (_raw_random, "edge"),
    "small_window": (lambda: ga.window_graph(64, 4), "edge"),  # E < MIN_BLOCK_EDGES
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(
    score: ga.ScoreFunction, g: ga.TokenGraph, q: torch.Tensor, dropout: bool = False
) -> Problem:
    """A Problem shaped like ``q`` [0, H, D] (dispatch reads device, dtype and D only)."""
    return Problem(q, q, q, g, score, dropout=0.5 if dropout else 0.0, training=dropout)


def _explain(score: str, g: ga.TokenGraph | torch.Tensor, backend: str = "auto") -> str:
    layer = ga.GraphAttention(24, 3, score=score, backend=backend)
    n = g.num_dst if isinstance(g, ga.TokenGraph) else int(g.max()) + 1
    return layer.explain_backend(torch.zeros(n, 24), g)


@pytest.mark.parametrize("name", list(INTENDED))
def test_auto_picks_the_intended_backend(name: str) -> None:
    build, want = INTENDED[name]
    g = build()
    q = torch.empty(0, 3, 8)  # [0, H, D]: dispatch reads device, dtype and D
    got, reason = select_backend("auto", _problem(ga.make_score("scaled_dot", 3, 8), g, q))
    assert got == want, reason
    if g.structure != "bipartite":  # explain_backend takes self-attention input
        assert _explain("scaled_dot", g).startswith(f"{want}: ")


def test_raw_edge_index_goes_dense_only_once_checked() -> None:
    """A complete graph given as a raw edge_index has no tag: the scatter plan checks its
    edges (no repeats, none across sequences) before SDPA runs it with the edges as mask."""
    ei = ga.complete_graph(300).edge_index
    assert _explain("scaled_dot", ei).startswith("dense: graph inside its sequences")
    doubled = torch.cat([ei, ei[:, :5]], 1)  # five repeated edges: SDPA would count them once
    assert not _explain("scaled_dot", doubled).startswith("dense")
    with pytest.raises(ValueError, match=r"backend='dense' cannot run .* duplicate edges"):
        _explain("scaled_dot", doubled, backend="dense")
    crossing = ga.TokenGraph(torch.tensor([[0, 3], [3, 0]]), 6, 6, lengths=[3, 3])
    with pytest.raises(ValueError, match="an edge joins two sequences"):
        _explain("scaled_dot", crossing, backend="dense")


@pytest.mark.parametrize(
    ("score", "graph", "want"),
    [
        ("additive", "complete", "block"),  # no SDPA form, but a block form
        ("cosine", "window", "block"),
        ("gatv2", "window", "edge"),  # no block form: edge
        ("gatv2", "complete", "edge"),
        ("scaled_dot+alibi", "causal", "dense"),  # position biases go in as an SDPA float mask
        ("dot+relative_position", "window", "block"),
    ],
)
def test_auto_follows_the_score(score: str, graph: str, want: str) -> None:
    assert _explain(score, INTENDED[graph][0]()).startswith(f"{want}: ")


def test_edge_feature_bias_stays_on_the_edge_backend() -> None:
    g = ga.window_graph(N, 32)
    score = ga.make_score("scaled_dot", 3, 8) + ga.EdgeFeatureBias(4, 3)
    assert BACKENDS["block"].supports(_problem(score, g, torch.empty(0, 3, 8)))  # a reason
    got, reason = select_backend("auto", _problem(score, g, torch.empty(0, 3, 8)))
    assert got == "edge" and "edge_features" in reason


def test_flex_is_cuda_only() -> None:
    g = ga.window_graph(N, 32)
    q = torch.empty(0, 3, 16)
    why = BACKENDS["flex"].supports(_problem(ga.make_score("scaled_dot", 3, 16), g, q))
    assert any("needs CUDA" in w for w in why), why
    with pytest.raises(ValueError, match=r"backend='flex' cannot run score 'scaled_dot'.*CUDA"):
        _explain("scaled_dot", g, backend="flex")


@pytest.mark.gpu
def test_auto_picks_flex_on_cuda() -> None:
    g = ga.window_graph(N, 32).to("cuda")
    q = torch.empty(0, 4, 16, device="cuda")
    assert select_backend("auto", _problem(ga.make_score("scaled_dot", 4, 16), g, q))[0] == "flex"
    assert select_backend("auto", _problem(ga.make_score("cosine", 4, 16), g, q))[0] == "block"
    sd = ga.make_score("scaled_dot", 4, 16)
    assert select_backend("auto", _problem(sd, g, q.double()))[0] == "block"
    dropout = select_backend("auto", _problem(ga.make_score("dot", 4, 16), g, q, True))
    assert dropout[0] == "block"


def test_forced_backends_are_reported() -> None:
    g = ga.window_graph(N, 32)
    for name in ("edge", "block"):
        assert _explain("scaled_dot", g, backend=name) == f"{name}: forced by backend={name!r}"


def test_unknown_backend_names_raise() -> None:
    assert backend_names() == ("auto", "dense", "flex", "block", "edge")  # priority order
    assert all(BACKENDS[name].name == name for name in BACKENDS)  # the registry is a dict
    q = torch.empty(0, 3, 8)
    p = _problem(ga.make_score("dot", 3, 8), ga.complete_graph(5), q)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        ga.GraphAttention(24, 3, backend="fast")
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        select_backend("fast", p)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        attend(p, "fast")


def test_decision_is_logged_at_debug_level(caplog: pytest.LogCaptureFixture) -> None:
    g = ga.complete_graph(7)
    layer = ga.GraphAttention(24, 3)
    with caplog.at_level(logging.DEBUG, logger="gatattn.dispatch"):
        layer(torch.randn(7, 24), g)
    assert any("backend dense for score 'scaled_dot'" in r.getMessage() for r in caplog.records)


def test_small_graphs_stay_on_the_edge_backend() -> None:
    g = ga.window_graph(64, 4)
    assert g.num_edges < MIN_BLOCK_EDGES
    assert "small graph" in _explain("scaled_dot", g)


def test_irregular_graph_builds_no_block_layout() -> None:
    """Dispatch costs O(sample) on an irregular graph: no per-tile array is built."""
    gen = torch.Generator().manual_seed(0)
    n, e = 4096, 40_000
    g = ga.TokenGraph(torch.randint(0, n, (2, e), generator=gen), n, n)
    got, reason = select_backend(
        "auto", _problem(ga.make_score("scaled_dot", 3, 8), g, torch.empty(0, 3, 8))
    )
    assert got == "edge" and "estimated tile density" in reason, reason
    assert not any(key[0][0] == "block_layout" for key in g._cache if isinstance(key[0], tuple))
    banded = ga.window_graph(2048, 16)
    got, reason = select_backend(
        "auto", _problem(ga.make_score("scaled_dot", 3, 8), banded, torch.empty(0, 3, 8))
    )
    assert got == "block" and "tile density" in reason, reason


def test_density_estimate_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    from gatattn.backends.block import block_layout, estimate_density

    g = ga.window_graph(1024, 32)
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    size, guess = estimate_density(g)
    assert torch.equal(torch.rand(1), before)  # its own generator
    again = ga.window_graph(1024, 32)
    assert estimate_density(again) == (size, guess)
    exact = block_layout(g).density
    assert exact <= guess + 0.1  # the edge-weighted estimate is never far below the true density
    assert guess >= 0.5 * exact


@pytest.mark.parametrize(
    "graph",
    [
        lambda: ga.window_graph(1024, 32),  # 4,096 tiles of 16x16: counted with bincount
        lambda: ga.TokenGraph(torch.randint(0, 3000, (2, 7000), generator=_gen(1)), 3000),
        lambda: ga.TokenGraph(torch.randint(0, 9, (2, 100), generator=_gen(2)), 9, 9),
    ],
)
def test_density_estimate_counts_tiles_without_a_sort_where_the_grid_is_small(
    graph: Callable[[], ga.TokenGraph], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting the sampled edges per tile with bincount (grids of up to DENSE_TILE_COUNT
    tiles) gives the estimate that sorting them (``unique``) gives."""
    from gatattn.backends import block

    fast = block.estimate_density(graph())
    monkeypatch.setattr(block, "DENSE_TILE_COUNT", 0)  # every grid sorts its sample
    assert block.estimate_density(graph()) == fast


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# torch-internal: dynamo instantiates autograd.Function classes while tracing them
@pytest.mark.filterwarnings(
    "ignore:<class 'torch.autograd.function.Function'> should not be instantiated:DeprecationWarning"
)
def test_auto_under_compile_never_guards_on_the_edge_count() -> None:
    """A graph read from a mask inside torch.compile has a data-dependent edge count; a
    softcapped score (no SDPA form) must then go to the edge backend without the fast
    backends' size checks, so that fullgraph=True traces (transformers' compiled generation of
    Gemma 2 found this), and equal the eager layer."""
    layer = ga.GraphAttention(21, 3, score="softcap").double()
    x = torch.randn(11, 21, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mask = torch.rand(11, 11, generator=torch.Generator().manual_seed(1)) < 0.4  # [N, N]

    def run(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return layer(x, ga.from_mask(mask))

    compiled = torch.compile(run, fullgraph=True, dynamic=False, backend="eager")
    torch.testing.assert_close(compiled(x, mask), run(x, mask), atol=1e-12, rtol=0)
    p = _problem(layer.score, ga.window_graph(N, 32), torch.zeros(0, 3, 7))
    assert select_backend("auto", p)[0] == "block"  # outside compile: the fast paths stay


def test_attend_names_a_graph_on_another_device() -> None:
    """The functional entry point: a meta graph with CPU queries used to run the tagged dense
    plan (which reads no edges) and return an answer."""
    q = torch.randn(5, 3, 7)  # [N, H, D]
    p = Problem(q, q, q, ga.complete_graph(5, device="meta"), ga.make_score("scaled_dot", 3, 7))
    for backend in ("auto", "edge", "dense"):
        with pytest.raises(ValueError, match="attend: the graph is on meta but q is on cpu"):
            attend(p, backend)
