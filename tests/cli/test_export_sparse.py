"""``gatattn export --top-k / --min-weight / --only-heads / --only-layers / --format tsv``:
sparse graphs, streamed to the files, through the seeded tiny model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import networkx as nx
import pytest

import gatattn as ga
from gatattn.cli import main
from gatattn.cli.export import TinyModel
from gatattn.inspect.sparse import sparsify

SENTENCE = "the cat sat on the mat"


def test_top_k_heads_and_layers_write_the_sparsified_layers(tmp_path: Path, capsys) -> None:
    args = ["export", "--text", SENTENCE, "--top-k", "2", "--only-heads", "0", "2"]
    assert main([*args, "--only-layers", "1", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer1.graphml"]  # no pictures
    G = nx.read_graphml(tmp_path / "layer1.graphml")
    want = sparsify(TinyModel()(SENTENCE.split())[1], top_k=2, heads=[0, 2])
    assert G.number_of_edges() == want.num_edges == 6 * 2 * 2
    assert {d["head"] for _, _, d in G.edges(data=True)} == {0, 2}
    assert G.graph["top_k"] == 2 and G.graph["extracted_heads"] == "0 2"
    assert [G.nodes[str(i)]["token"] for i in range(6)] == SENTENCE.split()
    assert "1 sparse layers (tiny model)" in capsys.readouterr().out


def test_tsv_alone_writes_every_edge_and_min_weight_filters(tmp_path: Path) -> None:
    assert (
        main(["export", "--text", SENTENCE, "--format", "tsv", "--out", str(tmp_path / "a")]) == 0
    )
    lines = (tmp_path / "a" / "layer0.tsv").read_text().splitlines()
    assert json.loads(lines[1].removeprefix("# nodes ")) == SENTENCE.split()
    assert len([x for x in lines if not x.startswith("#")]) == 36 * 3  # every (edge, head)
    out = tmp_path / "b"
    assert main(["export", "--text", SENTENCE, "--min-weight", "0.2", "--renormalize",
                 "--format", "json", "--out", str(out)]) == 0  # fmt: skip
    G = nx.node_link_graph(json.loads((out / "layer0.json").read_text()), edges="edges")
    want = sparsify(TinyModel()(SENTENCE.split())[0], threshold=0.2, renormalize=True)
    assert G.number_of_edges() == want.num_edges and G.graph["renormalized"] is True
    assert G.graph["threshold"] == 0.2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--top-k", "0"], "--top-k must be >= 1, got 0"),
        (["--min-weight", "1.5"], r"--min-weight must be <= 1 \(a weight\), got 1.5"),
        (["--min-weight", "-0.1"], "--min-weight must be >= 0, got -0.1"),
        (["--min-weight", "nan"], "--min-weight must be a finite number"),
        (["--only-heads", "-1"], "--only-heads must be >= 0, got -1"),
        (["--only-layers", "-2"], "--only-layers must be >= 0, got -2"),
        (["--only-heads", "3"], r"heads must be distinct head indices in 0..2"),
        (["--only-layers", "2"], r"layers \[2\] do not exist: the model has 2 layers"),
        (["--top-k", "2", "--format", "gexf"], "written as graphml, json or tsv, not gexf"),
        (["--top-k", "2", "--html"], "--html draws whole layers"),
    ],
)
def test_bad_sparse_options_exit_2(tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["export", "--text", SENTENCE, *extra, "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err


def test_more_kept_edges_than_the_file_limit_need_allow_large(tmp_path: Path, capsys) -> None:
    """320 tokens, top 110 of 320 keys, 3 heads: 105,600 (edge, head) pairs > 100,000."""
    words = " ".join(f"w{i}" for i in range(320))
    args = ["export", "--text", words, "--top-k", "110", "--only-layers", "0", "--format", "tsv"]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "layer 0 keeps 105,600 edges, more than" in capsys.readouterr().err
    assert main([*args, "--allow-large", "--out", str(tmp_path)]) == 0
    assert ga.inspect.MAX_WRITE_EDGES < 105_600
