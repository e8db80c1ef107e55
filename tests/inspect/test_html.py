"""``ga.plot.attention_html``: one self-contained document, its data, and every error it raises.
The page itself runs in a real browser in tests/hf/test_html_browser.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import gatattn as ga
from gatattn.inspect import html as html_module


def _layers(n: int = 5, heads: int = 3, layers: int = 2) -> list[ga.Attention]:
    torch.manual_seed(0)
    layer = ga.GraphAttention(heads * 4, heads).double()
    g = ga.window_graph(n, 1) | ga.global_graph(n, [0])
    x = torch.randn(n, heads * 4, dtype=torch.float64)
    return [layer(x + i, g, return_attention=True) for i in range(layers)]


def _payload(doc: str) -> dict:
    text = re.search(r'<script id="gatattn-data" type="application/json">(.*?)</script>', doc, re.S)
    assert text is not None
    return json.loads(text.group(1))


def test_self_contained_document_with_the_graph_edges(tmp_path: Path) -> None:
    atts = _layers()
    tokens = ["[CLS]", "a", "</script><b>", "&amp;", "d"]
    doc = ga.plot.attention_html(atts, tokens, path=tmp_path / "view.html", title="<T>")
    assert doc.startswith("<!DOCTYPE html>") and doc == (tmp_path / "view.html").read_text()
    for remote in ("http", "src=", "<link", "@import", "url("):  # nothing loads from outside
        assert remote not in doc, remote
    assert "</script><b>" not in doc and "<title>&lt;T&gt;</title>" in doc
    data = _payload(doc)
    assert data["tokens"] == tokens and data["heads"] == 3 and data["hasScores"]
    assert data["initial"] == {"layer": 1, "head": -1, "which": "weight", "view": "head"}
    for layer, att in zip(data["layers"], atts, strict=True):
        edges = set(zip(layer["src"], layer["dst"]))
        assert edges == set(zip(*att.edge_index.tolist())) and len(edges) == att.edge_index.size(1)
        assert len(layer["w"]) == 3 and len(layer["w"][0]) == len(edges)
        order = {e: k for k, e in enumerate(zip(*att.edge_index.tolist()))}
        for k, e in enumerate(zip(layer["src"], layer["dst"])):
            assert abs(layer["w"][1][k] - att.weights[order[e], 1].item()) <= 5e-6
            assert abs(layer["a"][2][k] - att.scores[order[e], 2].item()) <= 5e-5


def test_transformers_dense_attentions() -> None:
    """``output.attentions`` of transformers ([B, H, L, L] per layer): edges where Attn > 0."""
    w = torch.softmax(torch.randn(2, 3, 4, 4), -1)  # [B, H, L, L]
    w[1, :, :, 3] = 0  # sequence 1: key 3 is padding
    doc = ga.plot.attention_html((w, w), ["a", "b", "c", "d"], batch=1, head=2, view="model")
    data = _payload(doc)
    assert not data["hasScores"] and data["layers"][0]["a"] is None
    assert len(data["layers"][0]["src"]) == 12 and 3 not in data["layers"][0]["src"]
    assert data["initial"]["head"] == 2 and data["initial"]["view"] == "model"
    single = _payload(ga.plot.attention_html(w[0, 0], list("abcd")))
    assert single["heads"] == 1 and len(single["layers"]) == 1


def test_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    atts, tokens = _layers(), list("abcde")
    dense = torch.full((1, 3, 5, 5), 0.2)
    cases = [
        (([], tokens), {}, ValueError, "attentions is empty"),
        ((atts, "abcde"), {}, TypeError, "tokens must be a list of strings"),
        ((atts, tokens[:4]), {}, ValueError, "over 5 queries and 5 keys, but 4 tokens"),
        ((atts, tokens), {"which": "alpha"}, ValueError, "which must be 'weight' or 'score'"),
        ((atts, tokens), {"view": "grid"}, ValueError, "view must be 'head' or 'model'"),
        ((atts, tokens), {"head": 3}, ValueError, "head 3 is out of range"),
        ((atts, tokens), {"head": "all"}, ValueError, "head must be one of"),
        ((atts, tokens), {"layer": 2}, ValueError, "layer 2 is out of range for 2 layers"),
        (([atts[0], "x"], tokens), {}, TypeError, "layer 1: expected a gatattn.Attention"),
        (
            ([atts[0], _layers(heads=2)[0]], tokens),
            {},
            ValueError,
            r"different head counts: \[2, 3\]",
        ),
        ((dense, tokens), {"which": "score"}, ValueError, "dense tensors hold no α"),
        ((dense, tokens), {"batch": 1}, ValueError, "batch=1 is out of range for a batch of 1"),
        ((dense[0, :, :4], tokens), {}, ValueError, r"got \[3, 4, 5\]"),
        ((dense, tokens[:4]), {}, ValueError, "the attention has 5 tokens, got 4 tokens"),
    ]
    for args, kwargs, err, match in cases:
        with pytest.raises(err, match=match):
            ga.plot.attention_html(*args, **kwargs)
    cross = ga.GraphAttention(8, 2)(
        torch.randn(2, 8), ga.bipartite_graph(2, 3), x_src=torch.randn(3, 8), return_attention=True
    )
    with pytest.raises(ValueError, match="over 2 queries and 3 keys"):
        ga.plot.attention_html(cross, ["q1", "q2"])
    monkeypatch.setattr(html_module, "MAX_VALUES", 10)
    with pytest.raises(ValueError, match="too many for one HTML file"):
        ga.plot.attention_html(atts, tokens)


@pytest.mark.parametrize("dense", [False, True])
def test_too_large_input_is_refused_before_its_data_is_built(
    monkeypatch: pytest.MonkeyPatch, dense: bool
) -> None:
    """The limit used to be checked after every layer's lists were built (4-11 s to say no on a
    large input); now the count comes first, from tensor ops, and nothing is built."""
    atts = _layers()
    layers = [torch.full((1, 3, 5, 5), 0.2)] if dense else atts
    monkeypatch.setattr(html_module, "MAX_VALUES", 10)

    def never(*args: object) -> None:
        raise AssertionError("built the data of an input that is refused for its size")

    monkeypatch.setattr(html_module, "_from_attention", never)
    monkeypatch.setattr(html_module, "_from_dense", never)
    with pytest.raises(ValueError, match=r"\d+ values are too many for one HTML file"):
        ga.plot.attention_html(layers, list("abcde"))  # type: ignore[arg-type]


def test_count_before_building_equals_the_built_count() -> None:
    """The early count is exact: an input right at the limit passes, one value less fails."""
    atts = _layers()
    data = _payload(ga.plot.attention_html(atts, list("abcde")))
    total = sum(len(layer["src"]) for layer in data["layers"]) * data["heads"] * 2
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(html_module, "MAX_VALUES", total)
        ga.plot.attention_html(atts, list("abcde"))
        mp.setattr(html_module, "MAX_VALUES", total - 1)
        with pytest.raises(ValueError, match=f"{total} values are too many"):
            ga.plot.attention_html(atts, list("abcde"))


def test_title_with_a_lone_surrogate_is_written(tmp_path: Path) -> None:
    """A lone surrogate (not encodable in UTF-8) in the title used to fail the write with a
    UnicodeEncodeError that did not name the title; it shows as U+FFFD now. Tokens with one are
    escaped in the JSON data and round-trip."""
    doc = ga.plot.attention_html(
        _layers(), ["a\ud800", "b", "c", "d", "e"], title="x\udc80y", path=tmp_path / "v.html"
    )
    assert "<title>x\ufffdy</title>" in doc
    assert (tmp_path / "v.html").read_text(encoding="utf-8") == doc
    assert _payload(doc)["tokens"][0] == "a\ud800"
    with pytest.raises(TypeError, match="title must be a str, got int: 3"):
        ga.plot.attention_html(_layers(), list("abcde"), title=3)  # type: ignore[arg-type]
