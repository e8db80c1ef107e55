"""Modern Hugging Face families, converted, equal the original model (transformers' eager
attention): rotary positions, grouped-query heads, sliding windows, soft-capping, ALiBi, T5
biases and encoder-decoders (docs/hf.md, "Modern families").

Tiny random models (C=40, H=4, H_kv=2, D=10, 2 layers, vocab 100) on a batch of 3 sequences
(7, 5 and 3 real tokens, L=7), padded on the right and on the left:

* fp64: logits, every hidden state and every attention map (self and cross) within 1e-10 on
  the real tokens. The eager functions compute the softmax in fp32 even for fp64 models, so the
  fp64 reference runs them with an fp64 softmax (``exact_softmax``).
* fp32: gatattn's error against the fp64 golden is at most 8x the eager fp32 model's own.
* ``generate``: greedy and beam search, with the KV cache equal to without it (a padded batch),
  and equal to the eager model's generation.
* local and global layers keep their own graphs: a sliding layer's recorded graph is the
  window graph, a global layer's the causal (or complete) graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import gatattn as ga
from gatattn.hf import UnsupportedModelError, graph_attention

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

V, C, H, KV, FFN, L = 100, 40, 4, 2, 56, 7
LENGTHS = (7, 5, 3)
IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
DEC = {
    "vocab_size": V,
    "hidden_size": C,
    "intermediate_size": FFN,
    "num_hidden_layers": 2,
    "num_attention_heads": H,
    "num_key_value_heads": KV,
    "max_position_embeddings": 64,
    **IDS,
}
S2S = {
    "vocab_size": V,
    "d_model": C,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": H,
    "decoder_attention_heads": H,
    "encoder_ffn_dim": FFN,
    "decoder_ffn_dim": FFN,
    "max_position_embeddings": 64,
    "forced_eos_token_id": None,
    **IDS,
}
LOCAL = ["sliding_attention", "full_attention"]

#: family -> (kind, model class, config class, config arguments)
SPECS: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "llama": ("decoder", "LlamaForCausalLM", "LlamaConfig", DEC),
    "mistral": ("decoder", "MistralForCausalLM", "MistralConfig", {**DEC, "sliding_window": 3}),
    "qwen2": (
        "decoder",
        "Qwen2ForCausalLM",
        "Qwen2Config",
        {**DEC, "use_sliding_window": True, "sliding_window": 3, "max_window_layers": 1},
    ),
    "qwen3": ("decoder", "Qwen3ForCausalLM", "Qwen3Config", {**DEC, "head_dim": 10}),
    "gemma2": (
        "decoder",
        "Gemma2ForCausalLM",
        "Gemma2Config",
        {**DEC, "head_dim": 10, "sliding_window": 3, "attn_logit_softcapping": 2.0},
    ),
    "gemma3": (
        "decoder",
        "Gemma3ForCausalLM",
        "Gemma3TextConfig",
        {**DEC, "head_dim": 10, "sliding_window": 3, "layer_types": LOCAL},
    ),
    "phi3": ("decoder", "Phi3ForCausalLM", "Phi3Config", DEC),
    "gpt-oss": (
        "decoder",
        "GptOssForCausalLM",
        "GptOssConfig",
        {
            **DEC,
            "head_dim": 10,
            "sliding_window": 3,
            "layer_types": LOCAL,
            "num_local_experts": 2,
            "num_experts_per_tok": 1,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "experts_implementation": "eager",  # grouped_mm takes no fp64
        },
    ),
    "gpt-neox": (
        "decoder",
        "GPTNeoXForCausalLM",
        "GPTNeoXConfig",
        {k: v for k, v in DEC.items() if k != "num_key_value_heads"} | {"rotary_pct": 0.5},
    ),
    "bloom": (
        "decoder",
        "BloomForCausalLM",
        "BloomConfig",
        {"vocab_size": V, "hidden_size": C, "n_layer": 2, "n_head": H, **IDS},
    ),
    "falcon-alibi": (
        "decoder",
        "FalconForCausalLM",
        "FalconConfig",
        {
            "vocab_size": V,
            "hidden_size": C,
            "num_hidden_layers": 2,
            "num_attention_heads": H,
            "alibi": True,
            "multi_query": False,
            **IDS,
        },
    ),
    "falcon-gqa": (
        "decoder",
        "FalconForCausalLM",
        "FalconConfig",
        {
            "vocab_size": V,
            "hidden_size": C,
            "num_hidden_layers": 2,
            "num_attention_heads": H,
            "num_kv_heads": KV,
            "new_decoder_architecture": True,
            **IDS,
        },
    ),
    "t5": (
        "seq2seq",
        "T5ForConditionalGeneration",
        "T5Config",
        {
            "vocab_size": V,
            "d_model": C,
            "d_kv": 10,
            "d_ff": FFN,
            "num_layers": 2,
            "num_heads": H,
            "relative_attention_num_buckets": 8,
            "relative_attention_max_distance": 20,
            "decoder_start_token_id": 0,
            "pad_token_id": 0,
            "eos_token_id": 2,
        },
    ),
    "mt5": (
        "seq2seq",
        "MT5ForConditionalGeneration",
        "MT5Config",
        {
            "vocab_size": V,
            "d_model": C,
            "d_kv": 10,
            "d_ff": FFN,
            "num_layers": 2,
            "num_heads": H,
            "relative_attention_num_buckets": 8,
            "relative_attention_max_distance": 20,
            "decoder_start_token_id": 0,
            "pad_token_id": 0,
            "eos_token_id": 2,
        },
    ),
    "mbart": (
        "seq2seq",
        "MBartForConditionalGeneration",
        "MBartConfig",
        {**S2S, "decoder_start_token_id": 2},
    ),
    "bart": (
        "seq2seq",
        "BartForConditionalGeneration",
        "BartConfig",
        {**S2S, "decoder_start_token_id": 2},
    ),
    "marian": ("seq2seq", "MarianMTModel", "MarianConfig", {**S2S, "decoder_start_token_id": 0}),
    "modernbert": (
        "encoder",
        "ModernBertForMaskedLM",
        "ModernBertConfig",
        {
            "vocab_size": V,
            "hidden_size": C,
            "intermediate_size": FFN,
            "num_hidden_layers": 2,
            "num_attention_heads": H,
            "global_attn_every_n_layers": 2,
            "local_attention": 4,
            "cls_token_id": 1,
            "sep_token_id": 2,
            **IDS,
        },
    ),
    "albert": (
        "encoder",
        "AlbertForMaskedLM",
        "AlbertConfig",
        {
            "vocab_size": V,
            "embedding_size": 16,
            "hidden_size": C,
            "intermediate_size": FFN,
            "num_hidden_layers": 2,
            "num_attention_heads": H,
            "pad_token_id": 0,
        },
    ),
}
FAMILIES = list(SPECS)
GENERATING = [f for f in FAMILIES if SPECS[f][0] != "encoder"]

_softmax = F.softmax


@contextlib.contextmanager
def exact_softmax() -> Iterator[None]:
    """transformers' eager functions take the softmax in fp32 (``dtype=torch.float32``) even
    for an fp64 model: inside this block an fp64 input keeps fp64, the exact reference."""

    def softmax(x: torch.Tensor, dim: Any = None, _stacklevel: int = 3, dtype: Any = None) -> Any:
        return _softmax(x, dim=dim, dtype=None if x.dtype == torch.float64 else dtype)

    F.softmax = softmax  # type: ignore[assignment]
    try:
        yield
    finally:
        F.softmax = _softmax


def build(family: str, dtype: torch.dtype = torch.float64) -> Any:
    """A seeded random eager model of ``family`` in eval mode."""
    _, model, config, kwargs = SPECS[family]
    cfg = getattr(transformers, config)(**kwargs, attn_implementation="eager")
    torch.manual_seed(0)
    built = getattr(transformers, model)(cfg).to(dtype).eval()
    with torch.no_grad():  # gpt-oss's sinks start near 0 (std 0.02): make them count
        for name, param in built.named_parameters():
            if name.endswith(".sinks"):
                param.normal_(0.0, 2.0)
    return built


def batch(family: str, left: bool) -> tuple[dict[str, Any], torch.Tensor]:
    """(inputs, valid [B, L] bool) for a batch of 3 padded sequences."""
    ids = torch.randint(3, V, (3, L), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(L)
    lens = torch.tensor(LENGTHS)[:, None]
    valid = pos >= L - lens if left else pos < lens  # [B, L]
    inputs = {"input_ids": ids, "attention_mask": valid.long()}
    if SPECS[family][0] == "seq2seq":
        inputs["decoder_input_ids"] = ids[:, :5]  # an unpadded decoder side
    return inputs, valid


def run(model: Any, inputs: dict[str, Any], reference: bool) -> Any:
    with torch.no_grad(), exact_softmax() if reference else contextlib.nullcontext():
        return model(**inputs, output_attentions=True, output_hidden_states=True)


def errors(family: str, a: Any, b: Any, valid: torch.Tensor) -> dict[str, float]:
    """max |Δ| of the logits, hidden states and attention rows of the real tokens."""
    rows = valid[:, :5] if SPECS[family][0] == "seq2seq" else valid  # the logits' tokens

    def worst(xs: Any, ys: Any, keep: torch.Tensor, heads: bool = False) -> float:
        assert len(xs) == len(ys) > 0
        diffs = [(x - y).transpose(1, 2) if heads else x - y for x, y in zip(xs, ys, strict=True)]
        return max(float(d[keep].abs().max()) for d in diffs)

    out = {"logits": float((a.logits - b.logits).abs().max())}
    if SPECS[family][0] == "seq2seq":
        full = torch.ones(3, 5, dtype=torch.bool)
        out["hidden"] = max(
            worst(a.encoder_hidden_states, b.encoder_hidden_states, valid),
            worst(a.decoder_hidden_states, b.decoder_hidden_states, full),
        )
        out["attentions"] = max(
            worst(a.encoder_attentions, b.encoder_attentions, valid, True),
            worst(a.decoder_attentions, b.decoder_attentions, full, True),
            worst(a.cross_attentions, b.cross_attentions, full, True),
        )
    else:
        out["logits"] = float((a.logits - b.logits)[rows].abs().max())
        out["hidden"] = worst(a.hidden_states, b.hidden_states, valid)
        out["attentions"] = worst(a.attentions, b.attentions, valid, True)
    return out


@pytest.mark.parametrize("left", [False, True], ids=["right", "left"])
@pytest.mark.parametrize("family", FAMILIES)
def test_fp64_equal_with_padding(family: str, left: bool) -> None:
    model = build(family)
    conv = ga.convert(model)
    inputs, valid = batch(family, left)
    err = errors(family, run(model, inputs, True), run(conv, inputs, False), valid)
    assert max(err.values()) <= 1e-10, (family, err)


@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_within_the_eager_models_own_error(family: str) -> None:
    golden = run(build(family), batch(family, False)[0], True)
    model = build(family, torch.float32)
    inputs, valid = batch(family, False)
    ref, ours = (
        errors(family, golden, run(model, inputs, False), valid),
        errors(family, golden, run(ga.convert(model), inputs, False), valid),
    )
    eps = torch.finfo(torch.float32).eps
    for what, err in ours.items():
        assert err <= 8 * max(ref[what], eps), (family, what, ours, ref)


@pytest.mark.parametrize("family", GENERATING)
def test_generate_with_and_without_cache(family: str) -> None:
    """Greedy and beam search: cached == uncached on a padded batch (left padding for
    decoders, a padded encoder side for encoder-decoders), and == the eager model's output."""
    model = build(family)
    conv = ga.convert(model)
    ids = batch(family, False)[0]["input_ids"][:2, :5]
    mask = torch.ones_like(ids)
    mask[1, :2] = 0 if SPECS[family][0] == "decoder" else 1
    if SPECS[family][0] == "seq2seq":
        mask[1, 3:] = 0
    kw: dict[str, Any] = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}
    for beams in (1, 2):
        padded = {**kw, "num_beams": beams, "attention_mask": mask}
        cached = conv.generate(ids, **padded)
        assert cached.size(1) == 4 + (ids.size(1) if SPECS[family][0] == "decoder" else 1)
        assert torch.equal(cached, conv.generate(ids, use_cache=False, **padded)), beams
        with exact_softmax():
            eager = model.generate(ids, **kw, num_beams=beams)
        assert torch.equal(conv.generate(ids, **kw, num_beams=beams), eager), beams


