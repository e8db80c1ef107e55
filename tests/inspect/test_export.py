"""to_networkx / from_networkx / layered_graph (gatattn.inspect.graphs) and write_graph /
read_graph (gatattn.inspect.export) against PyTorch and NetworkX."""

from __future__ import annotations

import json
import math

import networkx as nx
import numpy as np
import pytest
import torch
from torch import nn

import gatattn as ga
from gatattn.inspect import analysis, export, graphs, matrices

N, H, D = 5, 3, 7  # pairwise-distinct sizes: a transposed axis fails
C = H * D
TOKENS = ["the", "cat", "sat", "on", "mats"]


def _layer() -> ga.GraphAttention:
    layer = ga.GraphAttention(C, H).double()
    with torch.no_grad():  # non-zero biases, so a bias bug cannot hide
        for p in layer.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.1)
    return layer


@pytest.fixture
def res() -> ga.Attention:
    return _layer()(
        torch.randn(N, C, dtype=torch.float64), ga.complete_graph(N), return_attention=True
    )


def _mha_reference(mha: nn.MultiheadAttention, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """α [H, N, N] from mha's own projection weights, and Attn [H, N, N] from mha itself."""
    _, attn = mha(x, x, x, need_weights=True, average_attn_weights=False)  # [H, N, N]
    wq, wk, _ = mha.in_proj_weight.chunk(3)
    bq, bk, _ = mha.in_proj_bias.chunk(3)
    q = nn.functional.linear(x, wq, bq).view(-1, H, D).transpose(0, 1)  # [H, N, D]
    k = nn.functional.linear(x, wk, bk).view(-1, H, D).transpose(0, 1)  # [H, N, D]
    alpha = q @ k.transpose(1, 2) / math.sqrt(D)  # [H, N, N]
    return alpha.detach().numpy(), attn.detach().numpy()


def test_complete_graph_matches_multihead_attention() -> None:
    mha = nn.MultiheadAttention(C, H, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_bias.normal_(0, 0.1)
    layer = ga.GraphAttention.from_torch(mha)
    x = torch.randn(N, C, dtype=torch.float64)
    G = ga.to_networkx(layer(x, ga.complete_graph(N), return_attention=True), head="all")
    alpha, attn = _mha_reference(mha, x)
    assert G.number_of_nodes() == N and G.number_of_edges() == N * N
    for j, i, data in G.edges(data=True):  # edge j -> i: query i attended to key j
        for h in range(H):
            assert abs(data[f"score_h{h}"] - alpha[h, i, j]) < 1e-10
            assert abs(data[f"weight_h{h}"] - attn[h, i, j]) < 1e-10
        assert abs(data["weight"] - attn[:, i, j].mean()) < 1e-10
        assert abs(data["score"] - alpha[:, i, j].mean()) < 1e-10
        assert data["count"] == 1
    for i in range(N):
        assert abs(sum(w for _, _, w in G.in_edges(i, data="weight")) - 1) < 1e-6
    assert G.graph["heads"] == H and G.graph["pattern"] == "complete"


def test_head_selection(res: ga.Attention) -> None:
    G1 = ga.to_networkx(res, head=1)
    w = res.weights.detach().numpy()  # [E, H]
    src, dst = res.edge_index.tolist()
    for e in range(len(src)):
        assert G1[src[e]][dst[e]]["weight"] == pytest.approx(w[e, 1], abs=1e-12)
    assert G1.graph["head"] == "1"
    assert "weight_h0" not in next(iter(G1.edges(data=True)))[2]


def test_tokens_positions_sequences_on_batched_graph() -> None:
    lengths = [3, 5, 2]
    tokens = [f"t{k}" for k in range(sum(lengths))]
    g = ga.complete_graph(lengths=lengths)
    res = _layer()(torch.randn(sum(lengths), C, dtype=torch.float64), g, return_attention=True)
    G = ga.to_networkx(res, tokens=tokens)
    assert G.number_of_edges() == sum(n * n for n in lengths)
    want_pos = [p for n in lengths for p in range(n)]
    want_seq = [s for s, n in enumerate(lengths) for _ in range(n)]
    for node in range(sum(lengths)):
        attrs = G.nodes[node]
        assert attrs == {
            "index": node,
            "position": want_pos[node],
            "sequence": want_seq[node],
            "token": tokens[node],
        }
    for u, v in G.edges:  # no attention across sequences
        assert want_seq[u] == want_seq[v]
    assert G.graph["num_sequences"] == 3
    analysis.check_weights_sum(G)


def test_duplicate_edges_are_summed_into_one_edge() -> None:
    # target 0 attends to source 1 twice, and to source 2 once; target 1 to sources 0 and 1
    ei = torch.tensor([[1, 1, 2, 0, 1], [0, 0, 0, 1, 1]])
    g = ga.TokenGraph(ei, 3, 3)
    res = _layer()(torch.randn(3, C, dtype=torch.float64), g, return_attention=True)
    G = ga.to_networkx(res, head="all")
    assert G.number_of_edges() == 4
    s, w = res.scores.detach().numpy(), res.weights.detach().numpy()  # [E, H]
    merged = G[1][0]
    assert merged["count"] == 2 and G[2][0]["count"] == 1
    for h in range(H):
        assert merged[f"weight_h{h}"] == pytest.approx(w[0, h] + w[1, h], abs=1e-12)
        assert merged[f"score_h{h}"] == pytest.approx(np.logaddexp(s[0, h], s[1, h]), abs=1e-12)
        # the merged score is the one whose softmax is the summed weight
        incoming = np.array([G[j][0][f"score_h{h}"] for j in (1, 2)])
        soft = np.exp(incoming) / np.exp(incoming).sum()
        assert soft[0] == pytest.approx(merged[f"weight_h{h}"], abs=1e-12)
    assert merged["weight"] == pytest.approx((w[0] + w[1]).mean(), abs=1e-12)
    assert analysis.check_weights_sum(G) < 1e-12


def test_from_networkx_round_trip(res: ga.Attention) -> None:
    back = ga.from_networkx(ga.to_networkx(res, head="all"))
    assert torch.equal(back.edge_index, res.edge_index)
    assert torch.allclose(back.scores, res.scores, atol=1e-12, rtol=0)
    assert torch.allclose(back.weights, res.weights, atol=1e-12, rtol=0)
    assert back.graph.num_nodes == N and back.graph.lengths is None
    one = ga.from_networkx(ga.to_networkx(res))
    assert one.weights.shape == (N * N, 1)
    assert torch.allclose(one.weights[:, 0], res.weights.mean(1), atol=1e-12, rtol=0)


def test_from_networkx_restores_batch_lengths() -> None:
    g = ga.complete_graph(lengths=[2, 4])
    res = _layer()(torch.randn(6, C, dtype=torch.float64), g, return_attention=True)
    assert ga.from_networkx(ga.to_networkx(res)).graph.lengths == (2, 4)


@pytest.mark.parametrize("suffix", [".graphml", ".gexf", ".json"])
def test_files_read_back_with_all_attributes(res: ga.Attention, tmp_path, suffix: str) -> None:
    G = ga.to_networkx(res, tokens=TOKENS, head="all")
    path = ga.write_graph(G, tmp_path / f"attn{suffix}")
    if suffix == ".graphml":
        R = nx.read_graphml(path)
    elif suffix == ".gexf":
        R = nx.read_gexf(path)
    else:
        R = nx.node_link_graph(json.loads(path.read_text()), edges="edges")
    assert R.is_directed() and R.number_of_edges() == N * N
    name = {str(n): n for n in G} if suffix != ".json" else {n: n for n in G}
    for node, attrs in R.nodes(data=True):
        want = G.nodes[name[node]]
        assert {k: attrs[k] for k in want} == want
    for u, v, attrs in R.edges(data=True):
        want = G[name[u]][name[v]]
        assert {k: attrs[k] for k in want} == pytest.approx(want, abs=1e-12)
    if suffix != ".gexf":  # GEXF has no place for graph-level attributes
        assert {k: R.graph[k] for k in G.graph} == G.graph
    back = ga.from_networkx(R)  # string node ids: ordered by the 'index' attribute
    assert torch.equal(back.edge_index, res.edge_index)
    assert torch.allclose(back.weights, res.weights, atol=1e-12, rtol=0)


def test_write_attention_directly_and_size_guard(res: ga.Attention, tmp_path, monkeypatch) -> None:
    path = ga.write_graph(res, tmp_path / "a.graphml", tokens=TOKENS)
    assert nx.read_graphml(path).nodes["2"]["token"] == "sat"
    monkeypatch.setattr(export, "MAX_WRITE_EDGES", N * N - 1)
    with pytest.raises(ValueError, match=r"graph has 25 edges, more than MAX_WRITE_EDGES=24"):
        ga.write_graph(res, tmp_path / "big.json")
    assert not (tmp_path / "big.json").exists()
    ga.write_graph(res, tmp_path / "big.json", allow_large=True)
    assert (tmp_path / "big.json").stat().st_size > 0


def test_layered_graph_structure(res: ga.Attention) -> None:
    L = 3
    G = ga.layered_graph([res] * L, tokens=TOKENS)
    assert G.number_of_nodes() == (L + 1) * N and nx.is_directed_acyclic_graph(G)
    assert G.nodes[2 * N + 3] == {"layer": 2, "index": 3, "token": "on"}
    A = matrices.attention_matrix(res)  # [N, N] row = query
    hat = 0.5 * A + 0.5 * np.eye(N)
    hat /= hat.sum(1, keepdims=True)
    for u, v, w in G.edges(data="weight"):
        assert G.nodes[v]["layer"] == G.nodes[u]["layer"] + 1
        assert w == pytest.approx(hat[v % N, u % N], abs=1e-12)
    plain = ga.layered_graph([res], residual=False)
    assert plain.number_of_edges() == N * N
    assert all(w == pytest.approx(A[v - N, u], abs=1e-12) for u, v, w in plain.edges(data="weight"))


# ------------------------------------------------------------------ bad input
def test_head_out_of_range(res: ga.Attention) -> None:
    with pytest.raises(ValueError, match=r"head 3 is out of range: the layer has 3 heads"):
        ga.to_networkx(res, head=3)
    with pytest.raises(ValueError, match=r"head -1 is out of range"):
        ga.to_networkx(res, head=-1)
    with pytest.raises(ValueError, match=r"head must be one of .* got 'max'"):
        ga.to_networkx(res, head="max")
    with pytest.raises(TypeError, match=r"head must be .* got float"):
        ga.to_networkx(res, head=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"head must be one of \('mean',\) or an int, got 'all'"):
        ga.layered_graph([res], head="all")


def test_wrong_token_count(res: ga.Attention) -> None:
    with pytest.raises(ValueError, match=r"got 4 tokens but the graph has 5 nodes"):
        ga.to_networkx(res, tokens=TOKENS[:4])
    with pytest.raises(TypeError, match=r"tokens must be a list of strings, got the string"):
        ga.to_networkx(res, tokens="the cat sat on mats")
    with pytest.raises(ValueError, match=r"got 6 tokens but the graph has 5 nodes"):
        ga.layered_graph([res], tokens=[*TOKENS, "x"])


def test_unknown_suffix(res: ga.Attention, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"unknown graph file suffix '\.txt'"):
        ga.write_graph(res, tmp_path / "a.txt")
    with pytest.raises(TypeError, match=r"write_graph needs an nx graph or an Attention, got dict"):
        ga.write_graph({}, tmp_path / "a.json")  # type: ignore[arg-type]


def test_graph_without_weights() -> None:
    G = nx.DiGraph()
    G.add_edge(0, 1, score=0.3)
    with pytest.raises(ValueError, match=r"edge 0 -> 1 has no 'weight' attribute"):
        ga.from_networkx(G)
    G = nx.DiGraph()
    G.add_edge("a", "b", score=0.1, weight=1.0)
    with pytest.raises(ValueError, match=r"node 'a' has no 'index' attribute and is not an int"):
        ga.from_networkx(G)
    G = nx.DiGraph()
    G.add_edge(0, 2, score=0.1, weight=1.0)
    with pytest.raises(ValueError, match=r"node indices must be 0\.\.1, each once; got \[0, 2\]"):
        ga.from_networkx(G)
    with pytest.raises(TypeError, match=r"from_networkx needs an nx.DiGraph, got Graph"):
        ga.from_networkx(nx.Graph())


def test_not_an_attention_or_bipartite() -> None:
    with pytest.raises(TypeError, match=r"expected a gatattn.Attention .* got Tensor"):
        ga.to_networkx(torch.zeros(3))  # type: ignore[arg-type]
    layer = _layer()
    x, xs = torch.randn(2, C, dtype=torch.float64), torch.randn(4, C, dtype=torch.float64)
    g = ga.TokenGraph(torch.tensor([[0, 1, 2, 3], [0, 0, 1, 1]]), 4, 2)
    res = layer(x, g, x_src=xs, return_attention=True)
    with pytest.raises(ValueError, match=r"bipartite with num_src=4 != num_dst=2"):
        ga.to_networkx(res)
    with pytest.raises(ValueError, match=r"graph has 3 edges but the attention result has 4"):
        ga.to_networkx(res, graph=ga.TokenGraph(torch.tensor([[0, 1, 1], [0, 0, 1]]), 2, 2))


def test_bulk_insertion_equals_add_edges_from() -> None:
    """The hand-written bulk path builds the same graph as NetworkX's own add_edges_from."""
    rng = np.random.default_rng(0)
    keys = rng.permutation(7 * 7)[:30]  # unique (src, dst) pairs, shuffled; some nodes isolated
    src, dst = keys % 7, keys // 7
    attrs = [{"weight": float(w), "count": 1} for w in rng.random(30)]
    fast, slow = nx.DiGraph(), nx.DiGraph()
    for G in (fast, slow):
        G.add_nodes_from(range(7))
    graphs._add_edges_in_bulk(fast, src, dst, attrs)
    slow.add_edges_from(zip(src.tolist(), dst.tolist(), attrs))
    assert nx.utils.graphs_equal(fast, slow)
    assert all(fast._succ[u][v] is fast._pred[v][u] for u, v in fast.edges)  # one dict per edge
    assert sorted(fast.in_degree()) == sorted(slow.in_degree())
    fast.remove_edge(int(src[0]), int(dst[0]))  # still a valid NetworkX graph
    assert fast.number_of_edges() == 29


def test_graph_without_edges_and_causal_tag() -> None:
    layer = _layer()
    g = ga.TokenGraph(torch.zeros(2, 0, dtype=torch.long), 4, 4)
    G = ga.to_networkx(layer(torch.randn(4, C, dtype=torch.float64), g, return_attention=True))
    assert (G.number_of_nodes(), G.number_of_edges()) == (4, 0)
    back = ga.from_networkx(G)
    assert back.edge_index.shape == (2, 0) and back.weights.shape == (0, 1)
    res = layer(torch.randn(4, C, dtype=torch.float64), ga.causal_graph(4), return_attention=True)
    G = ga.to_networkx(res)
    assert G.graph["pattern"] == "causal" and sorted(G.edges) == [
        (j, i) for j in range(4) for i in range(j, 4)
    ]


# ---------------------------------------------------------------- issue 11: tokens XML cannot hold
HOSTILE = ["a\x00b", "\x0b", "\x1f", "\ud800", "lone \udfff", "\ufffe", "\uffff", "a\r\nb", "\r",
           "back\\slash", "gatattn-escaped:plain", "\\u0041", "ok"]  # fmt: skip


@pytest.mark.parametrize("suffix", [".graphml", ".gexf", ".json"])
def test_every_written_token_reads_back_identical(tmp_path, suffix: str) -> None:
    """XML-illegal characters used to be written without complaint (the file then could not
    be read), and GraphML turned \\r\\n into \\n. Strings are now escaped losslessly."""
    n = len(HOSTILE)
    res = ga.GraphAttention(C, H)(torch.randn(n, C), ga.complete_graph(n), return_attention=True)
    path = ga.write_graph(res, tmp_path / f"t{suffix}", tokens=HOSTILE)
    R = ga.inspect.read_graph(path)
    name = {str(i): i for i in range(n)} if suffix != ".json" else {i: i for i in range(n)}
    assert {name[u]: tok for u, tok in R.nodes(data="token")} == dict(enumerate(HOSTILE))
    if suffix != ".json":  # plain tokens need no gatattn reader: NetworkX's reads them as is
        raw = nx.read_graphml(path) if suffix == ".graphml" else nx.read_gexf(path)
        assert raw.nodes[str(n - 1)]["token"] == "ok"
        assert raw.nodes["0"]["token"] == "gatattn-escaped:a\\u0000b"  # the documented escape


def test_xml_escape_is_identity_on_safe_text_and_invertible() -> None:
    from gatattn.inspect import XML_ESCAPE_PREFIX, escape_xml_text, unescape_xml_text

    for s in ["", "the", "tab\tand\nnewline", "back\\slash", "😀 &<>\"'"]:
        assert escape_xml_text(s) == s
    for s in HOSTILE:
        assert unescape_xml_text(escape_xml_text(s)) == s
    assert escape_xml_text("a\r\nb") == XML_ESCAPE_PREFIX + "a\\u000d\nb"
    with pytest.raises(ValueError, match=r"unknown graph file suffix '.txt'"):
        ga.inspect.read_graph("graph.txt")
