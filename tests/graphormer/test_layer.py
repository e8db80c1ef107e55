"""GraphormerLayer (pre-LN, biased attention, FFN), the virtual graph token, and the PyG
transform, against references written here with torch's SDPA (fp64)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Batch, Data

import gatattn as ga

pytestmark = pytest.mark.usefixtures("one_thread")

H, D, MAXD = 3, 5, 3
C = H * D


def _inputs() -> tuple[Tensor, list[int], Tensor]:
    """Two graphs: a directed 5-cycle with a chord, and an undirected 3-path plus an isolated node."""
    a = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0), (0, 3)]
    b = [(0, 1), (1, 0), (1, 2), (2, 1)]
    ei = torch.tensor(a + [(5 + j, 5 + i) for j, i in b]).t()
    return ei, [5, 4], torch.tensor([0] * 5 + [1] * 4)


def _spatial_blocks(bias: ga.SpatialBias, dist: Tensor, sizes: list[int]) -> list[Tensor]:
    blocks, start = [], 0
    for n in sizes:
        d = dist[start : start + n * n].view(
            n, n
        )  # [i, j] (distances tested in test_shortest_path)
        blocks.append(bias.weight[d].permute(2, 0, 1))  # [H, n, n]
        start += n * n
    return blocks


def _randomise(m: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)


def test_graphormer_layer_equals_pre_ln_reference(dense_attention: Callable[..., Tensor]) -> None:
    ei, sizes, batch = _inputs()
    g, dist = ga.shortest_path_distances(ei, 9, batch=batch, max_distance=MAXD)
    layer = ga.GraphormerLayer(C, H, max_distance=MAXD, ffn_dim=7).double()
    _randomise(layer)
    x = torch.randn(9, C, dtype=torch.float64, requires_grad=True)
    out = layer(x, g, dist)
    attn = layer.self_attn
    _, (spatial,) = attn.score.parts()
    assert isinstance(spatial, ga.SpatialBias)
    # h' = x + MHA(LN(x));  h = h' + W_2 GELU(W_1 LN(h'))       (Ying et al. 2021, eqs. 8-9)
    ln1 = F.layer_norm(x, (C,), layer.norm1.weight, layer.norm1.bias)
    h1 = x + dense_attention(attn, ln1, sizes, _spatial_blocks(spatial, dist, sizes))
    ln2 = F.layer_norm(h1, (C,), layer.norm2.weight, layer.norm2.bias)
    ref = h1 + layer.linear2(F.gelu(layer.linear1(ln2)))
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    params = [x, *layer.parameters()]
    w = torch.randn_like(out)
    for a, b in zip(
        torch.autograd.grad((out * w).sum(), params), torch.autograd.grad((ref * w).sum(), params)
    ):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_graphormer_layer_with_path_encoding_and_token_runs_and_learns() -> None:
    ei, _, batch = _inputs()
    res = ga.shortest_paths(ei, 9, batch=batch, max_distance=MAXD, max_hops=2)
    feats = torch.randn(ei.size(1), 4)
    layer = ga.GraphormerLayer(C, H, max_distance=MAXD, edge_dim=4, max_hops=2, graph_token=True)
    token = ga.GraphToken(C)
    tok = token(torch.randn(9, C), res.graph, res.path_inputs(feats))
    out = layer(tok.x, tok.graph, tok.edge_attr)
    assert out.shape == (11, C)
    out[tok.token_index].sum().backward()
    assert all(p.grad is not None for p in layer.parameters())
    assert token.embedding.grad is not None
    assert "graph_token=True" in repr(layer) and "GraphormerLayer" in repr(layer)


def test_graph_token_equals_dense_reference(dense_attention: Callable[..., Tensor]) -> None:
    ei, sizes, batch = _inputs()
    g, dist = ga.shortest_path_distances(ei, 9, batch=batch, max_distance=MAXD)
    spatial = ga.SpatialBias(H, MAXD, graph_token=True)
    layer = ga.GraphAttention(C, H, score=ga.make_score("scaled_dot", H, D) + spatial).double()
    token = ga.GraphToken(C).double()
    _randomise(layer)
    _randomise(token)
    x = torch.randn(9, C, dtype=torch.float64, requires_grad=True)
    tok = token(x, g, dist)
    assert tok.token_index.tolist() == [0, 6] and tok.graph.lengths == (6, 5)
    assert tok.node_index.tolist() == [1, 2, 3, 4, 5, 7, 8, 9, 10]
    out = layer(tok.x, tok.graph, edge_attr=tok.edge_attr)
    # reference: [t; x_b] per graph; token row and column get t_h, the rest b_φ   (Sec. 3.1.3)
    assert spatial.token_weight is not None
    xs, blocks, start = [], [], 0
    for n, blk in zip(sizes, _spatial_blocks(spatial, dist, sizes)):
        xs += [token.embedding[None], x[start : start + n]]
        full = spatial.token_weight[:, None, None].expand(H, n + 1, n + 1).clone()
        full[:, 1:, 1:] = blk
        blocks.append(full)
        start += n
    ref = dense_attention(layer, torch.cat(xs), [n + 1 for n in sizes], blocks)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    params = [x, token.embedding, spatial.weight, spatial.token_weight]
    w = torch.randn_like(out)
    for a, b in zip(
        torch.autograd.grad((out * w).sum(), params), torch.autograd.grad((ref * w).sum(), params)
    ):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_graph_token_bad_input() -> None:
    token = ga.GraphToken(C)
    g, dist = ga.shortest_path_distances(torch.tensor([[0], [1]]), 2)
    with pytest.raises(ValueError, match="graph must be the complete graph"):
        token(torch.randn(2, C), ga.TokenGraph(torch.tensor([[0], [1]]), 2, 2), dist[:1])
    with pytest.raises(ValueError, match=r"x must be \[N=2, C=15\]"):
        token(torch.randn(3, C), g, dist)
    with pytest.raises(ValueError, match=r"edge_attr\['distance'\] has shape \[3\]"):
        token(torch.randn(2, C), g, dist[:3])
    with pytest.raises(ValueError, match="embed_dim must be an int >= 1"):
        ga.GraphToken(0)
    # without graph_token=True, the token's distance code is outside the table
    tok = token(torch.randn(2, C), g, dist)
    layer = ga.GraphormerLayer(C, H)
    with pytest.raises(ValueError, match=r"values in \[-1, 21\], outside the table"):
        layer(tok.x, tok.graph, tok.edge_attr)


def test_graphormer_layer_bad_args() -> None:
    with pytest.raises(ValueError, match="ffn_dim must be a positive int"):
        ga.GraphormerLayer(C, H, ffn_dim=0)
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        ga.GraphormerLayer(C, 0)
    with pytest.raises(ValueError, match="max_distance must be an int >= 0"):
        ga.GraphormerLayer(C, H, max_distance=-1)


# ------------------------------------------------------------------ the PyG transform
def _data(seed: int, n: int) -> Data:
    gen = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, 2 * n), generator=gen)
    return Data(edge_index=ei, edge_attr=torch.randn(ei.size(1), 3, generator=gen), num_nodes=n)


def test_transform_matches_the_batched_call() -> None:
    tf = ga.AddShortestPaths(max_distance=4, max_hops=2)
    graphs = [tf(_data(s, n)) for s, n in [(0, 5), (1, 1), (2, 7)]]
    batch = Batch.from_data_list(graphs)
    res = ga.shortest_paths(
        batch.edge_index, batch.num_nodes, batch=batch.batch, max_distance=4, max_hops=2
    )
    assert batch.spd.equal(res.distance)
    inputs = res.path_inputs(batch.edge_attr)
    assert batch.path_attr.equal(inputs["path_attr"]) and batch.path_len.equal(inputs["path_len"])
    g = ga.AddShortestPaths.graph(batch)
    assert g.edge_index.equal(res.graph.edge_index) and g.lengths == (5, 1, 7)
    assert ga.AddShortestPaths.graph(graphs[0]).num_edges == 25
    layer = ga.GraphormerLayer(C, H, max_distance=4)
    assert layer(torch.randn(13, C), g, batch.spd).shape == (13, C)
    assert repr(tf) == "AddShortestPaths(max_distance=4, max_hops=2)"
    no_edges = tf(Data(num_nodes=2))
    assert no_edges.spd.tolist() == [0, 5, 5, 0]


def test_transform_bad_args() -> None:
    with pytest.raises(ValueError, match="max_distance must be an int >= 0"):
        ga.AddShortestPaths(max_distance=-1)
    with pytest.raises(ValueError, match="max_hops must be an int >= 0"):
        ga.AddShortestPaths(max_hops=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a graph with >= 1 node"):
        ga.AddShortestPaths()(Data(edge_index=torch.empty(2, 0, dtype=torch.long), num_nodes=0))
    with pytest.raises(ValueError, match=r"max_distance must be at most 2\*\*63 - 2"):
        ga.AddShortestPaths(max_distance=2**63 - 1)


def test_transform_graph_refuses_negative_batch_ids() -> None:
    """A negative id in data.batch used to crash inside torch.bincount."""
    data = Data(edge_index=torch.empty(2, 0, dtype=torch.long), num_nodes=3)
    data.batch = torch.tensor([-1, 0, 0])
    with pytest.raises(
        ValueError, match=r"AddShortestPaths.graph: batch holds a negative graph id \(-1"
    ):
        ga.AddShortestPaths.graph(data)
