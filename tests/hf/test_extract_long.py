"""``ga.hf.attention_graphs(top_k=, threshold=, heads=, layers=)``: sparse graphs of a converted
model, extracted a block of query rows at a time, equal to the unsparsified extraction and to
transformers' own attention weights on the kept edges (fp64)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import gatattn as ga
import gatattn.hf.attention as hf_attention
from gatattn.inspect.sparse import sparsify

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")


def window_and_cls(lengths: list[int]) -> ga.TokenGraph:
    return ga.window_graph(window=1, lengths=lengths) | ga.global_graph(
        global_tokens=[0], lengths=lengths
    )


CASES = [
    ("gpt2", {}, None),  # causal, right padding
    ("gpt2", {"left": True}, None),  # causal, left padding
    ("bert", {}, None),  # padding mask
    ("bert", {}, window_and_cls),  # a swapped graph (CSR rows)
]


@pytest.mark.parametrize(("family", "pad", "graph_fn"), CASES)
@pytest.mark.parametrize("opts", [{"top_k": 2}, {"threshold": 0.3, "heads": [3, 1]}])
def test_sparse_equals_the_full_extraction(
    hf: SimpleNamespace, family: str, pad: dict, graph_fn: object, opts: dict
) -> None:
    conv = ga.convert(hf.build(family))
    batch, valid = hf.inputs(family, **pad)
    full = ga.hf.attention_graphs(conv, **batch, graph_fn=graph_fn, output_attentions=True)
    sp = ga.hf.attention_graphs(conv, **batch, graph_fn=graph_fn, **opts)
    assert sp.attentions == [] and len(sp.sparse) == len(full.attentions) == 2
    assert sp.tokens == full.tokens and sp.lengths == full.lengths == [7, 5, 3]
    pos = valid.flatten().nonzero().flatten()  # [N] padded index of each real token
    for n, (s, att) in enumerate(zip(sp.sparse, full.attentions, strict=True)):
        ref = sparsify(att, **opts)
        assert s.layer == n and s.num_nodes == 15 and s.lengths == (7, 5, 3)
        assert torch.equal(s.edge_index, ref.edge_index) and torch.equal(s.head, ref.head)
        torch.testing.assert_close(s.weights, ref.weights, rtol=0, atol=1e-13)
        torch.testing.assert_close(s.scores, ref.scores, rtol=0, atol=1e-13)
        if graph_fn is None:  # the kept weights are transformers' own (eager) weights
            j, i = pos[s.edge_index[0]], pos[s.edge_index[1]]  # padded positions
            L = valid.size(1)
            dense = full.output.attentions[n]  # [B, H, L, L]
            torch.testing.assert_close(
                s.weights, dense[i // L, s.head, i % L, j % L], rtol=0, atol=1e-13
            )
        assert s.num_kv_heads == s.num_heads == 4 and torch.equal(s.kv_head, s.head)


def test_layers_heads_and_no_weights_computed(
    hf: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the selected layer is extracted, and no attention call computes per-edge weights."""
    conv = ga.convert(hf.build("gpt2"))
    batch, _ = hf.inputs("gpt2")
    asked = []
    attend = hf_attention.attend

    def spy(p: object, backend: str) -> object:
        asked.append(p.need_weights)  # type: ignore[attr-defined]
        return attend(p, backend)  # type: ignore[arg-type]

    monkeypatch.setattr(hf_attention, "attend", spy)
    sp = ga.hf.attention_graphs(conv, **batch, top_k=3, layers=[1], heads=[2], renormalize=True)
    assert asked == [False, False]  # both layers ran, neither computed weights
    (one,) = sp.sparse
    assert one.layer == 1 and one.heads == (2,) and set(one.head.tolist()) == {2}
    group = one.edge_index[1]  # one head: one group per query
    sums = torch.zeros(15, dtype=torch.float64).index_add_(0, group, one.weights)
    torch.testing.assert_close(sums, torch.ones(15, dtype=torch.float64), rtol=0, atol=1e-14)
    assert one.metadata()["renormalized"] is True


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"top_k": 0}, "top_k must be a positive int"),
        ({"threshold": 2.0}, r"threshold must be a number in \[0, 1\]"),
        ({"heads": [4]}, r"heads must be distinct head indices in 0..3"),
        ({"layers": [2]}, r"layers \[2\] do not exist: the model ran 2 self-attention layers"),
        ({"layers": [-1]}, "layers must be distinct layer indices >= 0"),
        ({"layers": []}, "layers must be distinct layer indices >= 0"),
        ({"layers": [0, 0]}, "layers must be distinct layer indices >= 0"),
    ],
)
def test_bad_options(hf: SimpleNamespace, opts: dict, match: str) -> None:
    conv = ga.convert(hf.build("bert"))
    batch, _ = hf.inputs("bert")
    with pytest.raises(ValueError, match=match):
        ga.hf.attention_graphs(conv, **batch, **opts)


