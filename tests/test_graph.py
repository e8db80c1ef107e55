"""TokenGraph, complete_graph and from_mask (gatattn/graph.py)."""

from __future__ import annotations

import pytest
import torch

import gatattn as ga
from gatattn.graph import validate_edge_index


def test_complete_graph_is_every_pair_sorted_by_target() -> None:
    g = ga.complete_graph(5)
    assert (g.num_src, g.num_dst, g.num_edges) == (5, 5, 25)
    assert g.structure == "complete" and g.lengths is None
    src, dst = g.edge_index
    assert torch.equal(dst, torch.arange(5).repeat_interleave(5))
    assert torch.equal(src, torch.arange(5).repeat(5))
    assert g.to_dense_mask().all()


def test_complete_graph_without_self_loops() -> None:
    g = ga.complete_graph(4, self_loops=False)
    assert g.num_edges == 12
    assert not (g.edge_index[0] == g.edge_index[1]).any()
    assert torch.equal(g.to_dense_mask(), ~torch.eye(4, dtype=torch.bool))


def test_batched_complete_graph_is_block_diagonal() -> None:
    g = ga.complete_graph(lengths=[3, 1, 4])
    assert g.num_edges == 9 + 1 + 16 and g.lengths == (3, 1, 4)
    expected = torch.block_diag(torch.ones(3, 3), torch.ones(1, 1), torch.ones(4, 4)).bool()
    assert torch.equal(g.to_dense_mask(), expected)
    assert g.positions().tolist() == [0, 1, 2, 0, 0, 1, 2, 3]
    assert g.sequence().tolist() == [0, 0, 0, 1, 2, 2, 2, 2]
    assert g.in_degree().tolist() == [3, 3, 3, 1, 4, 4, 4, 4]


def test_lengths_tensor_is_accepted() -> None:
    g = ga.complete_graph(lengths=torch.tensor([2, 3]))
    assert g.lengths == (2, 3) and g.num_edges == 13


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "either n or lengths"),
        ({"n": 3, "lengths": [3]}, "either n or lengths"),
        ({"n": 0}, "positive int, got 0"),
        ({"n": 2.5}, "positive int, got 2.5"),
        ({"lengths": []}, "at least one sequence"),
        ({"lengths": [3, 0]}, "got 0 in lengths"),
    ],
)
def test_complete_graph_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ga.complete_graph(**kwargs)


def test_from_mask_round_trip_and_sdpa_convention() -> None:
    mask = torch.tensor([[True, False, True], [False, False, False], [True, True, False]])
    g = ga.from_mask(mask)
    assert torch.equal(g.to_dense_mask(), mask)
    # mask[i, j] = True means query i attends key j: edge j -> i, i.e. (src=j, dst=i)
    assert g.edge_index[:, 0].tolist() == [0, 0] and g.edge_index[:, 1].tolist() == [2, 0]
    assert g.structure == "masked"
    assert ga.from_mask(torch.ones(3, 3, dtype=torch.bool)).structure == "complete"


def test_from_mask_bipartite() -> None:
    g = ga.from_mask(torch.ones(2, 5, dtype=torch.bool))
    assert (g.num_dst, g.num_src, g.num_edges) == (2, 5, 10)
    with pytest.raises(ValueError, match="bipartite graph has num_src=5 != num_dst=2"):
        _ = g.num_nodes


