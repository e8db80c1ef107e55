"""The flex backend's BlockMask is built from the tiles (backends/flex.py), never from an
[N_t, N_s] mask, and FlexAttention over it equals the edge backend.

torch runs ``flex_attention`` and ``BlockMask`` on CPU for inference (eager, and compiled by
inductor's C++ template), without backward. So the mask and the forward are checked here on
CPU in fp64 and fp32; gradients and the Triton kernels run in tests/backends/test_backends.py
on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import create_block_mask, create_mask, flex_attention
from torch.utils._python_dispatch import TorchDispatchMode

import gatattn as ga
from gatattn.backends import BACKENDS, Problem
from gatattn.backends.flex import FLEX_BLOCK, block_mask_for, flex_forward

H, D = 3, 16  # FlexAttention's kernels want D >= 16
CPU = torch.device("cpu")

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # eager flex_attention warns that it is unfused, for debugging: that is what runs here
    pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile:UserWarning"),
]


def _random(n_t: int, n_s: int, e: int, seed: int) -> ga.TokenGraph:
    """e distinct random edges (no duplicates); some targets may have none."""
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randperm(n_t * n_s, generator=gen)[:e]  # [e] flat (i, j)
    return ga.TokenGraph(torch.stack([keys % n_s, keys // n_s]), n_s, n_t)


def _with_empty_rows() -> ga.TokenGraph:
    """A window graph whose targets 100..179 lost every edge."""
    g = ga.window_graph(300, 40)
    keep = (g.edge_index[1] < 100) | (g.edge_index[1] >= 180)
    return ga.TokenGraph(g.edge_index[:, keep], 300, 300)


#: name -> (graph, has full tiles): N > FLEX_BLOCK (128) so that tiles can be full.
GRAPHS: dict[str, Callable[[], ga.TokenGraph]] = {
    "window": lambda: ga.window_graph(300, 20),
    "wide_window": lambda: ga.window_graph(400, 150),  # full tiles along the diagonal
    "causal": lambda: ga.causal_graph(300),
    "causal_batch": lambda: ga.causal_graph(lengths=[130, 141]),
    "complete": lambda: ga.complete_graph(270),  # full tiles, cut tiles at the border
    "block": lambda: ga.block_graph(384, 128),  # exactly the full diagonal tiles
    "bigbird": lambda: ga.bigbird_graph(300, block_size=16, seed=0),
    "random": lambda: _random(211, 333, 6000, 1),  # bipartite sizes, partial tiles only
    "empty_rows": _with_empty_rows,
}
FULL = {"wide_window", "causal", "complete", "block"}


def _problem(g: ga.TokenGraph, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(g.num_dst, H, D, generator=gen, dtype=torch.float64)  # [N_t, H, D]
    k = torch.randn(g.num_src, H, D, generator=gen, dtype=torch.float64)  # [N_s, H, D]
    v = torch.randn(g.num_src, H, D, generator=gen, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _edge(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: ga.TokenGraph) -> torch.Tensor:
    score = ga.make_score("scaled_dot", H, D)
    return BACKENDS["edge"].run(Problem(q, k, v, g, score)).out  # [N_t, H, D]


@pytest.mark.parametrize("name", list(GRAPHS))
def test_block_mask_is_the_graph_and_matches_create_block_mask(name: str) -> None:
    """Every (i, j) of the mask is the graph's adjacency, and the partial / full tiles are the
    ones torch's own create_block_mask finds from the dense mask."""
    g = GRAPHS[name]()
    mask = block_mask_for(g, CPU)
    dense = g.to_dense_mask()  # [N_t, N_s], the reference only
    assert mask.shape == (1, 1, g.num_dst, g.num_src)
    assert mask.BLOCK_SIZE == (FLEX_BLOCK, FLEX_BLOCK)
    entries = create_mask(mask.mask_mod, 1, 1, g.num_dst, g.num_src, CPU)[0, 0]
    assert torch.equal(entries, dense)
    ref = create_block_mask(
        lambda b, h, q_idx, kv_idx: dense[q_idx, kv_idx], None, None, g.num_dst, g.num_src, "cpu"
    )
    assert torch.equal(mask.kv_num_blocks, ref.kv_num_blocks)
    assert torch.equal(mask.full_kv_num_blocks, ref.full_kv_num_blocks)
    for ours, theirs, num in (
        (mask.kv_indices, ref.kv_indices, ref.kv_num_blocks),
        (mask.full_kv_indices, ref.full_kv_indices, ref.full_kv_num_blocks),
    ):
        for r in range(num.size(-1)):
            n = int(num[0, 0, r])
            assert (
                ours[0, 0, r, :n].sort().values.tolist()
                == theirs[0, 0, r, :n].sort().values.tolist()
            )
    assert bool(mask.full_kv_num_blocks.sum() > 0) == (name in FULL)