@pytest.mark.parametrize("window", [None, 3])
def test_grouped_query_llama_records_each_heads_kv_group(window: int | None) -> None:
    """A Llama-style model (4 query heads on 2 key/value heads, rotary positions; Mistral's
    sliding window as a second case): sparse equals the whole extraction, kv_head = h // 2."""
    torch.manual_seed(0)
    cls = transformers.MistralConfig if window else transformers.LlamaConfig
    extra = {"sliding_window": window} if window else {}
    config = cls(
        vocab_size=60, hidden_size=24, intermediate_size=28, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=40,
        attn_implementation="eager", **extra,
    )  # fmt: skip
    model = (transformers.MistralModel if window else transformers.LlamaModel)(config)
    conv = ga.convert(model.double().eval())
    ids = torch.randint(0, 60, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1] * 7, [0, 0] + [1] * 5])  # left padding
    full = ga.hf.attention_graphs(conv, input_ids=ids, attention_mask=mask)
    sp = ga.hf.attention_graphs(conv, input_ids=ids, attention_mask=mask, top_k=2)
    for s, att in zip(sp.sparse, full.attentions, strict=True):
        ref = sparsify(att, top_k=2)
        assert torch.equal(s.edge_index, ref.edge_index) and torch.equal(s.head, ref.head)
        torch.testing.assert_close(s.weights, ref.weights, rtol=0, atol=1e-13)
        assert s.num_kv_heads == 2 and torch.equal(s.kv_head, s.head // 2)
        assert s.metadata()["kv_head_of"] == "0 0 1 1"


@pytest.mark.parametrize("family", ["bloom", "t5"])
def test_per_edge_biases_are_placed_at_their_edges(family: str) -> None:
    """BLOOM's ALiBi (a float mask) and T5's position bias reach the attention as per-edge
    biases, read by edge id: the blocks place them at their edges, and the sparse graph equals
    the whole extraction (padding on one row)."""
    torch.manual_seed(0)
    if family == "bloom":
        config = transformers.BloomConfig(
            vocab_size=60, hidden_size=24, n_layer=2, n_head=4, attn_implementation="eager"
        )
        model = transformers.BloomModel(config)
    else:
        config = transformers.T5Config(
            vocab_size=60, d_model=24, d_kv=6, d_ff=28, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, attn_implementation="eager",
        )  # fmt: skip
        model = transformers.T5EncoderModel(config)
    conv = ga.convert(model.double().eval())
    ids = torch.randint(0, 60, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0, 0]])
    full = ga.hf.attention_graphs(conv, input_ids=ids, attention_mask=mask)
    sp = ga.hf.attention_graphs(conv, input_ids=ids, attention_mask=mask, top_k=3)
    assert len(sp.sparse) == len(full.attentions) == 2
    for s, att in zip(sp.sparse, full.attentions, strict=True):
        ref = sparsify(att, top_k=3)
        assert torch.equal(s.edge_index, ref.edge_index) and torch.equal(s.head, ref.head)
        torch.testing.assert_close(s.weights, ref.weights, rtol=0, atol=1e-13)
        torch.testing.assert_close(s.scores, ref.scores, rtol=0, atol=1e-13)