def _edges(g: ga.TokenGraph) -> set[tuple[int, int]]:
    return set(map(tuple, g.edge_index.t().tolist()))


@pytest.mark.parametrize(
    ("family", "kinds"),
    [
        ("gemma3", ("window", "causal")),
        ("gpt-oss", ("window", "causal")),
        ("qwen2", ("causal", "window")),
        ("mistral", ("window", "window")),
        ("modernbert", ("complete", "local")),
    ],
)
def test_local_and_global_layers_keep_their_graphs(family: str, kinds: tuple[str, str]) -> None:
    """The recorded graph of a sliding layer IS the window graph (W = 3: the token and the 2
    before it; ModernBERT: 2 on each side), of a global layer the causal or complete graph; on
    a padded batch, the same graphs on the real tokens."""
    conv = ga.convert(build(family))
    for left in (False, True):
        inputs, valid = batch(family, left)
        res = ga.hf.attention_graphs(conv, **inputs)
        lengths = [int(n) for n in valid.sum(1)]
        assert res.lengths == lengths
        expected = {
            "window": ga.window_graph(window=2, causal=True, lengths=lengths),
            "local": ga.window_graph(window=2, lengths=lengths),
            "causal": ga.causal_graph(lengths=lengths),
            "complete": ga.complete_graph(lengths=lengths),
        }
        for att, kind in zip(res.attentions, kinds, strict=True):
            assert _edges(att.graph) == _edges(expected[kind]), (family, left, kind)
    # without padding the window graph itself is used: its tag is kept for the backends
    unpadded = {"input_ids": batch(family, False)[0]["input_ids"]}
    with torch.no_grad():
        res = ga.hf.attention_graphs(conv, **unpadded)
    tags = [att.graph.structure for att in res.attentions]
    assert [t == "window" for t in tags] == [k in ("window", "local") for k in kinds], tags


