"""``gatattn export --model <folder> --top-k``: a converted model's sparse graphs, extracted a
block of query rows at a time and streamed to the files."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import networkx as nx
import pytest
import torch

import gatattn as ga
from gatattn.cli import main

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_folder_model_top_k_streams_each_selected_layer(
    tmp_path: Path, hf: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "gpt2"
    hf.build("gpt2").save_pretrained(folder)
    hf.tokenizer().save_pretrained(folder)
    out = tmp_path / "out"
    argv = ["export", "--model", str(folder), "--text", "the cat sat on the mat", "--top-k", "2"]
    assert main([*argv, "--only-layers", "1", "--format", "tsv", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["layer1.tsv"]
    G = nx.read_edgelist(
        out / "layer1.tsv",
        create_using=nx.MultiDiGraph,
        nodetype=int,
        data=ga.inspect.stream.EDGE_COLUMNS[2:],
        delimiter="\t",
    )
    model, tok = ga.hf.load_folder(folder)
    want = ga.hf.attention_graphs(model, "the cat sat on the mat", tokenizer=tok, top_k=2)
    sp = want.sparse[1]
    assert G.number_of_edges() == sp.num_edges == 4 * (1 + 2 * (len(want.tokens) - 1))
    got = sorted((u, v, d["head"], d["weight"]) for u, v, d in G.edges(data=True))
    src, dst = sp.edge_index.tolist()
    assert got == sorted(zip(src, dst, sp.head.tolist(), sp.weights.tolist(), strict=True))
    assert "1 sparse layers" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # a head the model does not have: exit 2, one line
        main([*argv, "--only-heads", "4", "--out", str(out)])
    assert exc.value.code == 2
    assert "heads must be distinct head indices in 0..3" in capsys.readouterr().err
    assert torch.equal(sp.kv_head, sp.head)  # GPT-2: no grouped heads