def test_from_mask_errors() -> None:
    with pytest.raises(TypeError, match="must be boolean .* got dtype torch.float32"):
        ga.from_mask(torch.ones(3, 3))
    with pytest.raises(
        ValueError, match=r"shape \[N_t, N_s\] or \[B, L_q, L_k\], got \[1, 2, 3, 3\]"
    ):
        ga.from_mask(torch.ones(1, 2, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"no empty dimension, got \[0, 3, 3\]"):
        ga.from_mask(torch.ones(0, 3, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="must be a torch.Tensor, got list"):
        ga.from_mask([[True]])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("edge_index", "exc", "match"),
    [
        ([[0, 1], [1, 0]], TypeError, "must be a torch.Tensor, got list"),
        (
            torch.tensor([[0.0, 1.0], [1.0, 0.0]]),
            TypeError,
            "dtype torch.long .* got torch.float32",
        ),
        (torch.tensor([[0, 1], [1, 0]], dtype=torch.int32), TypeError, "got torch.int32"),
        (torch.tensor([0, 1]), ValueError, r"shape \[2, E\], got \[2\]"),
        (torch.tensor([[0, 1, 2]] * 3), ValueError, r"shape \[2, E\], got \[3, 3\]"),
        (torch.tensor([[0, -3], [1, 0]]), ValueError, r"negative node index \(-3\)"),
        (torch.tensor([[0, 7], [1, 0]]), ValueError, "source index 7 but there are only 4 source"),
        (torch.tensor([[0, 1], [1, 9]]), ValueError, "target index 9 but there are only 4 target"),
    ],
)
def test_edge_index_validation(edge_index: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        validate_edge_index(edge_index, 4, 4)
    with pytest.raises(exc, match=match):
        ga.TokenGraph(edge_index, 4, 4)  # type: ignore[arg-type]


def test_as_token_graph() -> None:
    g = ga.complete_graph(3)
    assert ga.as_token_graph(g, 3, 3) is g
    raw = ga.as_token_graph(torch.tensor([[0, 2], [1, 1]]), 3, 2)
    assert (raw.num_src, raw.num_dst, raw.structure) == (3, 2, None)
    with pytest.raises(
        ValueError, match=r"graph has \(num_src, num_dst\)=\(3, 3\) but the inputs have 4"
    ):
        ga.as_token_graph(g, 4, 4)
    with pytest.raises(TypeError, match="got dict"):
        ga.as_token_graph({}, 3, 3)  # type: ignore[arg-type]


def test_token_graph_node_count_errors() -> None:
    with pytest.raises(ValueError, match="node counts must be >= 0"):
        ga.TokenGraph(torch.zeros(2, 0, dtype=torch.long), -1, 2)
    with pytest.raises(ValueError, match=r"lengths=\[2, 2\] sum to 4 but the graph has 5"):
        ga.TokenGraph(torch.zeros(2, 0, dtype=torch.long), 5, 5, lengths=[2, 2])


@pytest.mark.parametrize(
    ("kv", "lengths"), [([5, 9], [3, 3]), ([4, 4, 2], [3, 3]), ([10], [3, 3]), ([6, 4], None)]
)
def test_token_graph_kv_lengths_are_checked(kv: list[int], lengths: list[int] | None) -> None:
    with pytest.raises(ValueError, match=r"params\['kv_lengths'\]=\[.*must hold one key"):
        ga.TokenGraph(torch.zeros(2, 0, dtype=torch.long), 10, 6, lengths=lengths,
                      params={"kv_lengths": kv})  # fmt: skip
    with pytest.raises(ValueError, match="every sequence length must be >= 1, got -1"):
        ga.TokenGraph(torch.zeros(2, 0, dtype=torch.long), 10, 6, params={"kv_lengths": [-1, 11]})
    g = ga.TokenGraph(torch.zeros(2, 0, dtype=torch.long), 10, 6, lengths=[3, 3],
                      params={"kv_lengths": [4, 6]})  # fmt: skip
    assert g.sequence_lengths("src") == (4, 6)


def test_union_and_intersection_match_boolean_masks() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(6, 7, generator=gen) < 0.4
    b = torch.rand(6, 7, generator=gen) < 0.4
    ga_, gb = ga.from_mask(a), ga.from_mask(b)
    assert torch.equal((ga_ | gb).to_dense_mask(), a | b)
    assert torch.equal((ga_ & gb).to_dense_mask(), a & b)
    with pytest.raises(ValueError, match=r"equal node counts, got \(num_src, num_dst\)=\(7, 6\)"):
        _ = ga_ | ga.complete_graph(6)
    with pytest.raises(TypeError, match="needs another TokenGraph, got Tensor"):
        _ = ga_ & a


def test_edge_counts_keep_duplicates_and_csr_groups_by_target() -> None:
    ei = torch.tensor([[1, 0, 1, 2], [2, 0, 2, 0]])
    g = ga.TokenGraph(ei, 3, 3)
    assert g.edge_counts().tolist() == [[1, 0, 1], [0, 0, 0], [0, 2, 0]]
    rowptr, perm = g.csr()
    assert rowptr.tolist() == [0, 2, 2, 4]
    assert ei[1, perm].tolist() == [0, 0, 2, 2]
    again = g.csr()[0]  # cached, and handed out as a copy (a write cannot reach the cache)
    assert again is not rowptr and torch.equal(again, rowptr)


def test_to_device_and_repr() -> None:
    g = ga.complete_graph(lengths=[2, 2])
    assert g.to("cpu") is g
    assert "structure='complete'" in repr(g) and "lengths=[2, 2]" in repr(g)


def test_positions_of_a_bipartite_batch_use_the_key_lengths() -> None:
    g = ga.bipartite_graph([2, 3], [3, 2])
    assert g.positions("dst").tolist() == [0, 1, 0, 1, 2]
    assert g.positions("src").tolist() == [0, 1, 2, 0, 1]
    with pytest.raises(ValueError, match="side must be 'dst' or 'src', got 'keys'"):
        g.positions("keys")


# ---------------------------------------------------------------- immutability and the one cache
def test_graph_attributes_cannot_be_set() -> None:
    g = ga.complete_graph(4)
    for name, value in (("edge_index", g.edge_index.clone()), ("structure", "causal"), ("x", 1)):
        with pytest.raises(AttributeError, match=f"TokenGraph is immutable: cannot set '{name}'"):
            setattr(g, name, value)
    g.params["self_loops"] = False  # a copy: the graph's own params are unchanged
    assert g.params == {"self_loops": True}


def test_derived_values_are_cached_per_key_and_device() -> None:
    g = ga.window_graph(9, 2)
    calls: list[int] = []
    assert g.derived("k", lambda: calls.append(1) or 7) == 7
    assert g.derived("k", lambda: calls.append(1) or 8) == 7  # cached
    assert g.derived("k", lambda: 9, device=torch.device("meta")) == 9  # another device
    assert calls == [1]


def test_in_place_edit_clears_the_cache_and_the_trust() -> None:
    """Changing edge_index in place after a first use never gives a stale answer."""
    layer = ga.GraphAttention(21, 3, backend="block").double()
    edge = ga.GraphAttention(21, 3, backend="edge").double()
    edge.load_state_dict(layer.state_dict())
    g = ga.window_graph(37, 3)
    x = torch.randn(37, 21, dtype=torch.float64)
    layer(x, g)  # fills the block layout cache
    assert g.trusted_structure() is None  # "window" is not a tag a backend relies on
    with torch.no_grad():
        g.edge_index[0] = torch.flip(g.edge_index[0], [0])
    torch.testing.assert_close(layer(x, g), edge(x, g), atol=1e-10, rtol=1e-10)
    c = ga.complete_graph(6)
    assert c.trusted_structure() == "complete"
    c.edge_index[0, 0] = 5  # the claim no longer holds
    assert c.trusted_structure() is None


@pytest.mark.parametrize(
    ("build", "tag"),
    [
        (lambda: ga.complete_graph(lengths=[3, 5]), "complete"),
        (lambda: ga.complete_graph(6, self_loops=False), "complete"),
        (lambda: ga.causal_graph(lengths=[4, 2]), "causal"),
        (lambda: ga.bipartite_graph([2, 3], [4, 1]), "bipartite"),
    ],
)
def test_user_structure_claims_are_verified(build, tag: str) -> None:
    b = build()
    same = ga.TokenGraph(
        b.edge_index.clone(), b.num_src, b.num_dst, structure=tag, lengths=b.lengths,
        params=b.params,
    )  # fmt: skip
    assert same.trusted_structure() == tag
    shuffled = b.edge_index[
        :, torch.randperm(b.num_edges, generator=torch.Generator().manual_seed(1))
    ]
    unsorted = ga.TokenGraph(
        shuffled, b.num_src, b.num_dst, structure=tag, lengths=b.lengths, params=b.params
    )
    assert unsorted.trusted_structure() is None  # not in (target, source) order: not trusted
    moved = b.edge_index.clone()
    moved[0, -1] = (moved[0, -1] + 1) % b.num_src
    wrong = ga.TokenGraph(
        moved, b.num_src, b.num_dst, structure=tag, lengths=b.lengths, params=b.params
    )
    assert wrong.trusted_structure() is None


def test_false_complete_claim_is_not_used_by_dense() -> None:
    gen = torch.Generator().manual_seed(0)
    ei = torch.randint(0, 6, (2, 36), generator=gen)
    g = ga.TokenGraph(ei, 6, 6, structure="complete")
    layer = ga.GraphAttention(21, 3)
    assert layer.explain_backend(torch.zeros(6, 21), g).startswith("edge: ")
    with pytest.raises(ValueError, match="tag does not match its edges"):
        ga.GraphAttention(21, 3, backend="dense")(torch.randn(6, 21), g)
    q = torch.randn(6, 3, 7)
    with pytest.raises(ValueError, match="dense backend cannot run .* tag does not match"):
        ga.backends.BACKENDS["dense"].run(
            ga.backends.Problem(q, q, q, g, ga.make_score("dot", 3, 7))
        )
    x = torch.randn(6, 21)
    torch.testing.assert_close(layer(x, g), layer(x, ga.TokenGraph(ei, 6, 6)), atol=0, rtol=0)


@pytest.mark.parametrize("build", [lambda: ga.complete_graph(5), lambda: ga.causal_graph(5)])
def test_batch_never_changes_the_neighbourhoods(build) -> None:
    g = build()
    layer = ga.GraphAttention(21, 3).double()
    edge = ga.GraphAttention(21, 3, backend="edge").double()
    edge.load_state_dict(layer.state_dict())
    x, batch = torch.randn(5, 21, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 1])
    torch.testing.assert_close(layer(x, g, batch=batch), edge(x, g), atol=1e-10, rtol=1e-10)


# ---------------------------------------------------------------- issue 11: no silent coercion
@pytest.mark.parametrize(
    ("lengths", "exc", "match"),
    [
        (
            [2.5, 3],
            TypeError,
            r"every sequence length must be an int, got 2.5 \(float\) in lengths=\[2.5, 3\]",
        ),
        ([2.0, 3], TypeError, r"every sequence length must be an int, got 2.0 \(float\)"),
        (
            "23",
            TypeError,
            r"lengths must be a sequence of ints \(one per sequence\), got '23' \(str\)",
        ),
        ([True, 2], TypeError, r"every sequence length must be an int, got True \(bool\)"),
        (5, TypeError, r"lengths must be a sequence of ints .* got 5 \(int\)"),
        (
            torch.tensor([2.0, 3.0]),
            TypeError,
            "lengths must hold integers, got a tensor of dtype torch.float32",
        ),
        (torch.tensor([True]), TypeError, "got a tensor of dtype torch.bool"),
        (
            torch.tensor([[2, 3]]),
            ValueError,
            r"lengths must be a 1-D tensor \[B\], got shape \[1, 2\]",
        ),
    ],
)
def test_lengths_are_never_coerced(lengths: object, exc: type, match: str) -> None:
    """``[2.5, 3]``, ``"23"`` and ``[True, 2]`` used to become (2, 3), (2, 3) and (1, 2)."""
    with pytest.raises(exc, match=match):
        ga.complete_graph(lengths=lengths)  # type: ignore[arg-type]
    with pytest.raises(exc, match=match):
        ga.TokenGraph(torch.zeros(2, 0, dtype=torch.long), 5, 5, lengths=lengths)  # type: ignore[arg-type]


def test_numpy_lengths_and_node_counts_are_integers() -> None:
    np = pytest.importorskip("numpy")
    g = ga.complete_graph(lengths=np.array([2, 3]))
    assert g.lengths == (2, 3) and g.num_edges == 13
    t = ga.TokenGraph(torch.tensor([[0], [1]]), np.int64(4), np.int32(3))
    assert (t.num_src, t.num_dst) == (4, 3) and type(t.num_src) is int


@pytest.mark.parametrize("arg", ["num_src", "num_dst"])
@pytest.mark.parametrize("value", [5.7, 5.0, True, "5", torch.tensor(5)])
def test_node_counts_must_be_integers(arg: str, value: object) -> None:
    """``TokenGraph(ei, num_src=5.7)`` used to truncate to 5 and fail later inside ops.py."""
    ei = torch.tensor([[0], [1]])
    with pytest.raises(TypeError, match=rf"{arg} must be an int >= 0 or None, got "):
        ga.TokenGraph(ei, **{arg: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "build",
    [
        lambda: ga.complete_graph(lengths=[3, 2]),
        lambda: ga.causal_graph(4),
        lambda: ga.from_padding_mask(torch.tensor([[False, True], [False, False]])),
        lambda: ga.from_mask(torch.tensor([[True, False], [True, True]])),
        lambda: ga.window_graph(6, 1),
    ],
    ids=["complete", "causal", "padding", "mask", "window"],
)
def test_graphs_pickle_and_deepcopy(build) -> None:
    """Builders defer their edges with a closure; a pickled or copied graph carries the edges,
    the tag and its trust, and a mask graph its mask."""
    import copy
    import pickle

    g = build()
    for h in (pickle.loads(pickle.dumps(g)), copy.deepcopy(g)):
        assert torch.equal(h.edge_index, g.edge_index)
        assert (h.num_src, h.num_dst, h.structure, h.lengths) == (
            g.num_src,
            g.num_dst,
            g.structure,
            g.lengths,
        )
        assert h.trusted_structure() == g.trusted_structure()
        m, hm = g.dense_mask(), h.dense_mask()
        assert (m is None and hm is None) or torch.equal(m, hm)
    g2 = build()
    _ = g2.edge_index
    g2.edge_index[0, 0] += 1  # an edit withdraws the trust, in the copy too
    assert pickle.loads(pickle.dumps(g2)).trusted_structure() is None
    assert pickle.loads(pickle.dumps(g2)).dense_mask() is None


def _attend(graph: ga.TokenGraph, backend: str) -> torch.Tensor:
    torch.manual_seed(0)
    layer = ga.GraphAttention(6, 2, backend=backend).double()
    x = torch.randn(
        graph.num_dst, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    return layer(x, graph)


@pytest.mark.parametrize("compact", [True, False])
def test_writing_into_dense_mask_leaves_the_graph_alone(compact: bool) -> None:
    """``dense_mask(compact=True)`` used to return the graph's own tensor: a write into it made
    the dense backend (which reads the mask) and the edge backend (the edges) disagree."""
    mask = torch.tensor(
        [[[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1], [0, 0, 1, 1]]], dtype=torch.bool
    )
    g = ga.from_mask(mask)
    before = _attend(g, "dense")
    got = g.dense_mask(compact=compact)
    assert got is not None
    got.fill_(True)  # a write through the public accessor
    torch.testing.assert_close(_attend(g, "dense"), before, atol=0, rtol=0)
    torch.testing.assert_close(_attend(g, "edge"), before, atol=1e-12, rtol=0)
    assert torch.equal(g.dense_mask(), mask)


def test_writing_into_csr_leaves_the_cache_alone() -> None:
    g = ga.window_graph(6, 1)
    rowptr, perm = g.csr()
    rowptr.zero_()
    perm.zero_()
    again = g.csr()
    assert again[0][-1] == g.num_edges and torch.equal(
        again[1].sort().values, torch.arange(g.num_edges)
    )
