"""``gatattn export --model <folder> --html``: a local Hugging Face model folder, converted."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import networkx as nx
import pytest

from gatattn.cli import main

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_export_a_local_folder_with_the_html_view(
    tmp_path: Path, hf: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "bert"
    hf.build("bert").save_pretrained(folder)
    hf.tokenizer().save_pretrained(folder)
    out = tmp_path / "out"
    argv = ["export", "--model", str(folder), "--text", "the cat sat", "--no-png", "--html"]
    assert main([*argv, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "attention.html",
        "layer0.graphml",
        "layer1.graphml",
    ]
    G = nx.read_graphml(out / "layer1.graphml")
    assert [G.nodes[str(i)]["token"] for i in range(5)] == ["[CLS]", "the", "cat", "sat", "[SEP]"]
    assert G.number_of_edges() == 25
    page = (out / "attention.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and '"[CLS]","the","cat","sat","[SEP]"' in page
    assert "5 tokens, 2 layers, 4 heads" in capsys.readouterr().out


def test_html_with_the_tiny_model(tmp_path: Path) -> None:
    assert main(["export", "--text", "a b c", "--no-png", "--html", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "attention.html").read_text().count('"src"') == 2  # two layers


def test_bad_model_folders_exit_2(
    tmp_path: Path, hf: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(
            ["export", "--model", str(tmp_path / "nothing"), "--text", "a", "--out", str(tmp_path)]
        )
    assert exc.value.code == 2
    assert "neither tiny, minilm nor a model folder with a config.json" in capsys.readouterr().err
    folder = tmp_path / "xlnet"
    transformers.XLNetModel(
        transformers.XLNetConfig(vocab_size=40, d_model=16, n_layer=1, n_head=4, d_inner=24)
    ).save_pretrained(folder)
    with pytest.raises(SystemExit) as exc:
        main(["export", "--model", str(folder), "--text", "a", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "XLNetRelativeAttention" in capsys.readouterr().err