def test_bloom_alibi_is_gatattns_alibi() -> None:
    """BLOOM's slopes are ALiBi's (gatattn.scores.alibi_slopes), and its bias m_h·p_j differs
    from gatattn's −m_h·|i − j| by m_h·p_i on a causal graph: a constant per query row."""
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

    from gatattn.scores import ALiBi, alibi_slopes

    for heads in (4, 6, 8, 12):
        assert torch.allclose(_get_alibi_slopes(heads, torch.device("cpu")), alibi_slopes(heads))
    g = ga.causal_graph(lengths=[5, 3])
    src, dst = g.edge_index
    pos = g.positions("src")
    edges = ga.scores.Edges(src, dst, g)
    m = alibi_slopes(H)
    bloom = pos[src, None] * m  # [E, H]: m_h p_j
    shift = bloom - ALiBi(H)(edges)  # [E, H]
    assert torch.allclose(shift, pos[dst, None] * m)  # m_h p_i: a constant per query row


def test_errors() -> None:
    model = build("llama")
    conv = ga.convert(model)
    module = conv.model.layers[0].self_attn
    q = torch.randn(2, H, 3, 10, dtype=torch.float64)  # [B, H, L, D]
    args = {"module": module, "query": q, "key": q, "value": q, "attention_mask": None}
    with pytest.raises(
        UnsupportedModelError, match=r"LlamaAttention passes attention sinks of shape \[5\]"
    ):
        graph_attention(**args, s_aux=torch.zeros(H + 1))
    with pytest.raises(UnsupportedModelError, match="3 key/value heads for 4 query heads"):
        graph_attention(**{**args, "key": q[:, :3], "value": q[:, :3]})
    with pytest.raises(UnsupportedModelError, match="sliding_window=0"):
        graph_attention(**args, sliding_window=0)
    with pytest.raises(UnsupportedModelError, match="softcap=-1.0"):
        graph_attention(**args, softcap=-1.0)
    per_head = torch.ones(2, H, 3, 3, dtype=torch.bool)
    per_head[0, 1, 0, 0] = False
    with pytest.raises(UnsupportedModelError, match="a different graph per head"):
        graph_attention(**{**args, "attention_mask": per_head})
    with pytest.raises(UnsupportedModelError, match=r"got shape \[2, 3, 3\]"):
        graph_attention(**{**args, "attention_mask": per_head[:, 0]})
    bloom = build("bloom")
    bloom.config.pretraining_tp = 2
    for block in bloom.transformer.h:
        block.self_attention.pretraining_tp, block.self_attention.slow_but_exact = 2, True
    with pytest.raises(UnsupportedModelError, match="pretraining_tp > 1"):
        ga.convert(bloom)


