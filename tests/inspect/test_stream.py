"""The streaming writers of sparse attention graphs (gatattn.inspect.stream): what NetworkX's
own readers read back is the SparseAttention, row for row, with its metadata and tokens."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import pytest
import torch

import gatattn as ga
from gatattn.inspect.sparse import SparseAttention, sparsify
from gatattn.inspect.stream import EDGE_COLUMNS, SparseGraphWriter, write_sparse

pytestmark = pytest.mark.usefixtures("one_thread")

H, C = 4, 20  # 4 query heads on 2 KV heads below
TOKENS = ["the", "cat", "sat", "a&<b>", "\x01odd\r", "mat", "on", "it"]


@pytest.fixture
def sparse() -> SparseAttention:
    torch.manual_seed(0)
    layer = ga.GraphAttention(C, H).double()
    x = torch.randn(8, C, dtype=torch.float64)
    res = layer(x, ga.causal_graph(lengths=[5, 3]), return_attention=True)
    return sparsify(res, top_k=2, threshold=0.05, heads=[0, 1, 3], num_kv_heads=2, layer=4)


def _read(path: Path) -> nx.MultiDiGraph:
    if path.suffix == ".graphml":
        return ga.inspect.read_graph(path)  # NetworkX's reader, and the XML escape undone
    if path.suffix == ".json":
        return nx.node_link_graph(json.loads(path.read_text()), edges="edges")
    return nx.read_edgelist(
        path, create_using=nx.MultiDiGraph, nodetype=int, data=EDGE_COLUMNS[2:], delimiter="\t"
    )


@pytest.mark.parametrize("suffix", [".graphml", ".json", ".tsv"])
def test_networkx_reads_back_every_row(
    tmp_path: Path, sparse: SparseAttention, suffix: str
) -> None:
    path = write_sparse(sparse, tmp_path / f"layer{suffix}", tokens=TOKENS, chunk=3)
    G = _read(path)
    assert G.is_directed() and G.number_of_edges() == sparse.num_edges > 0
    got = sorted(
        (int(u), int(v), d["head"], d["kv_head"], d["score"], d["weight"])
        for u, v, d in G.edges(data=True)
    )
    src, dst = sparse.edge_index.tolist()
    want = sorted(
        zip(
            src,
            dst,
            sparse.head.tolist(),
            sparse.kv_head.tolist(),
            sparse.scores.tolist(),
            sparse.weights.tolist(),
            strict=True,
        )
    )
    assert got == want  # floats exactly: written with repr()
    assert all(h // 2 == g for _, _, h, g, _, _ in got)  # KV group of each head: h // (4 / 2)
    if suffix == ".tsv":
        lines = path.read_text().splitlines()
        meta = json.loads(lines[0].removeprefix("# gatattn sparse attention graph "))
        assert json.loads(lines[1].removeprefix("# nodes ")) == TOKENS
    else:
        meta = G.graph
        key = (lambda i: str(i)) if suffix == ".graphml" else (lambda i: i)
        assert [G.nodes[key(i)]["token"] for i in range(8)] == TOKENS
        assert [G.nodes[key(i)]["position"] for i in range(8)] == [0, 1, 2, 3, 4, 0, 1, 2]
        assert [G.nodes[key(i)]["sequence"] for i in range(8)] == [0] * 5 + [1] * 3
    for name, value in sparse.metadata().items():
        assert meta[name] == value, name
    assert meta["num_kv_heads"] == 2 and meta["kv_head_of"] == "0 0 1" and meta["layer"] == 4
    assert meta["top_k"] == 2 and meta["threshold"] == 0.05


def test_chunks_write_the_same_file_as_one(tmp_path: Path, sparse: SparseAttention) -> None:
    for suffix in (".graphml", ".json", ".tsv"):
        a = write_sparse(sparse, tmp_path / f"a{suffix}", tokens=TOKENS, chunk=1)
        b = write_sparse(sparse, tmp_path / f"b{suffix}", tokens=TOKENS)
        assert a.read_bytes() == b.read_bytes()


def test_writer_appends_edges_as_they_come(tmp_path: Path) -> None:
    """The writer itself: chunks from anywhere, no graph held; unset options stay out."""
    with SparseGraphWriter(tmp_path / "g.graphml", num_nodes=3, metadata={"layer": 0}) as out:
        for j in range(3):
            one = torch.tensor([j])
            out.write_edges(torch.tensor([[j], [2]]), one * 0, one * 0, one * 0.5, one * 0.25)
    G = nx.read_graphml(tmp_path / "g.graphml")
    assert out.num_edges == 3 and sorted(G.in_edges("2")) == [("0", "2"), ("1", "2"), ("2", "2")]
    assert G.graph["layer"] == 0 and "top_k" not in G.graph


def test_bad_suffix_and_token_count(tmp_path: Path, sparse: SparseAttention) -> None:
    with pytest.raises(ValueError, match=r"unknown graph file suffix '.gexf'.*writes"):
        write_sparse(sparse, tmp_path / "x.gexf")
    with pytest.raises(ValueError, match="got 2 tokens for a graph of 8 nodes"):
        write_sparse(sparse, tmp_path / "x.tsv", tokens=["a", "b"])
