"""Behaviours that transformers' own model tests (transformers/tests/models/<family>/test_modeling_<family>.py,
run unedited on converted models: docs/hf.md, "transformers' own tests") found gatattn
failing, each checked here in our own words on a tiny random model."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import gatattn as ga

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

#: A Gemma 2 with every feature that keeps its attention off SDPA: logit soft-capping (so the
#: score runs on the edge backend), a sliding window of 3 on its local layer, grouped-query heads.
GEMMA2 = {
    "vocab_size": 50,
    "hidden_size": 24,
    "intermediate_size": 30,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 6,
    "max_position_embeddings": 40,
    "sliding_window": 3,
    "attn_logit_softcapping": 2.0,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def _cached_step(
    model: Any, forward: Any, ids: torch.Tensor, mask: torch.Tensor, *, whole: bool = False
) -> torch.Tensor:
    """Prefill into a static cache (transformers' compiled generation), then one decoding step
    through ``forward``: its logits [B, 1, V]. ``whole``: the 2-D masks span the whole cache
    (zeros past the tokens), as BLOOM's generation passes them (it reads ALiBi from the mask)."""
    B = ids.size(0)
    cache = transformers.StaticCache(config=model.config, max_cache_len=12)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    grown = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], 1)  # [B, L + 1]
    last = grown.sum(1, keepdim=True) - 1  # [B, 1]
    if whole:
        mask, grown = (F.pad(m, (0, 12 - m.size(1))) for m in (mask, grown))  # [B, 12]
    out = model(ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
    nxt = out.logits[:, -1:].argmax(-1)  # [B, 1]
    out = forward(nxt, attention_mask=grown, position_ids=last, cache=cache, use_cache=True)
    return out.logits


# torch-internal: dynamo instantiates autograd.Function classes while tracing them
@pytest.mark.filterwarnings(
    "ignore:<class 'torch.autograd.function.Function'> should not be instantiated:DeprecationWarning"
)
def test_softcapped_decoding_step_compiles_fullgraph() -> None:
    """test_generate_compile_model_forward_fullgraph (Gemma 2): a soft-capped score is not
    s·<q_i, k_j>, so it runs on the edge backend, on a graph read from the mask, whose edge
    count is data-dependent inside torch.compile. The trace must not guard on it (the fast
    backends' checks did: "could not guard on data-dependent expression"), and the compiled
    step equals the eager one."""
    torch.manual_seed(0)
    cfg = transformers.Gemma2Config(**GEMMA2, attn_implementation="eager")
    conv = ga.convert(transformers.Gemma2ForCausalLM(cfg).double().eval())
    ids = torch.randint(3, 50, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # left padding
    with torch.no_grad():
        eager = _cached_step(conv, conv.forward, ids, mask)
        torch.compiler.reset()
        compiled_fn = torch.compile(conv.forward, fullgraph=True, dynamic=False, backend="eager")
        compiled = _cached_step(conv, compiled_fn, ids, mask)
    assert (compiled - eager).abs().max() <= 1e-12


@pytest.mark.filterwarnings(
    "ignore:<class 'torch.autograd.function.Function'> should not be instantiated:DeprecationWarning"
)
def test_bloom_decoding_step_compiles_fullgraph() -> None:
    """test_generate_compile_model_forward_fullgraph (BLOOM): BLOOM returns its attention maps
    itself, without transformers' output collector, so inside torch.compile no collector is
    set; asking it whether one wants the maps (a ContextVar.get) broke the fullgraph trace."""
    torch.manual_seed(0)
    cfg = transformers.BloomConfig(
        vocab_size=50, hidden_size=24, n_layer=2, n_head=4, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, attn_implementation="eager",
    )  # fmt: skip
    conv = ga.convert(transformers.BloomForCausalLM(cfg).double().eval())
    ids = torch.randint(3, 50, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # left padding
    with torch.no_grad():
        eager = _cached_step(conv, conv.forward, ids, mask, whole=True)
        torch.compiler.reset()
        compiled_fn = torch.compile(conv.forward, fullgraph=True, dynamic=False, backend="eager")
        compiled = _cached_step(conv, compiled_fn, ids, mask, whole=True)
        maps = conv(ids, attention_mask=mask, output_attentions=True).attentions
    assert (compiled - eager).abs().max() <= 1e-12
    assert len(maps) == 2 and maps[0].shape == (2, 4, 6, 6)  # eager still returns the maps
