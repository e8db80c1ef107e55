"""Adversarial review of issue 21, written from the docs only, against independent fp64 references.

References: written-out dense softmax attention, torch's nn.MultiheadAttention with the same
state_dict, networkx's shortest path lengths. Defects found here, each with its test:

- ``neighbourhood_softmax`` took integer scores and returned truncated integer weights (two equal
  scores of one target gave 0 and 0, not 0.5 and 0.5); bool scores crashed inside; sinks of the
  wrong size failed with an opaque size mismatch, and NaN sinks gave NaN weights silently.
- The drop-in crashed on empty inputs (B = 0, or L = S = 0) with ``is_causal=True`` where torch
  returns an empty output ("lengths must name at least one sequence").
- A write through ``edge_index.data`` (its own version counter) is not detected, like one
  through ``edge_index.numpy()``: now documented, as the docs allow.
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import gatattn as ga
from gatattn.inspect.html import attention_html

H, D = 2, 3
C = H * D
F64 = torch.float64


def _dense_reference(layer: ga.GraphAttention, x: Tensor, allowed: Tensor) -> Tensor:
    """out = W_o softmax(QKᵀ/√D masked by ``allowed`` [N_t, N_s]) V; a row with no key gives 0."""
    q, k, v = (t.transpose(0, 1) for t in layer.project(x, x, x))  # [H, N, D]
    has = allowed.any(-1, keepdim=True)  # [N, 1]
    logits = (q @ k.transpose(-1, -2) / D**0.5).masked_fill(~(allowed | ~has), float("-inf"))
    weights = torch.softmax(logits, -1) * has  # [H, N, N]
    return layer.out_proj((weights @ v).transpose(0, 1).reshape(-1, C))  # [N, C]


def _allowed(g: ga.TokenGraph) -> Tensor:
    allowed = torch.zeros(g.num_dst, g.num_src, dtype=torch.bool)  # [N_t, N_s]
    allowed[g.edge_index[1], g.edge_index[0]] = True
    return allowed


def _graphs(n: int) -> dict[str, ga.TokenGraph]:
    mask = torch.rand(1, n, n, generator=torch.Generator().manual_seed(n)) > 0.4  # [1, N, N]
    return {
        "complete": ga.complete_graph(n),
        "causal": ga.causal_graph(n),
        "window": ga.window_graph(n, 1),
        "mask": ga.from_mask(mask),
        "padding": ga.from_padding_mask(torch.tensor([[False] * (n - 1) + [True]])),
    }


# --- neighbourhood_softmax: dtypes, sinks, index range ----------------------------------------


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8, torch.bool])
def test_neighbourhood_softmax_refuses_integer_scores(dtype: torch.dtype) -> None:
    # was: int64 zeros on one target gave weights [0, 0] (0.5 truncated); bool crashed inside
    with pytest.raises(TypeError, match="floating-point"):
        ga.neighbourhood_softmax(torch.zeros(2, 1, dtype=dtype), torch.tensor([0, 0]), 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(3))
def test_neighbourhood_softmax_every_float_dtype_matches_fp64(
    dtype: torch.dtype, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(7, H, generator=gen, dtype=F64)  # [E, H]
    index = torch.tensor([0, 2, 2, 0, 4, 2, 0])  # targets 1 and 3 have no edge
    want = torch.empty_like(scores)
    for i in index.unique():
        want[index == i] = torch.softmax(scores[index == i], 0)
    got = ga.neighbourhood_softmax(scores.to(dtype), index, 5)
    assert got.dtype == dtype
    low = torch.softmax(scores.to(dtype).float(), 0)  # dtype's own rounding of the inputs
    bound = 4 * float((low.double() - torch.softmax(scores, 0)).abs().max()) + 4 * float(
        torch.finfo(dtype).eps
    )
    torch.testing.assert_close(got.double(), want, atol=bound, rtol=0)


@pytest.mark.parametrize(
    "sinks, match",
    [
        (torch.zeros(3), "one logit per head"),
        (torch.zeros(2, 1), "one logit per head"),
        (torch.tensor([float("nan"), 0.0]), "finite"),
        (torch.tensor([float("inf"), 0.0]), "finite"),
        (torch.tensor([0.0, float("-inf")]), "finite"),
    ],
)
def test_neighbourhood_softmax_checks_sinks(sinks: Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ga.neighbourhood_softmax(torch.randn(2, H), torch.tensor([0, 0]), 1, sinks=sinks)


def test_neighbourhood_softmax_sinks_match_written_out_formula() -> None:
    scores, sinks = torch.randn(3, H, dtype=F64), torch.randn(H, dtype=F64)  # [E, H], [H]
    got = ga.neighbourhood_softmax(scores, torch.tensor([0, 0, 0]), 1, sinks=sinks)
    want = torch.softmax(torch.cat([scores, sinks[None]]), 0)[:3]  # the sink as a 4th key
    torch.testing.assert_close(got, want, atol=1e-15, rtol=0)


@pytest.mark.parametrize(
    "index, n", [([0, 1, 4], 4), ([0, -1, 2], 4), ([0, 0, 0], 0), ([7, 0, 0], 7)]
)
def test_neighbourhood_softmax_names_a_target_out_of_range(index: list[int], n: int) -> None:
    with pytest.raises(ValueError, match=r"outside \[0, num_nodes"):
        ga.neighbourhood_softmax(torch.randn(3, H), torch.tensor(index), n)


# --- SpatialBias / PathEncodingBias dtypes and head counts -----------------------------------


def _spatial_layer() -> tuple[ga.GraphAttention, ga.TokenGraph, Tensor]:
    g, dist = ga.shortest_path_distances(torch.tensor([[0, 1], [1, 2]]), 3, max_distance=3)
    torch.manual_seed(0)
    score = ga.make_score("scaled_dot", H, D) + ga.SpatialBias(H, 3)
    layer = ga.GraphAttention(C, H, score=score).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    return layer, g, dist


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
@pytest.mark.parametrize("mapping", [False, True])
def test_spatial_bias_integer_dtypes_equal_int64(dtype: torch.dtype, mapping: bool) -> None:
    layer, g, dist = _spatial_layer()
    x = torch.randn(3, C, dtype=F64)
    attr = dist.to(dtype)
    got = layer(x, g, edge_attr={"distance": attr} if mapping else attr)
    torch.testing.assert_close(got, layer(x, g, edge_attr=dist), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bool, torch.float16, torch.float32, torch.float64])
def test_spatial_bias_refuses_bool_and_float_distances(dtype: torch.dtype) -> None:
    layer, g, dist = _spatial_layer()
    with pytest.raises(ValueError, match="integer tensor"):
        layer(torch.randn(3, C, dtype=F64), g, edge_attr=dist.to(dtype))


@pytest.mark.parametrize("value", [-2, -1, 5, 2**40])
def test_spatial_bias_refuses_distances_outside_its_table(value: int) -> None:
    layer, g, dist = _spatial_layer()
    with pytest.raises(ValueError, match="outside the table"):
        layer(torch.randn(3, C, dtype=F64), g, edge_attr=torch.full_like(dist, value))


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32, torch.float64])
def test_path_encoding_refuses_non_integer_lengths(dtype: torch.dtype) -> None:
    paths = ga.shortest_paths(torch.tensor([[0, 1], [1, 2]]), 3, max_distance=3, max_hops=2)
    inputs = paths.path_inputs(torch.randn(2, 4))
    layer = ga.GraphAttention(
        C, H, score=ga.make_score("scaled_dot", H, D) + ga.PathEncodingBias(4, H, 2)
    )
    with pytest.raises(ValueError, match="path_len"):
        layer(
            torch.randn(3, C),
            paths.graph,
            edge_attr={**inputs, "path_len": inputs["path_len"].to(dtype)},
        )


@pytest.mark.parametrize(
    "part",
    [
        lambda: ga.SpatialBias(3, 3),
        lambda: ga.SpatialBias(1, 3),
        lambda: ga.PathEncodingBias(4, 3, 2),
        lambda: ga.ALiBi(3),
        lambda: ga.RelativePositionBias(1),
        lambda: ga.EdgeFeatureBias(4, 3),
    ],
)
def test_a_bias_built_for_another_head_count_is_named(part: object) -> None:
    with pytest.raises(ValueError, match="num_heads=2"):
        ga.GraphAttention(C, H, score=ga.make_score("scaled_dot", H, D) + part())(  # type: ignore[operator]
            torch.randn(3, C), ga.complete_graph(3)
        )


@pytest.mark.parametrize("name", ["gat", "gatv2"])
def test_a_score_built_for_another_head_count_is_named(name: str) -> None:
    with pytest.raises(ValueError, match="num_heads=2"):
        ga.GraphAttention(C, H, score=ga.make_score(name, 4, 2))(
            torch.randn(3, C), ga.complete_graph(3)
        )


# --- graphs on another device than x ----------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "edge", "dense"])
@pytest.mark.parametrize("kind", ["complete", "causal", "window", "mask", "padding"])
def test_a_meta_graph_is_refused_by_name(backend: str, kind: str) -> None:
    g = _graphs(4)[kind].to("meta")
    with pytest.raises(ValueError, match="meta"):
        ga.GraphAttention(C, H, backend=backend)(torch.randn(4, C), g)


def test_meta_masks_in_the_drop_in_are_refused_by_name() -> None:
    mha, q = ga.GraphMultiheadAttention(C, H, batch_first=True), torch.randn(2, 3, C)
    with pytest.raises(ValueError, match="meta"):
        mha(q, q, q, attn_mask=torch.zeros(3, 3, dtype=torch.bool, device="meta"))
    with pytest.raises(ValueError, match="meta"):
        mha(q, q, q, key_padding_mask=torch.zeros(2, 3, dtype=torch.bool, device="meta"))


# --- immutability: in-place torch writes to edge_index, and writes into accessors -------------


def _write(ei: Tensor, how: str, n: int) -> None:
    new_src = (ei[0] + 1) % n  # [E] a permutation of each target's sources
    if how == "setitem":
        ei[0] = new_src
    elif how == "row_copy":
        ei[0].copy_(new_src)
    elif how == "detach":
        ei.detach()[0] = new_src
    elif how == "index_put":
        ei.index_put_((torch.zeros_like(new_src), torch.arange(new_src.numel())), new_src)
    else:
        ei.copy_(torch.stack([new_src, ei[1]]))


@pytest.mark.parametrize("how", ["setitem", "row_copy", "detach", "index_put", "copy"])
@pytest.mark.parametrize("kind", ["complete", "causal", "window", "mask"])
@pytest.mark.parametrize("backend", ["auto", "edge"])
def test_an_in_place_write_to_edge_index_is_seen(how: str, kind: str, backend: str) -> None:
    n = 5
    g = _graphs(n)[kind]
    torch.manual_seed(0)
    layer = ga.GraphAttention(C, H, backend=backend).double()
    x = torch.randn(n, C, dtype=F64)
    layer(x, g)  # fills the caches
    _write(g.edge_index, how, n)
    if (torch.stack([g.edge_index[1], g.edge_index[0]]).unique(dim=1).size(1)) != g.num_edges:
        pytest.skip("the write made duplicate edges; the dense reference has no multiplicity")
    torch.testing.assert_close(
        layer(x, g), _dense_reference(layer, x, _allowed(g)), atol=1e-12, rtol=0
    )


def test_positions_lengths_and_params_are_copies() -> None:
    g = ga.window_graph(lengths=[2, 3], window=1)
    g.positions().fill_(9)
    g.positions("src").fill_(9)
    g.params["window"] = 4
    assert g.positions().tolist() == [0, 1, 0, 1, 2] and g.params["window"] == 1
    assert g.lengths == (2, 3) and isinstance(g.lengths, tuple)


def test_the_docs_name_the_data_attribute_as_an_undetected_write() -> None:
    # edge_index.data has its own version counter: a write through it cannot be seen
    assert "edge_index.data" in " ".join((ga.TokenGraph.__doc__ or "").split())


# --- second order on every backend's default path ---------------------------------------------


def _penalty(f: object, x: Tensor) -> Tensor:
    x = x.clone().requires_grad_()
    (g1,) = torch.autograd.grad(f(x).pow(2).sum(), x, create_graph=True)  # type: ignore[operator]
    (g2,) = torch.autograd.grad(g1.pow(2).sum(), x)
    return g2


@pytest.mark.parametrize("backend", ["auto", "dense", "block", "edge"])
@pytest.mark.parametrize("kind", ["complete", "causal", "window", "mask", "padding"])
def test_gradient_penalty_equals_dense_reference(backend: str, kind: str) -> None:
    n = 5
    g = _graphs(n)[kind]
    torch.manual_seed(1)
    layer = ga.GraphAttention(C, H, backend=backend).double()
    x = torch.randn(n, C, dtype=F64)
    allowed = _allowed(g)
    got = _penalty(lambda a: layer(a, g), x)
    want = _penalty(lambda a: _dense_reference(layer, a, allowed), x)
    torch.testing.assert_close(got, want, atol=1e-11, rtol=1e-11)


def test_gradgradcheck_on_the_default_complete_path() -> None:
    torch.manual_seed(2)
    layer = ga.GraphAttention(4, 2).double()
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a: layer(a, ga.complete_graph(3)), (x,))


_MASKS = {
    "none": {},
    "padding": {"key_padding_mask": torch.tensor([[False, False, True, False], [False] * 4])},
    "bool": {"attn_mask": torch.ones(4, 4, dtype=torch.bool).triu(1)},
    "causal": {"attn_mask": torch.ones(4, 4, dtype=torch.bool).triu(1), "is_causal": True},
    "float": {
        "attn_mask": torch.randn(4, 4, dtype=F64, generator=torch.Generator().manual_seed(3))
    },
}


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("masks", list(_MASKS))
def test_drop_in_second_order_equals_torch(need_weights: bool, masks: str) -> None:
    torch.manual_seed(4)
    ref = torch.nn.MultiheadAttention(C, H, batch_first=True).double()
    mha = ga.GraphMultiheadAttention(C, H, batch_first=True).double()
    mha.load_state_dict(ref.state_dict())
    kw = _MASKS[masks]
    q = torch.randn(2, 4, C, dtype=F64)
    # torch's need_weights=False path (fused SDPA) has no double backward on CPU: its
    # need_weights=True path computes the same output and is the reference for both
    got = _penalty(lambda a: mha(a, a, a, need_weights=need_weights, **kw)[0], q)
    want = _penalty(lambda a: ref(a, a, a, need_weights=True, **kw)[0], q)
    torch.testing.assert_close(got, want, atol=1e-11, rtol=1e-11)


# --- the drop-in on empty inputs ---------------------------------------------------------------


@pytest.mark.parametrize(
    "L, S, B", [(0, 3, 2), (3, 0, 2), (3, 3, 0), (0, 0, 2), (0, 0, 0), (1, 1, 1)]
)
@pytest.mark.parametrize("masks", ["none", "bool", "causal", "float"])
@pytest.mark.parametrize("need_weights", [True, False])
def test_drop_in_empty_inputs_match_torch(
    L: int, S: int, B: int, masks: str, need_weights: bool
) -> None:
    torch.manual_seed(5)
    ref = torch.nn.MultiheadAttention(C, H, batch_first=True).double()
    mha = ga.GraphMultiheadAttention(C, H, batch_first=True).double()
    mha.load_state_dict(ref.state_dict())
    kw: dict[str, object] = {}
    if masks == "bool":
        kw = {"attn_mask": torch.ones(L, S, dtype=torch.bool).triu(1)}
    elif masks == "causal":
        kw = {"attn_mask": torch.ones(L, S, dtype=torch.bool).triu(1), "is_causal": True}
    elif masks == "float":
        kw = {"attn_mask": torch.zeros(L, S, dtype=F64)}
    q, k = torch.randn(B, L, C, dtype=F64), torch.randn(B, S, C, dtype=F64)
    want, want_w = ref(q, k, k, need_weights=need_weights, **kw)
    got, got_w = mha(q, k, k, need_weights=need_weights, **kw)
    assert got.shape == want.shape
    torch.testing.assert_close(got.nan_to_num(7.0), want.nan_to_num(7.0), atol=1e-12, rtol=0)
    if need_weights:
        assert got_w is not None and want_w is not None and got_w.shape == want_w.shape
    else:
        assert got_w is None and want_w is None


# --- shortest_path_distances against networkx ---------------------------------------------------


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[int], list[tuple[int, int]]]:
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    edges, offset = [], 0
    for s in sizes:
        pairs = st.tuples(st.integers(0, s - 1), st.integers(0, s - 1))
        edges += [(offset + a, offset + b) for a, b in draw(st.lists(pairs, max_size=2 * s))]
        offset += s
    return sizes, edges


@settings(max_examples=30, deadline=None)
@given(batches(), st.sampled_from([0, 1, 2, 3, 20]), st.booleans())
def test_shortest_path_distances_match_networkx(
    batch: tuple[list[int], list[tuple[int, int]]], max_distance: int, pass_batch: bool
) -> None:
    sizes, edges = batch
    n = sum(sizes)
    ids = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))  # [N]
    edge_index = torch.tensor(edges, dtype=torch.long).reshape(-1, 2).t().contiguous()  # [2, E_in]
    if len(sizes) > 1 or pass_batch:
        g, dist = ga.shortest_path_distances(edge_index, n, batch=ids, max_distance=max_distance)
    else:
        g, dist = ga.shortest_path_distances(edge_index, n, max_distance=max_distance)
    graph = nx.DiGraph(edges)
    graph.add_nodes_from(range(n))  # isolated nodes too
    hops = dict(nx.all_pairs_shortest_path_length(graph))
    want = {}
    for j in range(n):
        for i in range(n):
            if ids[i] == ids[j]:
                d = hops[j].get(i)
                want[(j, i)] = max_distance + 1 if d is None else min(d, max_distance)
    got = {(int(j), int(i)): int(d) for j, i, d in zip(*g.edge_index, dist)}
    assert got == want
    assert g.num_edges == sum(s * s for s in sizes)


@pytest.mark.parametrize("batch", [[-1, -1, 0], [0, 0, -1], [-2, -1, 0]])
def test_negative_batch_ids_are_named(batch: list[int]) -> None:
    with pytest.raises(ValueError, match="negative graph id"):
        ga.shortest_path_distances(torch.tensor([[0, 1], [1, 0]]), 3, batch=torch.tensor(batch))


@pytest.mark.parametrize("max_distance", [-1, 2**63 - 1, 10**30, True, 2.0])
def test_bad_max_distance_is_refused(max_distance: object) -> None:
    with pytest.raises(ValueError, match="max_distance"):
        ga.shortest_path_distances(torch.tensor([[0], [1]]), 2, max_distance=max_distance)  # type: ignore[arg-type]


def test_the_largest_max_distance_codes_no_path_without_overflow() -> None:
    _, dist = ga.shortest_path_distances(torch.tensor([[0], [1]]), 2, max_distance=2**63 - 2)
    assert dist.tolist() == [0, 2**63 - 1, 1, 0]  # 1 -> 0 has no path


# --- attention_html ---------------------------------------------------------------------------


@pytest.mark.parametrize("title", ["\ud800", "a\udfffb", "\udc00\ud800"])
def test_html_title_with_lone_surrogates_is_written(title: str, tmp_path: Path) -> None:
    out = tmp_path / "view.html"
    html = attention_html((torch.rand(1, 2, 3, 3),), ["a", "b", "c"], title=title, path=out)
    assert "\ufffd" in html and "\ufffd" in out.read_text(encoding="utf-8")


def test_html_refuses_an_over_large_input() -> None:
    big = torch.rand(1, 1, 2000, 2000)  # 4e6 values per layer, 3 layers > MAX_VALUES
    with pytest.raises(ValueError, match="too many"):
        attention_html((big, big, big), ["t"] * 2000)
