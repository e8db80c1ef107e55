"""Graph swaps (``graph_fn``) on converted models: applied on every step, cached or not, never
across batch rows, and on batches with rows of padding only (fp64)."""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import gatattn as ga

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

SINKS = functools.partial(ga.sink_window_graph, num_sinks=1, window=2)


def _lm(hf: SimpleNamespace) -> Any:
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(hf.config("gpt2")).double().eval()


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(1) - 1).clamp(min=0)  # [B, T] positions of a left-padded batch


@torch.no_grad()
def _stepwise(model: Any, ids: torch.Tensor, mask: torch.Tensor, prefill: int, cache: Any) -> Any:
    """Logits of positions prefill.. of ``ids`` [B, T], one cached step per token."""
    pos = _positions(mask)
    out = model(
        ids[:, :prefill], attention_mask=mask[:, :prefill], position_ids=pos[:, :prefill],
        cache=cache, use_cache=True,
    )  # fmt: skip
    cache, steps = out.cache, []
    for t in range(prefill, ids.size(1)):
        out = model(
            ids[:, t : t + 1], attention_mask=mask[:, : t + 1], position_ids=pos[:, t : t + 1],
            cache=cache, use_cache=True,
        )  # fmt: skip
        cache = out.cache
        steps.append(out.logits[:, -1])
    return torch.stack(steps, 1)  # [B, T - prefill, V]


@pytest.mark.parametrize("left", [True, False], ids=["left-padded", "unpadded"])
@pytest.mark.parametrize("graph_fn", [SINKS, lambda n: ga.window_graph(window=1, lengths=n)])
def test_cached_steps_equal_the_uncached_forward(
    graph_fn: Any, left: bool, hf: SimpleNamespace
) -> None:
    """Each cached step attends as the uncached forward does at that position: the swap is
    evaluated on the full key sequence and its new query rows kept (left padding, dynamic and
    static caches). On the old code the swap was dropped on cached steps (differences ~1e-2)."""
    lm = _lm(hf)
    conv = ga.hf.convert(lm, graph_fn=graph_fn)
    batch, valid = hf.inputs("gpt2", left=True)  # lengths 7, 5, 3, left-padded to 7
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if not left:  # no padding: no mask on the cached steps (a dynamic cache)
        mask, valid = torch.ones_like(mask), torch.ones_like(valid)
    with torch.no_grad():
        full = conv(ids, attention_mask=mask, position_ids=_positions(mask)).logits  # [B, T, V]
        plain = lm(ids, attention_mask=mask, position_ids=_positions(mask)).logits
    assert (full - plain)[valid].abs().max() > 1e-3  # the swap changes the function
    prefill = 4
    real = valid[:, prefill:]  # [B, T - prefill]
    dynamic = _stepwise(conv, ids, mask, prefill, None)
    assert (dynamic - full[:, prefill:])[real].abs().max() <= 1e-10
    static = transformers.StaticCache(config=conv.config, max_cache_len=12)
    fixed = _stepwise(conv, ids, mask, prefill, static)  # keys with empty slots, all masked
    assert (fixed - full[:, prefill:])[real].abs().max() <= 1e-10


def test_generate_with_cache_equals_without(hf: SimpleNamespace) -> None:
    """Greedy and beam search under a sink + window swap: the same tokens with and without the
    KV cache (every N(i) depends on the tokens before i only), for a padded batch."""
    conv = ga.hf.convert(_lm(hf), graph_fn=SINKS)
    batch, _ = hf.inputs("gpt2", left=True)
    for extra in ({"do_sample": False}, {"do_sample": False, "num_beams": 2}):
        kw = {**batch, "max_new_tokens": 6, "pad_token_id": 0, **extra}
        cached = conv.generate(**kw, use_cache=True)
        uncached = conv.generate(**kw, use_cache=False)
        assert torch.equal(cached, uncached), extra
    # and the swap is used: the unswapped model generates other tokens from these prompts
    kw = {**batch, "max_new_tokens": 6, "pad_token_id": 0, "do_sample": False}
    with torch.no_grad():
        swapped = conv(**batch).logits
        plain = ga.convert(_lm(hf))(**batch).logits
    assert (swapped - plain)[batch["attention_mask"].bool()].abs().max() > 1e-3
    assert conv.generate(**kw).shape == (3, 7 + 6)


CROSSING = [
    ("complete over the batch", lambda n: ga.complete_graph(sum(n))),
    ("window over the batch", lambda n: ga.window_graph(sum(n), 1)),
]


