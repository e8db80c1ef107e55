"""Structural properties of the pattern builders (gatattn/patterns): every mask equals its set
formula written as a plain double loop, edges are sorted and unique, tags/params are stable, same
seed -> same graph, masks round-trip, | and & match boolean masks, and every error is raised."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import gatattn as ga
from gatattn.cli import main as cli_main
from gatattn.patterns import GALLERY, bigbird_block_mask

Rule = Callable[[int, int, int], bool]  # (p_i, p_j, L) -> j ∈ N(i)


pytestmark = pytest.mark.usefixtures("one_thread")


def formula_mask(seq: list[int], rule: Rule) -> torch.Tensor:
    """The set formula as a block-diagonal boolean mask [N, N], one (i, j) at a time."""
    n = sum(seq)
    mask = torch.zeros(n, n, dtype=torch.bool)
    s = 0
    for length in seq:
        for pi in range(length):
            for pj in range(length):
                mask[s + pi, s + pj] = rule(pi, pj, length)
        s += length
    return mask


def star_rule(i: int, j: int, length: int) -> bool:
    m = length - 1  # satellites on a ring
    ring = i > 0 and j > 0 and (i - j) % m in {0, 1, m - 1}
    return i == 0 or j == 0 or ring


# name -> (builder(**layout), set formula); each builder is checked on one sequence and a batch
CASES: dict[str, tuple[Callable[..., ga.TokenGraph], Rule]] = {
    "causal": (lambda **kw: ga.causal_graph(**kw), lambda i, j, L: j <= i),
    "window2": (lambda **kw: ga.window_graph(window=2, **kw), lambda i, j, L: abs(i - j) <= 2),
    "window0": (lambda **kw: ga.window_graph(window=0, **kw), lambda i, j, L: i == j),
    "dilated": (
        lambda **kw: ga.window_graph(window=2, dilation=3, **kw),
        lambda i, j, L: abs(i - j) <= 6 and (i - j) % 3 == 0,
    ),
    "dilated_causal": (
        lambda **kw: ga.window_graph(window=1, dilation=2, causal=True, **kw),
        lambda i, j, L: 0 <= i - j <= 2 and (i - j) % 2 == 0,
    ),
    "global": (
        lambda **kw: ga.global_graph(global_tokens=[3, 0, 3], **kw),
        lambda i, j, L: j in (0, 3) or i in (0, 3),
    ),
    "global_window": (
        lambda **kw: ga.global_graph(global_tokens=[1], window=1, **kw),
        lambda i, j, L: j == 1 or i == 1 or abs(i - j) <= 1,
    ),
    "block": (lambda **kw: ga.block_graph(block_size=3, **kw), lambda i, j, L: i // 3 == j // 3),
    "strided": (
        lambda **kw: ga.strided_graph(stride=3, **kw),
        lambda i, j, L: j <= i and (i - j < 3 or (i - j) % 3 == 0),
    ),
    "strided_bidirectional": (
        lambda **kw: ga.strided_graph(stride=3, causal=False, **kw),
        lambda i, j, L: abs(i - j) < 3 or (i - j) % 3 == 0,
    ),
    "fixed": (
        lambda **kw: ga.fixed_graph(stride=4, summary=2, **kw),
        lambda i, j, L: j <= i and (i // 4 == j // 4 or j % 4 >= 2),
    ),
    "fixed_bidirectional": (
        lambda **kw: ga.fixed_graph(stride=4, summary=1, causal=False, **kw),
        lambda i, j, L: i // 4 == j // 4 or j % 4 == 3,
    ),
    "star": (lambda **kw: ga.star_graph(**kw), star_rule),
    "bigbird_no_random": (
        lambda **kw: ga.bigbird_graph(block_size=2, random_blocks=0, seed=0, **kw),
        # window of 3 blocks; global blocks: first and last block of the sequence
        lambda i, j, L: abs(i // 2 - j // 2) <= 1 or {i // 2, j // 2} & {0, (L - 1) // 2} != set(),
    ),
}
LAYOUTS = [{"n": 13}, {"lengths": [5, 4, 9]}]


def _keys(g: ga.TokenGraph) -> torch.Tensor:
    return g.edge_index[1] * g.num_src + g.edge_index[0]  # [E]


@pytest.mark.parametrize("layout", LAYOUTS, ids=["single", "batch"])
@pytest.mark.parametrize("name", list(CASES))
def test_mask_equals_set_formula(name: str, layout: dict[str, Any]) -> None:
    build, rule = CASES[name]
    g = build(**layout)
    seq = [layout["n"]] if "n" in layout else layout["lengths"]
    assert torch.equal(g.to_dense_mask(), formula_mask(seq, rule))
    keys = _keys(g)
    assert bool((keys[1:] > keys[:-1]).all()), "edges must be sorted by target, then source, unique"
    assert g.lengths == (None if "n" in layout else tuple(seq))


@pytest.mark.parametrize("n,w", [(1, 0), (2, 3), (7, 2), (13, 4), (13, 20)])
def test_window_in_degree_is_2w_plus_1_clipped(n: int, w: int) -> None:
    p = torch.arange(n)
    expected = torch.clamp(p, max=w) + torch.clamp(n - 1 - p, max=w) + 1  # [N]
    deg = ga.window_graph(n, w).in_degree()
    assert torch.equal(deg, expected)
    assert int(deg.max()) == min(n, 2 * w + 1)


def test_tags_and_params() -> None:
    pos = torch.randn(6, 3, dtype=torch.float64)
    cases = [
        (ga.causal_graph(5), "causal", {}),
        (ga.window_graph(5, 2), "window", {"window": 2, "dilation": 1, "causal": False}),
        (
            ga.window_graph(5, 1, causal=True, dilation=2),
            "window",
            {"window": 1, "dilation": 2, "causal": True},
        ),
        (ga.global_graph(5, [3, 0]), "global", {"global_tokens": (0, 3), "window": None}),
        (ga.global_graph(5, [0], window=1), "global", {"global_tokens": (0,), "window": 1}),
        (
            ga.bigbird_graph(9, block_size=2, seed=4),
            "bigbird",
            {
                "block_size": 2,
                "window_blocks": 3,
                "global_blocks": 2,
                "random_blocks": 3,
                "seed": 4,
            },
        ),
        (ga.block_graph(5, 2), "block", {"block_size": 2}),
        (ga.strided_graph(5, 2), "strided", {"stride": 2, "causal": True}),
        (
            ga.fixed_graph(5, 2, 1, causal=False),
            "fixed",
            {"stride": 2, "summary": 1, "causal": False},
        ),
        (ga.star_graph(5), "star", {}),
        (ga.knn_graph(pos, 2), "knn", {"k": 2}),
        (ga.radius_graph(pos, 0.5), "radius", {"r": 0.5}),
        (ga.bipartite_graph(3, 4), "bipartite", {"kv_lengths": None}),
        (ga.bipartite_graph([3, 2], [4, 1]), "bipartite", {"kv_lengths": (4, 1)}),
    ]
    for g, tag, params in cases:
        assert (g.structure, g.params) == (tag, params)


def test_bigbird_is_reproducible_and_block_structured() -> None:
    kw: dict[str, Any] = {
        "block_size": 3,
        "window_blocks": 3,
        "global_blocks": 2,
        "random_blocks": 2,
    }
    a = ga.bigbird_graph(lengths=[40, 31], seed=7, **kw)
    b = ga.bigbird_graph(lengths=[40, 31], seed=7, **kw)
    c = ga.bigbird_graph(lengths=[40, 31], seed=8, **kw)
    assert torch.equal(a.edge_index, b.edge_index)
    assert not torch.equal(a.to_dense_mask(), c.to_dense_mask())
    # one sequence of 40 tokens = 14 blocks (the last has 1 token): the token mask is the block
    # mask expanded to tokens, and each non-global row has its 3 window blocks + 2 random blocks
    m = a.to_dense_mask()[:40, :40]
    blk = torch.arange(40) // 3
    block_mask = m[::3, ::3]  # [14, 14] one token per block
    assert torch.equal(m, block_mask[blk][:, blk])
    rows = block_mask.sum(1)
    assert rows[0] == rows[-1] == 14  # global blocks attend to all
    assert torch.equal(rows[2:-2], torch.full((10,), 3 + 2 + 2))  # window + 2 global + 2 random
    assert bool(block_mask[:, 0].all()) and bool(block_mask[:, -1].all())
    assert not bool(a.to_dense_mask()[:40, 40:].any()), "sequences stay apart"


def test_bigbird_block_mask_takes_fewer_random_blocks_when_few_remain() -> None:
    gen = torch.Generator().manual_seed(0)
    mask = bigbird_block_mask(5, 3, 0, 9, gen)  # 5 blocks, ask for 9 random: all remaining taken
    assert bool(mask.all())


def test_from_mask_round_trip_and_padding() -> None:
    pos = torch.randn(9, 2)
    graphs = [builder(**LAYOUTS[1]) for builder, _ in CASES.values()]
    graphs += [ga.knn_graph(pos, 3), ga.radius_graph(pos, 1.0), ga.bipartite_graph([2, 3], [4, 1])]
    for g in graphs:
        back = ga.from_mask(g.to_dense_mask())
        assert torch.equal(back.edge_index, g.edge_index)  # both sorted by target then source
        assert (back.num_src, back.num_dst) == (g.num_src, g.num_dst)


def test_from_padding_mask_matches_formula() -> None:
    pad = torch.tensor([[False, False, True, True], [True, False, False, False], [True] * 4])
    g = ga.from_padding_mask(pad)
    valid = ~pad.flatten()
    row = torch.arange(3).repeat_interleave(4)
    expected = (row[:, None] == row[None, :]) & valid[None, :]  # [12, 12]
    assert torch.equal(g.to_dense_mask(), expected)
    assert g.lengths == (4, 4, 4) and g.structure == "masked"
    assert torch.equal(g.in_degree()[8:], torch.zeros(4, dtype=torch.long))  # fully padded row


def test_bipartite_graph_is_block_complete() -> None:
    g = ga.bipartite_graph([2, 3], [4, 1])
    assert (g.num_dst, g.num_src, g.num_edges) == (5, 5, 2 * 4 + 3 * 1)
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[:2, :4] = True
    expected[2:, 4:] = True
    assert torch.equal(g.to_dense_mask(), expected)
    assert ga.bipartite_graph(3, 7).to_dense_mask().shape == (3, 7)


# ---------------------------------------------------------------- knn / radius vs brute force
@pytest.mark.parametrize("chunk_size", [7, 1 << 24])
def test_knn_graph_matches_brute_force(chunk_size: int) -> None:
    pos = torch.randn(13, 3, dtype=torch.float64)
    lengths = [6, 7]
    g = ga.knn_graph(pos, 3, lengths=lengths, chunk_size=chunk_size)
    expected = torch.zeros(13, 13, dtype=torch.bool)
    s = 0
    for length in lengths:
        d = torch.cdist(pos[s : s + length], pos[s : s + length]).fill_diagonal_(float("inf"))
        nbr = d.argsort(dim=1)[:, :3]  # [L, 3] distinct distances: no ties
        expected[s + torch.arange(length)[:, None], s + nbr] = True
        s += length
    assert torch.equal(g.to_dense_mask(), expected)
    assert torch.equal(g.in_degree(), torch.full((13,), 3))
    keys = _keys(g)
    assert bool((keys[1:] > keys[:-1]).all())
    batch = torch.tensor([0] * 6 + [1] * 7)
    assert torch.equal(ga.knn_graph(pos, 3, batch=batch).edge_index, g.edge_index)
    loops = ga.knn_graph(pos, 3, lengths=lengths, self_loops=True)
    assert torch.equal(loops.to_dense_mask(), expected | torch.eye(13, dtype=torch.bool))


@pytest.mark.parametrize("chunk_size", [5, 1 << 24])
def test_radius_graph_matches_brute_force(chunk_size: int) -> None:
    pos = torch.rand(11, 2, dtype=torch.float64)
    g = ga.radius_graph(pos, 0.4, lengths=[4, 7], chunk_size=chunk_size)
    seq = torch.tensor([0] * 4 + [1] * 7)
    near = torch.cdist(pos, pos) <= 0.4
    expected = near & (seq[:, None] == seq[None, :]) & ~torch.eye(11, dtype=torch.bool)
    assert torch.equal(g.to_dense_mask(), expected)
    keys = _keys(g)
    assert bool((keys[1:] > keys[:-1]).all())
    loops = ga.radius_graph(pos, 0.4, lengths=[4, 7], self_loops=True, chunk_size=chunk_size)
    assert torch.equal(loops.to_dense_mask(), expected | torch.eye(11, dtype=torch.bool))


# ---------------------------------------------------------------- union / intersection
def test_union_and_intersection_match_boolean_masks() -> None:
    a = ga.window_graph(11, 1)
    b = ga.strided_graph(11, 4, causal=False)
    dup = ga.TokenGraph(torch.tensor([[0, 0, 5, 2, 10], [3, 3, 1, 2, 10]]), 11, 11)  # duplicates
    for x, y in [(a, b), (a, dup), (dup, ga.global_graph(11, [5]))]:
        union, inter = x | y, x & y
        assert torch.equal(union.to_dense_mask(), x.to_dense_mask() | y.to_dense_mask())
        assert torch.equal(inter.to_dense_mask(), x.to_dense_mask() & y.to_dense_mask())
        for g in (union, inter):
            keys = _keys(g)
            assert bool((keys[1:] > keys[:-1]).all()) and g.structure is None
    bip = ga.bipartite_graph(3, 5) | ga.TokenGraph(torch.tensor([[4], [0]]), 5, 3)
    assert torch.equal(bip.to_dense_mask(), ga.bipartite_graph(3, 5).to_dense_mask())
    batched = ga.causal_graph(lengths=[3, 4]) | ga.window_graph(window=1, lengths=[3, 4])
    assert batched.lengths == (3, 4)


def test_union_errors() -> None:
    with pytest.raises(ValueError, match=r"equal node counts.*\(5, 5\) and \(6, 6\)"):
        ga.window_graph(5, 1) | ga.window_graph(6, 1)
    with pytest.raises(ValueError, match=r"equal node counts"):
        ga.window_graph(5, 1) & ga.bipartite_graph(5, 4)
    with pytest.raises(TypeError, match="needs another TokenGraph, got Tensor"):
        ga.window_graph(5, 1) | torch.ones(5, 5, dtype=torch.bool)


# ---------------------------------------------------------------- errors
BAD: list[tuple[Callable[[], object], type[Exception], str]] = [
    (lambda: ga.window_graph(5, -1), ValueError, r"window must be an int >= 0, got -1"),
    (lambda: ga.window_graph(5), ValueError, r"window_graph needs window"),
    (lambda: ga.window_graph(5, 2, dilation=0), ValueError, r"dilation must be an int >= 1, got 0"),
    (lambda: ga.window_graph(5, 1.5), ValueError, r"window must be an int >= 0, got 1.5"),
    (lambda: ga.causal_graph(0), ValueError, r"n must be an int >= 1, got 0"),
    (lambda: ga.causal_graph(4, lengths=[2, 2]), ValueError, r"either n or lengths"),
    (lambda: ga.causal_graph(), ValueError, r"either n or lengths"),
    (lambda: ga.causal_graph(lengths=[3, 0]), ValueError, r"must be >= 1, got 0"),
    (lambda: ga.block_graph(5, 0), ValueError, r"block_size must be an int >= 1, got 0"),
    (lambda: ga.block_graph(5, -2), ValueError, r"block_size must be an int >= 1, got -2"),
    (lambda: ga.block_graph(5), ValueError, r"block_graph needs block_size"),
    (lambda: ga.bigbird_graph(8, block_size=0, seed=0), ValueError, r"block_size must be an int >= 1, got 0"),
    (lambda: ga.bigbird_graph(8, block_size=2, window_blocks=2, seed=0), ValueError, r"window_blocks must be odd.*got 2"),
    (lambda: ga.bigbird_graph(8, block_size=2, random_blocks=-1, seed=0), ValueError, r"random_blocks must be an int >= 0, got -1"),
    (lambda: ga.bigbird_graph(8, block_size=2, seed=-3), ValueError, r"seed must be an int >= 0, got -3"),
    (lambda: ga.global_graph(5, [0, 7]), ValueError, r"global token 7 is out of range for a sequence of length 5"),
    (lambda: ga.global_graph(lengths=[9, 4], global_tokens=[5]), ValueError, r"global token 5 is out of range for a sequence of length 4"),
    (lambda: ga.global_graph(5, [-1]), ValueError, r"global token -1 is out of range"),
    (lambda: ga.global_graph(5, []), ValueError, r"at least one position, got \[\]"),
    (lambda: ga.global_graph(5), ValueError, r"global_graph needs global_tokens"),
    (lambda: ga.global_graph(5, [0], window=-2), ValueError, r"window must be an int >= 0, got -2"),
    (lambda: ga.strided_graph(5, 0), ValueError, r"stride must be an int >= 1, got 0"),
    (lambda: ga.strided_graph(5), ValueError, r"strided_graph needs stride"),
    (lambda: ga.fixed_graph(5, 2, 3), ValueError, r"summary=3 must be <= stride=2"),
    (lambda: ga.fixed_graph(5, 2, 0), ValueError, r"summary must be an int >= 1, got 0"),
    (lambda: ga.fixed_graph(5), ValueError, r"fixed_graph needs stride"),
    (lambda: ga.star_graph(-1), ValueError, r"n must be an int >= 1, got -1"),
    (lambda: ga.knn_graph(torch.randn(5, 2), 5), ValueError, r"k=5 > n - 1 = 4"),
    (lambda: ga.knn_graph(torch.randn(9, 2), 4, lengths=[4, 5]), ValueError, r"k=4 > n - 1 = 3"),
    (lambda: ga.knn_graph(torch.randn(5, 2), 0), ValueError, r"k must be an int >= 1, got 0"),
    (lambda: ga.knn_graph(torch.arange(5)[:, None], 1), ValueError, r"float tensor \[N, d\], got \[5, 1\] \(torch.int64\)"),
    (lambda: ga.knn_graph(torch.randn(5), 1), ValueError, r"float tensor \[N, d\], got \[5\]"),
    (lambda: ga.knn_graph(torch.randn(5, 2), 1, lengths=[2, 2]), ValueError, r"sum to 4, but pos has 5 rows"),
    (lambda: ga.knn_graph(torch.randn(4, 2), 1, batch=torch.tensor([1, 0, 0, 1])), ValueError, r"batch must be sorted"),
    (lambda: ga.knn_graph(torch.randn(4, 2), 1, batch=torch.tensor([0, 0, 2, 2])), ValueError, r"no gaps"),
    (lambda: ga.knn_graph(torch.randn(4, 2), 1, batch=torch.tensor([0, 0, 1])), ValueError, r"batch must be \[N\] = \[4\], got \[3\]"),
    (lambda: ga.knn_graph(torch.randn(4, 2), 1, lengths=[2, 2], batch=torch.tensor([0, 0, 1, 1])), ValueError, r"not both"),
    (lambda: ga.knn_graph(torch.randn(4, 2), 1, chunk_size=0), ValueError, r"chunk_size must be an int >= 1, got 0"),
    (lambda: ga.radius_graph(torch.randn(5, 2), 0.0), ValueError, r"r must be a number > 0, got 0.0"),
    (lambda: ga.radius_graph(torch.randn(5, 2), -1), ValueError, r"r must be a number > 0, got -1"),
    (lambda: ga.from_padding_mask(torch.zeros(2, 3)), TypeError, r"bool tensor \[B, L\] \(True = padding\), got torch.float32"),
    (lambda: ga.from_padding_mask(torch.zeros(6, dtype=torch.bool)), ValueError, r"shape \[B, L\] with B, L >= 1, got \[6\]"),
    (lambda: ga.bipartite_graph([2, 3], [4]), ValueError, r"n_q has 2 sequences but n_kv has 1"),
    (lambda: ga.bipartite_graph(0, 3), ValueError, r"n_q must be an int >= 1, got 0"),
    (lambda: ga.bipartite_graph([], []), ValueError, r"n_q must name at least one sequence"),
    (lambda: ga.window_graph(100, 5, max_edges=10), ValueError, r"window_graph would create 1,070 edges, more than max_edges=10.*max_edges=1070 or max_edges=None"),
    (lambda: ga.causal_graph(100, max_edges=10), ValueError, r"causal_graph would create 5,050 edges"),
    (lambda: ga.global_graph(10, [0], window=1, max_edges=10), ValueError, r"global_graph would create"),
    (lambda: ga.bigbird_graph(16, block_size=2, seed=0, max_edges=10), ValueError, r"bigbird_graph would create"),
    (lambda: ga.block_graph(10, 5, max_edges=10), ValueError, r"block_graph would create 50 edges"),
    (lambda: ga.strided_graph(10, 3, max_edges=10), ValueError, r"strided_graph would create"),
    (lambda: ga.fixed_graph(10, 3, max_edges=10), ValueError, r"fixed_graph would create"),
    (lambda: ga.star_graph(10, max_edges=10), ValueError, r"star_graph would create"),
    (lambda: ga.knn_graph(torch.randn(10, 2), 2, max_edges=10), ValueError, r"knn_graph would create 20 edges"),
    (lambda: ga.radius_graph(torch.randn(10, 2), 9.0, max_edges=10), ValueError, r"radius_graph would create"),
    (lambda: ga.from_padding_mask(torch.zeros(2, 5, dtype=torch.bool), max_edges=10), ValueError, r"from_padding_mask would create 50 edges"),
    (lambda: ga.bipartite_graph(4, 5, max_edges=10), ValueError, r"bipartite_graph would create 20 edges"),
]  # fmt: skip


@pytest.mark.parametrize("call,exc,match", BAD, ids=[m[:40] for _, _, m in BAD])
def test_bad_parameters_raise(call: Callable[[], object], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        call()


def test_edge_cap_can_be_lifted() -> None:
    assert ga.window_graph(100, 5, max_edges=None).num_edges == 1070
    assert ga.window_graph(100, 5, max_edges=1070).num_edges == 1070
    assert ga.patterns.MAX_EDGES == 50_000_000


# ---------------------------------------------------------------- pictures and the command
def test_show_writes_a_png(tmp_path: Any) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "w.png"
    fig = ga.patterns.show(ga.window_graph(9, 2), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "window(window=2, dilation=1, causal=False)" in fig.axes[0].get_title()
    image = fig.axes[0].get_images()[0].get_array()
    assert torch.equal(torch.as_tensor(image.data) > 0, ga.window_graph(9, 2).to_dense_mask())


def test_show_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    with pytest.raises(TypeError, match="show needs a TokenGraph, got Tensor"):
        ga.patterns.show(torch.ones(3, 3, dtype=torch.bool))  # type: ignore[arg-type]
    monkeypatch.setattr(ga.patterns.draw, "MAX_DRAW", 8)
    with pytest.raises(ValueError, match="graph has 9 x 9 nodes; show draws at most 8"):
        ga.patterns.show(ga.causal_graph(9))


def test_gallery_builds() -> None:
    for name, (build, _) in GALLERY.items():
        for n in (8, 33):
            g = build(n)
            assert isinstance(g, ga.TokenGraph) and g.num_edges > 0, name


def test_patterns_command(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    rc = cli_main(
        ["patterns", "window", "knn", "--n", "12", "--out", str(tmp_path), "--prefix", "p_"]
    )
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p_knn.png", "p_window.png"]
    assert "structure='window'" in capsys.readouterr().out
    for argv, match in [
        (["nope"], "unknown pattern 'nope'"),
        (["--n", "3"], "--n must be between 8 and 512, got 3"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["patterns", *argv, "--out", str(tmp_path)])
        assert exit_info.value.code == 2
        assert match in capsys.readouterr().err


# ---------------------------------------------------------------- knn / radius: cKDTree path
@pytest.mark.parametrize("self_loops", [False, True])
def test_kdtree_and_brute_force_give_the_same_graph(self_loops: bool) -> None:
    gen = torch.Generator().manual_seed(7)
    pos = torch.rand(300, 3, generator=gen)
    lengths = [120, 180]
    for k in (1, 4):
        a = ga.knn_graph(pos, k, lengths=lengths, self_loops=self_loops, method="brute")
        b = ga.knn_graph(pos, k, lengths=lengths, self_loops=self_loops, method="kdtree")
        assert torch.equal(a.edge_index, b.edge_index)
        assert (b.structure, b.params, b.lengths) == ("knn", {"k": k}, (120, 180))
    for r in (0.1, 0.3):
        a = ga.radius_graph(pos, r, lengths=lengths, self_loops=self_loops, method="brute")
        b = ga.radius_graph(pos, r, lengths=lengths, self_loops=self_loops, method="kdtree")
        assert torch.equal(a.edge_index, b.edge_index)


def test_kdtree_handles_duplicate_points() -> None:
    pos = torch.zeros(6, 2)  # every point at the same place: self may hide among the ties
    g = ga.knn_graph(pos, 2, method="kdtree")
    assert g.num_edges == 12 and not (g.edge_index[0] == g.edge_index[1]).any()
    assert torch.equal(g.in_degree(), torch.full((6,), 2))


def test_auto_method_picks_the_tree_for_long_sequences() -> None:
    from gatattn.patterns import spatial

    pos = torch.rand(spatial.KDTREE_MIN, 2, generator=torch.Generator().manual_seed(3))
    assert spatial._use_kdtree("auto", pos, (spatial.KDTREE_MIN,), "knn_graph")
    assert not spatial._use_kdtree("auto", pos[:100], (100,), "knn_graph")
    auto = ga.knn_graph(pos, 3)
    assert torch.equal(auto.edge_index, ga.knn_graph(pos, 3, method="brute").edge_index)


def test_bad_spatial_method() -> None:
    with pytest.raises(
        ValueError,
        match=r"knn_graph: method must be one of \['auto', 'brute', 'kdtree'\], got 'ball'",
    ):
        ga.knn_graph(torch.randn(5, 2), 1, method="ball")
    with pytest.raises(
        ValueError, match="radius_graph: method='kdtree' runs on the CPU; pos is on meta"
    ):
        ga.radius_graph(torch.randn(5, 2, device="meta"), 1.0, method="kdtree")


# ---------------------------------------------------------------- issue 11: hostile positions and sizes
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("method", ["brute", "kdtree"])
@pytest.mark.parametrize(
    "build",
    [
        lambda pos, m: ga.knn_graph(pos, 2, method=m),
        lambda pos, m: ga.radius_graph(pos, 0.5, method=m),
        lambda pos, m: ga.knn_graph(pos, 1, lengths=[3, 3], method=m),
    ],
)
def test_spatial_builders_refuse_non_finite_positions(bad: float, method: str, build) -> None:
    """A NaN position used to add a self-loop despite self_loops=False (brute force) or raise
    SciPy's error (k-d tree): distances to it are undefined, so it is refused."""
    pos = torch.rand(6, 2, generator=torch.Generator().manual_seed(0))
    pos[4, 1] = bad
    with pytest.raises(ValueError, match=r"pos must be finite, but row 4 is \[.*\] \(1 rows"):
        build(pos, method)


