"""``ga.convert`` on Hugging Face models: what it keeps, where it runs, and every error it raises."""

from __future__ import annotations

import copy
import io
import logging
from types import SimpleNamespace

import pytest
import torch

import gatattn as ga
from gatattn.hf import UnsupportedModelError, graph_attention

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_keeps_every_weight_and_key_on_a_copy(hf: SimpleNamespace) -> None:
    model = hf.build("gpt2", impl="sdpa")
    conv = ga.convert(model)  # dispatches to gatattn.hf.convert
    assert conv is not model and type(conv) is type(model)
    sd, new = model.state_dict(), conv.state_dict()
    assert list(sd) == list(new)
    assert all(torch.equal(sd[k], new[k]) for k in sd)
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(model.parameters(), conv.parameters()))
    assert model.config._attn_implementation == "sdpa"  # the original is untouched
    assert conv.config._attn_implementation == "gatattn"
    assert type(conv.h[0].attn).__name__ == "GPT2Attention"  # the module itself stays
    conv.load_state_dict(sd)  # and loads the original's state_dict as it is
    batch, _ = hf.inputs("gpt2")
    out = conv(**batch).last_hidden_state  # fills the graph cache (a weak reference)
    buffer = io.BytesIO()
    torch.save(conv, buffer)  # the whole converted model pickles
    buffer.seek(0)
    again = torch.load(buffer, weights_only=False)
    assert torch.equal(again(**batch).last_hidden_state, out)
    assert torch.equal(copy.deepcopy(conv)(**batch).last_hidden_state, out)


def test_inplace_and_graph_fn_default(hf: SimpleNamespace) -> None:
    model = hf.build("bert")
    batch, _ = hf.inputs("bert", padded=False)
    ref = model(**batch).last_hidden_state
    window = lambda lengths: ga.window_graph(window=1, lengths=lengths)  # noqa: E731
    same = ga.hf.convert(model, inplace=True, graph_fn=window)
    assert same is model
    swapped = model(**batch).last_hidden_state
    full = model(**batch, graph_fn=lambda lengths: ga.complete_graph(lengths=lengths))
    assert (full.last_hidden_state - ref).abs().max() <= 1e-10  # a per-call graph_fn wins
    assert (swapped - ref).abs().max() > 1e-3  # the window changes the function


def test_unpadded_and_padded_graphs_run_on_the_dense_backend(
    hf: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    """Complete, causal and padded graphs (BERT, GPT-2) all run on the dense backend (SDPA)."""
    for family in ("bert", "gpt2"):
        conv = ga.convert(hf.build(family))
        for padded in (False, True):
            batch, _ = hf.inputs(family, padded=padded)
            caplog.clear()
            with caplog.at_level(logging.DEBUG, logger="gatattn.dispatch"):
                conv(**batch)
            chosen = [r.getMessage() for r in caplog.records if r.name == "gatattn.dispatch"]
            assert len(chosen) == 2, chosen
            assert all(m.startswith("backend dense") for m in chosen), (family, padded, chosen)


def test_unsupported_models_name_the_module_class() -> None:
    xlnet = transformers.XLNetModel(
        transformers.XLNetConfig(vocab_size=40, d_model=16, n_layer=1, n_head=4, d_inner=24)
    )
    with pytest.raises(
        UnsupportedModelError, match=r"XLNetRelativeAttention \(layer\.0\.rel_attn\)"
    ) as err:
        ga.convert(xlnet)
    assert isinstance(err.value, TypeError) and isinstance(err.value, ValueError)
    resnet = transformers.ResNetModel(
        transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], num_channels=3)
    )
    with pytest.raises(
        UnsupportedModelError, match="found no supported attention module in ResNetModel"
    ):
        ga.convert(resnet)


def test_argument_errors(hf: SimpleNamespace) -> None:
    model = hf.build("distilbert")
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        ga.hf.convert(model, backend="fast")
    with pytest.raises(TypeError, match="graph_fn must be callable"):
        ga.hf.convert(model, graph_fn=3)  # type: ignore[arg-type]
    batch, _ = hf.inputs("distilbert", padded=False)
    conv = ga.convert(model)
    with pytest.raises(ValueError, match="graph_fn must return a TokenGraph on 21 nodes"):
        conv(**batch, graph_fn=lambda lengths: ga.complete_graph(3))


def _attn_args(module: torch.nn.Module, **kw: object) -> dict[str, object]:
    q = torch.randn(2, 4, 3, 5, dtype=torch.float64)  # [B, H, L, D]
    return {"module": module, "query": q, "key": q, "value": q, "attention_mask": None, **kw}


def test_attention_function_errors(hf: SimpleNamespace) -> None:
    plain = hf.build("bert")
    module = plain.encoder.layer[0].attention.self  # a BertSelfAttention not converted
    with pytest.raises(UnsupportedModelError, match="BertSelfAttention was not converted"):
        graph_attention(**_attn_args(module))
    conv = ga.convert(plain)
    module = conv.encoder.layer[0].attention.self
    with pytest.raises(UnsupportedModelError, match=r"BertSelfAttention passes attention sinks"):
        graph_attention(**_attn_args(module, sinks=torch.zeros(3)))
    args = _attn_args(module)
    args["key"] = args["value"] = args["key"][:, :3]  # type: ignore[index]
    with pytest.raises(UnsupportedModelError, match="3 key/value heads for 4 query heads"):
        graph_attention(**args)
    with pytest.raises(UnsupportedModelError, match="attention mask of dtype torch.int64"):
        graph_attention(**_attn_args(module, attention_mask=torch.ones(2, 1, 3, 3).long()))


def test_eager_float_mask_is_a_graph(hf: SimpleNamespace) -> None:
    """A 0 / min float mask (transformers' eager convention) is read as the same graph."""
    conv = ga.convert(hf.build("bert"))
    module = conv.encoder.layer[0].attention.self
    allowed = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    floats = torch.zeros(3, 3, dtype=torch.float64).masked_fill(
        ~allowed, torch.finfo(torch.float64).min
    )
    args = _attn_args(module, output_attentions=True)
    a = graph_attention(**{**args, "attention_mask": allowed.expand(2, 1, 3, 3)})
    b = graph_attention(**{**args, "attention_mask": floats.expand(2, 1, 3, 3)})
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert b[1] is not None and bool((b[1][:, :, ~allowed] == 0).all())