@pytest.mark.parametrize("family", ["bert", "gpt2"])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("name,graph_fn", CROSSING, ids=[c[0] for c in CROSSING])
def test_edges_between_batch_rows_are_refused(
    family: str, padded: bool, name: str, graph_fn: Any, hf: SimpleNamespace
) -> None:
    """A graph over sum(lengths) nodes without lengths= has edges from one sequence to the
    next. They are refused with the first such edge named, on the padded path (which used to
    read the mask at the wrong row) and the unpadded one (which used to keep them)."""
    conv = ga.convert(hf.build(family))
    batch, _ = hf.inputs(family, padded=padded)
    n = r"\[7, 5, 3\]" if padded else r"\[7, 7, 7\]"
    with pytest.raises(
        ValueError,
        match=rf"between different sequences, the first from node \d+ .*lengths={n}: a swap "
        "never connects two batch rows",
    ):
        conv(**batch, graph_fn=graph_fn)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_rows_of_a_swapped_batch_equal_each_row_alone(family: str, hf: SimpleNamespace) -> None:
    """No row of a padded batch sees another: each row equals that sequence run alone."""

    def fn(n: list[int]) -> ga.TokenGraph:
        return ga.window_graph(window=1, lengths=n) | ga.global_graph(global_tokens=[0], lengths=n)

    conv = ga.hf.convert(hf.build(family), graph_fn=fn)
    batch, _ = hf.inputs(family)
    with torch.no_grad():
        out = conv(**batch).last_hidden_state  # [B, L, C]
        for b, n in enumerate([7, 5, 3]):
            alone = conv(input_ids=batch["input_ids"][b : b + 1, :n]).last_hidden_state
            assert (out[b, :n] - alone[0]).abs().max() <= 1e-10, (family, b)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_a_row_of_padding_only(family: str, hf: SimpleNamespace) -> None:
    """A batch row without any real token: the swap sees the lengths of the other rows
    ([7, 3], as the user's real tokens; it used to be refused about lengths=[7, 0, 3]), the
    real tokens equal the model's, and the empty row's queries have no edge (attention output
    0), as the converted model gives them without a swap."""
    model = hf.build(family)
    conv = ga.convert(model)
    batch, _ = hf.inputs(family)
    mask = batch["attention_mask"].clone()
    mask[1] = 0  # lengths [7, 0, 3]
    seen: list[list[int]] = []

    def complete(lengths: list[int]) -> ga.TokenGraph:
        seen.append(list(lengths))
        return ga.complete_graph(lengths=lengths)

    kw = {"input_ids": batch["input_ids"], "attention_mask": mask}
    with torch.no_grad():
        swapped = conv(**kw, graph_fn=complete).last_hidden_state
        unswapped = conv(**kw).last_hidden_state
        eager = model(**kw).last_hidden_state
    assert seen and all(s == [7, 3] for s in seen)
    real = mask.bool()
    assert (swapped - eager)[real].abs().max() <= 1e-10  # the real tokens: as the model
    assert (swapped - unswapped)[real].abs().max() <= 1e-10
    assert (swapped - unswapped)[1].abs().max() <= 1e-10  # the empty row: as without a swap
    res = ga.hf.attention_graphs(conv, **kw, graph_fn=complete)
    assert res.lengths == [7, 3]
    mask[:] = 0
    with torch.no_grad():  # no real token at all: no edge anywhere, no call to graph_fn
        seen.clear()
        none = conv(input_ids=batch["input_ids"], attention_mask=mask, graph_fn=complete)
    assert not seen and bool(torch.isfinite(none.last_hidden_state).all())


def test_sliding_window_layers(hf: SimpleNamespace) -> None:
    """A layer with its own sliding window (Mistral): an uncached swap is the swap ∩ the window
    (a swap of the causal graph leaves the converted model as it is); an edge between rows is
    refused, not dropped by the window; a cached step under a swap is refused, since a sliding
    cache may keep only the last keys and the tokens could not be numbered."""
    cfg = transformers.MistralConfig(
        vocab_size=60, hidden_size=24, intermediate_size=20, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=40,
        sliding_window=3, attn_implementation="eager", pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.MistralForCausalLM(cfg).double().eval()
    conv = ga.convert(model)
    batch, valid = hf.inputs("gpt2")  # right-padded lengths 7, 5, 3
    causal = lambda n: ga.causal_graph(lengths=n)  # noqa: E731
    with torch.no_grad():  # (the eager model's padded row 3 is NaN: 0 · NaN in its matmul)
        ref = conv(**batch).logits  # the model's own graphs (equal to eager: test_modern_families)
        same = conv(**batch, graph_fn=causal).logits
        sinks = conv(**batch, graph_fn=SINKS).logits
    assert (same - ref)[valid].abs().max() <= 1e-10
    assert (sinks - ref)[valid].abs().max() > 1e-4  # the window of 2 inside the window of 3
    with pytest.raises(ValueError, match="between different sequences"):
        conv(**batch, graph_fn=lambda n: ga.complete_graph(sum(n)))
    kw = {"max_new_tokens": 2, "do_sample": False, "pad_token_id": 0}
    with pytest.raises(ga.hf.UnsupportedModelError, match="cached decoding step of a sliding"):
        ga.hf.convert(model, graph_fn=SINKS).generate(batch["input_ids"][:1, :4], **kw)
