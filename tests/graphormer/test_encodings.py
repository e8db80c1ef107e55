"""Graphormer's encodings equal their paper formulas (Ying et al. 2021), fp64, forward and
gradients, against dense references written here with torch's own attention (SDPA) and
networkx's distances and paths.

    spatial    α_ij = <q_i, k_j>/√D + b_{φ(j → i)}                        (Sec. 3.1.2, eq. 6)
    edge/path  c_ij = (1/N) Σ_n <x_{e_n}, w_n>, first N = min(φ, M) edges   (Sec. 3.1.3, eq. 7)
    degree     h_i = x_i + z⁻_{deg⁻(i)} + z⁺_{deg⁺(i)}                     (Sec. 3.1.1, eq. 5)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

import gatattn as ga
from gatattn.scores import Edges

pytestmark = pytest.mark.usefixtures("one_thread")

H, D, MAXD = 3, 5, 4
C = H * D


def _batch() -> tuple[Tensor, list[int], Tensor]:
    """Three graphs: a directed cycle with a tail (6 nodes, a clipped distance, unreachable
    pairs), one isolated node, and an undirected path with an isolated node (4 nodes)."""
    a = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 1)]
    c = [(0, 1), (1, 0), (1, 2), (2, 1)]
    edges = a + [(7 + j, 7 + i) for j, i in c]
    sizes = [6, 1, 4]
    batch = torch.arange(3).repeat_interleave(torch.tensor(sizes))
    return torch.tensor(edges).t(), sizes, batch


def _nx_dist(ei: Tensor, n: int, nodes: list[int], max_distance: int) -> Tensor:
    """[n_b, n_b] hop distances, row = target i, column = source j (networkx)."""
    G = nx.DiGraph()
    G.add_nodes_from(range(n))
    G.add_edges_from(ei.t().tolist())
    length = dict(nx.all_pairs_shortest_path_length(G))  # length[j][i]: hops j -> i

    def phi(i: int, j: int) -> int:
        d = length[j].get(i)
        return max_distance + 1 if d is None else min(d, max_distance)

    return torch.tensor([[phi(i, j) for j in nodes] for i in nodes])


def _grads(out: Tensor, params: list[Tensor]) -> tuple[Tensor, ...]:
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    return torch.autograd.grad((out * w).sum(), params)


# ------------------------------------------------------------------ spatial encoding
@pytest.mark.parametrize("backend", ["auto", "edge"])
def test_spatial_bias_equals_dense_formula(
    backend: str, dense_attention: Callable[..., Tensor]
) -> None:
    ei, sizes, batch = _batch()
    g, dist = ga.shortest_path_distances(ei, 11, batch=batch, max_distance=MAXD)
    bias = ga.SpatialBias(H, MAXD)
    layer = ga.GraphAttention(C, H, score=ga.make_score("scaled_dot", H, D) + bias, backend=backend)
    layer = layer.double()
    with torch.no_grad():
        bias.weight.normal_(0, 1.0)
    x = torch.randn(11, C, dtype=torch.float64, requires_grad=True)
    out = layer(x, g, edge_attr=dist)
    assert layer.explain_backend(x, g).startswith("dense" if backend == "auto" else "edge")
    dense, start = [], 0
    for n in sizes:
        d = _nx_dist(ei, 11, list(range(start, start + n)), MAXD)  # [n, n]
        dense.append(bias.weight[d].permute(2, 0, 1))  # b[h, i, j] = W[φ(j → i), h]
        start += n
    ref = dense_attention(layer, x, sizes, dense)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    params = [x, bias.weight, layer.in_proj_weight]
    for a, b in zip(_grads(out, params), _grads(ref, params)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    # the mapping form reads "distance"
    torch.testing.assert_close(
        layer(x, g, edge_attr={"distance": dist, "other": dist}), out, atol=1e-10, rtol=0
    )


def test_auto_runs_spatial_bias_on_sdpa_equal_to_the_edge_backend() -> None:
    """The fast path (one SDPA call, the bias scattered into its mask) equals the reference."""
    ei, _, batch = _batch()
    g, dist = ga.shortest_path_distances(ei, 11, batch=batch, max_distance=MAXD)
    torch.manual_seed(3)
    fast = ga.GraphormerLayer(C, H, max_distance=MAXD).double()
    ref = ga.GraphormerLayer(C, H, max_distance=MAXD, backend="edge").double()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(11, C, dtype=torch.float64, requires_grad=True)
    assert fast.self_attn.explain_backend(x, g).startswith("dense: graph inside its sequences")
    a, b = fast(x, g, dist), ref(x, g, dist)
    torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    params = [x, *fast.parameters()]
    ga_ = torch.autograd.grad(a.square().sum(), params)
    gb_ = torch.autograd.grad(b.square().sum(), [x, *ref.parameters()])
    for u, v in zip(ga_, gb_):
        torch.testing.assert_close(u, v, atol=1e-10, rtol=0)


def test_spatial_bias_rows_and_gradcheck() -> None:
    bias = ga.SpatialBias(H, MAXD).double()
    assert bias.weight.shape == (MAXD + 2, H)
    g = ga.complete_graph(3)
    dist = torch.tensor([0, 1, 5, 2, 0, 4, 3, 1, 0])
    edges = Edges(g.edge_index[0], g.edge_index[1], g, dist)
    torch.testing.assert_close(
        bias(edges), bias.weight[dist], atol=1e-10, rtol=0
    )  # row d = bias of d
    w = bias.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: functional_call(bias, {"weight": t}, (edges,)), (w,))


def test_spatial_bias_in_the_registry() -> None:
    layer = ga.GraphAttention(C, H, score="scaled_dot+spatial")
    _, biases = layer.score.parts()
    assert isinstance(biases[0], ga.SpatialBias) and biases[0].max_distance == 20
    g, dist = ga.shortest_path_distances(torch.tensor([[0], [1]]), 2)
    assert layer(torch.randn(2, C), g, edge_attr=dist).shape == (2, C)


@pytest.mark.parametrize(
    ("dist", "match"),
    [
        (torch.tensor([0, 1, 6, 0]), r"values in \[0, 6\], outside the table .* \(valid: 0..5\)"),
        (torch.tensor([0, -1, 1, 0]), r"values in \[-1, 1\], outside the table"),
        (torch.tensor([0.0, 1.0, 1.0, 0.0]), "must be an integer tensor"),
        (torch.zeros(4, 2, dtype=torch.long), "must be an integer tensor"),
        # bool used to be read as 0/1 hops, silently
        (torch.tensor([False, True, True, False]), "integer tensor .* got dtype torch.bool"),
        (torch.tensor([[False], [True], [True], [False]]), "got dtype torch.bool"),
    ],
)
def test_spatial_bias_bad_distances(dist: Tensor, match: str) -> None:
    g = ga.complete_graph(2)
    layer = ga.GraphAttention(
        C, H, score=ga.make_score("scaled_dot", H, D) + ga.SpatialBias(H, MAXD)
    )
    with pytest.raises(ValueError, match=match):
        layer(torch.randn(2, C), g, edge_attr=dist)


def test_spatial_bias_missing_distances_and_bad_args() -> None:
    g = ga.complete_graph(2)
    layer = ga.GraphAttention(C, H, score="scaled_dot+spatial")
    with pytest.raises(ValueError, match="SpatialBias needs the hop distances"):
        layer(torch.randn(2, C), g)
    with pytest.raises(ValueError, match=r"reads edge_attr\['distance'\]"):
        layer(torch.randn(2, C), g, edge_attr={"dist": torch.zeros(4, dtype=torch.long)})
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="max_distance must be an int >= 0"):
            ga.SpatialBias(H, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_heads must be an int >= 1"):
        ga.SpatialBias(0, 3)


# ------------------------------------------------------------------ edge (path) encoding
def _tree_batch() -> tuple[Tensor, list[int], Tensor]:
    """A directed forest (unique shortest paths): an out-tree of 7 nodes and a path of 3 stored
    both ways, plus an isolated node."""
    t = [(0, 1), (0, 2), (1, 3), (3, 4), (4, 5), (2, 6)]
    p = [(0, 1), (1, 0), (1, 2), (2, 1)]
    edges = t + [(7 + j, 7 + i) for j, i in p]
    sizes = [7, 4]
    batch = torch.arange(2).repeat_interleave(torch.tensor(sizes))
    return torch.tensor(edges).t(), sizes, batch


@pytest.mark.parametrize("max_hops", [2, 5])
def test_path_encoding_equals_paper_formula(
    max_hops: int, dense_attention: Callable[..., Tensor]
) -> None:
    ei, sizes, batch = _tree_batch()
    F_ = 4
    feats = torch.randn(ei.size(1), F_, dtype=torch.float64, requires_grad=True)
    res = ga.shortest_paths(ei, 11, batch=batch, max_distance=MAXD, max_hops=max_hops)
    spatial, path = ga.SpatialBias(H, MAXD), ga.PathEncodingBias(F_, H, max_hops)
    score = ga.make_score("scaled_dot", H, D) + spatial + path
    layer = ga.GraphAttention(C, H, score=score).double()
    with torch.no_grad():
        path.weight.normal_(0, 1.0)
    x = torch.randn(11, C, dtype=torch.float64, requires_grad=True)
    out = layer(x, res.graph, edge_attr=res.path_inputs(feats))
    assert layer.explain_backend(x, res.graph).startswith("dense")  # biases scattered into SDPA

    G = nx.DiGraph(ei.t().tolist())
    G.add_nodes_from(range(11))
    eid = {tuple(e): k for k, e in enumerate(ei.t().tolist())}
    dense, start = [], 0
    for n in sizes:
        nodes = list(range(start, start + n))
        b = spatial.weight[_nx_dist(ei, 11, nodes, MAXD)].permute(2, 0, 1)  # [H, n, n]
        c = torch.zeros(H, n, n, dtype=torch.float64)
        for a, i in enumerate(nodes):
            for bb, j in enumerate(nodes):
                if i == j or not nx.has_path(G, j, i):
                    continue
                hops = nx.shortest_path(G, j, i)
                es = [eid[(u, v)] for u, v in itertools.pairwise(hops)][:max_hops]  # e_1..e_N
                total = sum(path.weight[m] @ feats[e] for m, e in enumerate(es))  # [H]
                c[:, a, bb] = total / len(es)
        dense.append(b + c)
        start += n
    ref = dense_attention(layer, x, sizes, dense)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    params = [x, feats, path.weight, spatial.weight]
    for ga_, gb_ in zip(_grads(out, params), _grads(ref, params)):
        torch.testing.assert_close(ga_, gb_, atol=1e-10, rtol=0)


def test_path_encoding_gradcheck() -> None:
    g = ga.complete_graph(3)
    bias = ga.PathEncodingBias(2, H, 3).double()
    length = torch.tensor([0, 1, 2, 3, 0, 1, 5, 2, 0])  # 5 > M: the first M hops, divided by M

    def f(attr: Tensor, weight: Tensor) -> Tensor:
        e = Edges(g.edge_index[0], g.edge_index[1], g, {"path_attr": attr, "path_len": length})
        return functional_call(bias, {"weight": weight}, (e,))

    feats = torch.randn(9, 3, 2, dtype=torch.float64, requires_grad=True)
    w = bias.weight.detach().clone().requires_grad_()
    used = (torch.arange(3)[None, :] < length[:, None]).double()  # [E, M]
    ref = torch.einsum("emf,mhf->eh", feats * used[..., None], w) / length.clamp(1, 3)[:, None]
    torch.testing.assert_close(f(feats, w), ref, atol=1e-10, rtol=0)
    assert torch.autograd.gradcheck(f, (feats, w))


@pytest.mark.parametrize(
    ("attr", "match"),
    [
        ({"distance": torch.zeros(4, dtype=torch.long)}, "PathEncodingBias reads"),
        (
            {"path_attr": torch.zeros(4, 2, 3), "path_len": torch.zeros(4, dtype=torch.long)},
            r"path_attr'\] must be \[E, >= max_hops=2, edge_dim=2\]",
        ),
        (
            {"path_attr": torch.zeros(4, 1, 2), "path_len": torch.zeros(4, dtype=torch.long)},
            "must be",
        ),
        ({"path_attr": torch.zeros(4, 2, 2), "path_len": torch.zeros(4)}, "must be an integer"),
        (
            {"path_attr": torch.zeros(4, 2, 2), "path_len": torch.ones(4, dtype=torch.bool)},
            r"must be an integer tensor \[E\], got torch.bool",
        ),
        (
            {"path_attr": torch.zeros(4, 2, 2), "path_len": -torch.ones(4, dtype=torch.long)},
            "negative length -1",
        ),
    ],
)
def test_path_encoding_bad_inputs(attr: dict, match: str) -> None:
    score = ga.make_score("scaled_dot", H, D) + ga.PathEncodingBias(2, H, 2)
    layer = ga.GraphAttention(C, H, score=score)
    with pytest.raises(ValueError, match=match):
        layer(torch.randn(2, C), ga.complete_graph(2), edge_attr=attr)


def test_path_encoding_bad_args() -> None:
    with pytest.raises(ValueError, match="edge_dim must be an int >= 1"):
        ga.PathEncodingBias(0, H)
    with pytest.raises(ValueError, match="max_hops must be an int >= 1"):
        ga.PathEncodingBias(2, H, 0)


# ------------------------------------------------------------------ centrality encoding
@pytest.mark.parametrize("directed", [True, False])
def test_degree_encoding_equals_paper_formula(directed: bool) -> None:
    ei = torch.tensor([[0, 0, 1, 2, 2, 2, 2, 3], [1, 2, 2, 0, 1, 3, 3, 4]])  # a duplicate 2 -> 3
    N_, K = 6, 2
    enc = ga.DegreeEncoding(C, K, directed=directed).double()
    x = torch.randn(N_, C, dtype=torch.float64, requires_grad=True)
    out = enc(x, ei)
    A = torch.zeros(N_, N_, dtype=torch.float64)
    A.index_put_((ei[1], ei[0]), torch.ones(ei.size(1), dtype=torch.float64), accumulate=True)
    deg_in, deg_out = A.sum(1).long(), A.sum(0).long()  # [N]: rows = targets
    assert deg_in.tolist() == [1, 2, 2, 2, 1, 0] and deg_out.tolist() == [2, 1, 4, 1, 0, 0]
    one = lambda d: F.one_hot(d.clamp(max=K), K + 1).double()  # noqa: E731
    ref = x + one(deg_in) @ enc.in_embedding.weight
    params = [x, enc.in_embedding.weight]
    if directed:
        assert enc.out_embedding is not None
        ref = ref + one(deg_out) @ enc.out_embedding.weight
        params.append(enc.out_embedding.weight)
    else:
        assert enc.out_embedding is None
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    for a, b in zip(_grads(out, params), _grads(ref, params)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_degree_encoding_bad_input() -> None:
    with pytest.raises(ValueError, match="max_degree must be an int >= 0"):
        ga.DegreeEncoding(C, -1)
    with pytest.raises(ValueError, match="embed_dim must be an int >= 1"):
        ga.DegreeEncoding(0)
    enc = ga.DegreeEncoding(C)
    with pytest.raises(ValueError, match=r"x must be \[N, embed_dim=15\]"):
        enc(torch.randn(3, 4), torch.tensor([[0], [1]]))
    with pytest.raises(ValueError, match="edge_index has target index 3"):
        enc(torch.randn(3, C), torch.tensor([[0], [3]]))