def test_bloom_keeps_its_class_and_pickles() -> None:
    """BLOOM's modules get an instance forward, not a new class; copies and pickles keep it."""
    import io

    model = build("bloom")
    conv = ga.convert(model)
    attn = conv.transformer.h[0].self_attention
    assert type(attn) is type(model.transformer.h[0].self_attention)
    assert list(conv.state_dict()) == list(model.state_dict())
    inputs, _ = batch("bloom", False)
    with torch.no_grad():
        out = conv(**inputs).logits
        buf = io.BytesIO()
        torch.save(conv, buf)
        buf.seek(0)
        again = torch.load(buf, weights_only=False)
        assert again.transformer.h[0].self_attention.forward.module is (
            again.transformer.h[0].self_attention
        )
        assert torch.equal(again(**inputs).logits, out)


def test_float_mask_with_a_bias_is_a_graph_plus_a_bias() -> None:
    """A float mask [B, H, L_q, L_k] with finite values other than 0 (Falcon's ALiBi) is the
    graph of its finite entries plus that bias on each edge: softmax(s·qkᵀ + mask)·v."""
    conv = ga.convert(build("llama"))
    module = conv.model.layers[0].self_attn
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, H, 3, 5, generator=gen, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(2, H, 3, 3, generator=gen, dtype=torch.float64)
    allowed = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    mask = bias.masked_fill(~allowed, torch.finfo(torch.float64).min)
    out, weights = graph_attention(module, q, k, v, mask, scaling=0.3, output_attentions=True)
    ref = torch.softmax(q @ k.transpose(-1, -2) * 0.3 + mask, -1)  # [B, H, L, L]
    assert weights is not None and (weights - ref).abs().max() <= 1e-12
    assert (out - (ref @ v).transpose(1, 2)).abs().max() <= 1e-12


