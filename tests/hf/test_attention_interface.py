"""What transformers' own model tests found on the converted families: ``config.output_attentions``,
attention maps on the autograd path, and ``torch.compile(fullgraph=True)`` of a cached step."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

import gatattn as ga

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ["bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert", "gpt2"]
FAMILIES += ["vit", "deit"]


@pytest.mark.parametrize("family", FAMILIES)
def test_config_output_attentions(family: str, hf: SimpleNamespace, tmp_path: Any) -> None:
    """Setting it on the config (transformers refuses it for any implementation but "eager",
    with no registry to consult) returns the eager model's weights; the config still validates
    and saves. Other implementations keep transformers' own refusal."""
    model = hf.build(family)
    conv = ga.convert(model)
    conv.config.output_attentions = True
    batch, valid = hf.inputs(family)
    with torch.no_grad():
        out = conv(**batch)
        ref = model(**batch, output_attentions=True)
    assert out.attentions is not None and len(out.attentions) == len(ref.attentions)
    for a, b in zip(out.attentions, ref.attentions, strict=True):
        assert (a - b).permute(0, 2, 1, 3)[valid].abs().max() <= 1e-10
    conv.config.validate()
    conv.save_pretrained(tmp_path)
    conv.config.output_attentions = False
    with torch.no_grad():
        assert conv(**batch).attentions is None
    sdpa = hf.build(family, impl="sdpa")
    with pytest.raises(ValueError, match="not supported when using the `attn_implementation` set"):
        sdpa.config.output_attentions = True


def _attention_grads(model: Any, batch: dict[str, Any], valid: torch.Tensor) -> list[Any]:
    """d(loss)/d(Attn) of every layer, through ``attentions[l].retain_grad()``."""
    out = model(**batch, output_attentions=True)
    for a in out.attentions:
        a.retain_grad()
    g = torch.Generator().manual_seed(2)
    w = torch.randn(out.last_hidden_state.shape, generator=g, dtype=torch.float64)
    (out.last_hidden_state * w)[valid].sum().backward()
    return [a.grad for a in out.attentions]


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_maps_are_on_the_autograd_path(family: str, hf: SimpleNamespace) -> None:
    """The returned Attn is the tensor the output is computed from (out = Attn v), so its
    gradient exists and equals the eager model's (fp64, rows of real queries)."""
    model = hf.build(family)
    conv = ga.convert(model)
    batch, valid = hf.inputs(family)
    ours, theirs = _attention_grads(conv, batch, valid), _attention_grads(model, batch, valid)
    for a, b in zip(ours, theirs, strict=True):
        assert a is not None and b is not None
        assert float(a.abs().max()) > 0
        assert (a - b).permute(0, 2, 1, 3)[valid].abs().max() <= 1e-10, family


def test_attention_maps_in_training_are_after_dropout(hf: SimpleNamespace) -> None:
    """With attention dropout in training, the returned Attn is the dropped one that the output
    is computed from, as transformers' eager function returns it: each row is the softmax
    scaled by 1/(1-p) where kept and 0 where dropped, and out = Attn v."""
    model = hf.build("bert", attention_probs_dropout_prob=0.5, hidden_dropout_prob=0.0)
    conv = ga.convert(model).train()
    batch, _ = hf.inputs("bert", padded=False)
    torch.manual_seed(3)
    out = conv(**batch, output_attentions=True)
    with torch.no_grad():
        clean = ga.convert(hf.build("bert"))(**batch, output_attentions=True).attentions[0]
    dropped = out.attentions[0]  # [B, H, L, L]
    kept = dropped != 0
    assert 0 < float(kept.double().mean()) < 1
    assert torch.allclose(dropped[kept], 2 * clean[kept], atol=1e-12)


def test_compiled_cached_step_fullgraph(hf: SimpleNamespace) -> None:
    """A decoding step with a static cache (transformers' compiled generation), traced whole by
    torch.compile(fullgraph=True): no graph break (the recorder's ContextVar is not read and
    the per-forward graph cache is skipped while compiling), and equal to eager."""
    torch.manual_seed(0)
    conv = ga.convert(transformers.GPT2LMHeadModel(hf.config("gpt2")).double().eval())
    ids = torch.randint(2, 60, (2, 5), generator=torch.Generator().manual_seed(4))
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])

    def step(forward: Any) -> torch.Tensor:
        cache = transformers.StaticCache(config=conv.config, max_cache_len=12)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        out = conv(ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)  # [B, 1]
        grown = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
        last = grown.sum(1, keepdim=True) - 1
        return forward(
            nxt, attention_mask=grown, position_ids=last, cache=cache, use_cache=True
        ).logits

    with torch.no_grad():
        eager = step(conv.forward)
        compiled = step(torch.compile(conv.forward, fullgraph=True, dynamic=False, backend="eager"))
    assert (compiled - eager).abs().max() <= 1e-12