def test_spatial_batch_must_be_a_long_tensor() -> None:
    with pytest.raises(
        TypeError, match="knn_graph: batch must be a LongTensor .* got torch.float32"
    ):
        ga.knn_graph(torch.rand(4, 2), 1, batch=torch.tensor([0.0, 0.0, 1.0, 1.0]))


@pytest.mark.parametrize("build", [ga.knn_graph, ga.radius_graph])
def test_spatial_batch_with_a_negative_id(build) -> None:
    """A negative graph id used to crash inside torch.bincount."""
    batch = torch.tensor([0, 0, -1, 1])
    name = build.__name__
    with pytest.raises(
        ValueError, match=rf"{name}: batch holds a negative graph id \(-1, first at node 2\)"
    ):
        build(torch.rand(4, 2), 1, batch=batch)


def test_builders_accept_numpy_integers() -> None:
    """``bipartite_graph(np.int64(3), 4)`` used to fail with "not iterable"; numpy integers
    are integers (numbers.Integral) everywhere a builder takes a size."""
    np = pytest.importorskip("numpy")
    g = ga.bipartite_graph(np.int64(3), 4)
    want = ga.bipartite_graph(3, 4)
    assert torch.equal(g.edge_index, want.edge_index)
    assert (g.lengths, g.params) == (want.lengths, want.params)
    batched = ga.bipartite_graph(np.array([2, 3]), [np.int32(4), 1])
    assert torch.equal(batched.edge_index, ga.bipartite_graph([2, 3], [4, 1]).edge_index)
    assert torch.equal(ga.window_graph(np.int64(6), np.int64(2)).edge_index,
                       ga.window_graph(6, 2).edge_index)  # fmt: skip
    with pytest.raises(
        ValueError, match=r"n_q must be an int >= 1, got np.True_|n_q must be an int >= 1, got True"
    ):
        ga.bipartite_graph(np.bool_(True), 4)