def test_sparse_extraction_refuses_attention_sinks() -> None:
    """gpt-oss converts, but top-k extraction computes its weights without the sink: refused."""
    conv = ga.convert(build("gpt-oss"))
    inputs, _ = batch("gpt-oss", False)
    with pytest.raises(UnsupportedModelError, match="GptOssAttention has attention sinks"):
        ga.hf.attention_graphs(conv, **inputs, top_k=2)
    assert len(ga.hf.attention_graphs(conv, **inputs).attentions) == 2  # whole layers: fine


def test_alternating_layers_build_one_graph_per_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """4 layers, local and global alternating: one graph per layer kind and forward (the
    per-model cache keeps both), on the prompt and on each cached decoding step."""
    import gatattn.hf.attention as attention

    _, model, config, kwargs = SPECS["gpt-oss"]
    cfg = getattr(transformers, config)(
        **{**kwargs, "num_hidden_layers": 4, "layer_types": LOCAL * 2},
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    conv = ga.convert(getattr(transformers, model)(cfg).double().eval())
    built: list[tuple[int, int, int]] = []
    real = attention.mask_graph

    def counting(*args: Any, **kw: Any) -> Any:
        built.append(args[2])  # (B, L_q, L_k)
        return real(*args, **kw)

    monkeypatch.setattr(attention, "mask_graph", counting)
    inputs, _ = batch("gpt-oss", left=True)
    with torch.no_grad():
        conv(**inputs)
        assert len(built) == 2, built  # not 4
        built.clear()
        conv.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert len(built) == 2 * 3, built  # the prompt and 2 cached steps, 2 kinds each