def test_full_tiles_need_no_mask_mod() -> None:
    """A complete graph of two full tile rows: every tile is full, none partial."""
    mask = block_mask_for(ga.complete_graph(2 * FLEX_BLOCK), CPU)
    assert mask.kv_num_blocks.tolist() == [[[0, 0]]]
    assert mask.full_kv_num_blocks.tolist() == [[[2, 2]]]


@pytest.mark.parametrize("name", list(GRAPHS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_flex_forward_on_cpu_equals_edge(name: str, dtype: torch.dtype, within_torch_error) -> None:
    """Eager FlexAttention over the tile mask: fp64 equal to the edge backend to 1e-12; fp32
    against the fp64 result within a multiple of the edge backend's own fp32 error. Targets
    without an edge give 0."""
    g = GRAPHS[name]()
    q, k, v = _problem(g, dtype)
    got = flex_forward(q, k, v, g, D**-0.5, flex_attention)  # [N_t, H, D]
    want = _edge(q, k, v, g)
    if dtype == torch.float64:
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    else:
        gold = _edge(*(t.double() for t in (q, k, v)), g)
        within_torch_error(got, want, gold, what=f"flex on {name}")
    empty = g.in_degree() == 0  # [N_t]
    assert torch.equal(got[empty], torch.zeros_like(got[empty]))
    assert bool(empty.any()) == (name == "empty_rows")


@st.composite
def _graphs(draw: st.DrawFn) -> ga.TokenGraph:
    n_t, n_s = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    fill = draw(st.sampled_from([0.02, 0.2, 0.7, 1.0]))
    e = max(1, int(fill * n_t * n_s))
    return _random(n_t, n_s, e, draw(st.integers(0, 2**16)))


@given(g=_graphs())
def test_random_graphs_mask_and_forward(g: ga.TokenGraph) -> None:
    mask = block_mask_for(g, CPU)
    entries = create_mask(mask.mask_mod, 1, 1, g.num_dst, g.num_src, CPU)[0, 0]
    assert torch.equal(entries, g.to_dense_mask())
    q, k, v = _problem(g, torch.float64)
    got = flex_forward(q, k, v, g, D**-0.5, flex_attention)
    torch.testing.assert_close(got, _edge(q, k, v, g), atol=1e-12, rtol=0)


class _MaxNumel(TorchDispatchMode):
    """The largest tensor any op creates while the mode is on."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_building_the_mask_never_makes_an_n_by_n_tensor() -> None:
    """A ±32 window over 4,096 tokens: no op output reaches N²/8 elements (the old mask was
    N² booleans; the tiles hold E / density entries)."""
    n = 4096
    g = ga.window_graph(n, 32)
    _ = g.edge_index  # the graph's own edges are made before the probe
    with _MaxNumel() as probe:
        block_mask_for(g, CPU)
    assert probe.largest < n * n / 8, (probe.largest, n * n)


@pytest.mark.slow
def test_compiled_flex_on_cpu_traces_the_bit_tables(within_torch_error) -> None:
    """torch.compile(flex_attention) lowers the mask_mod (gathers and bit shifts on uint8
    tables) through inductor; its fp32 output is within torch's error of the fp64 edge result.
    (On CPU inductor emits C++; on CUDA the same mask_mod goes to Triton.)"""
    g = GRAPHS["wide_window"]()
    q, k, v = _problem(g, torch.float32)
    got = flex_forward(q, k, v, g, D**-0.5, torch.compile(flex_attention, dynamic=False))
    gold = _edge(*(t.double() for t in (q, k, v)), g)
    within_torch_error(got, _edge(q, k, v, g), gold, what="compiled flex on CPU")


def test_forced_flex_refuses_small_heads_and_cpu() -> None:
    """D >= 16 is flex's own rule: a forced flex refuses D < 16 (and, here, the CPU)."""
    g = ga.window_graph(64, 4)
    layer = ga.GraphAttention(3 * 8, 3, backend="flex")
    with pytest.raises(ValueError, match=r"backend='flex' cannot run .*head size D=8 < 16") as err:
        layer(torch.randn(64, 24), g)
    assert "needs CUDA" in str(err.value).splitlines()[0]
    q = torch.randn(64, 3, 8)
    with pytest.raises(ValueError, match=r"flex backend cannot run score 'scaled_dot': .*CUDA"):
        BACKENDS["flex"].run(Problem(q, q, q, g, ga.make_score("scaled_dot", 3, 8)))
