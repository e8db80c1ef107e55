"""Properties of graph swaps (``graph_fn``) on converted Hugging Face models, on random graphs
and random padding (hypothesis, fp64):

* a swap never crosses batch rows: every row of a padded batch equals its sequence run alone,
  and a graph with an edge between two sequences is refused;
* cached equals uncached: for any graph whose N(i) depends on the tokens up to i only, each
  KV-cached decoding step gives the logits of the uncached forward at that position.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gatattn as ga

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, L_MAX = 50, 9


@functools.cache
def _model(family: str) -> Any:
    """A tiny random fp64 model (C=20, H=4, 2 layers): GPT-2 with an LM head, or BERT."""
    torch.manual_seed(0)
    if family == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=20, n_layer=2, n_head=4, n_positions=32,
            bos_token_id=0, eos_token_id=0, pad_token_id=0, attn_implementation="eager",
        )  # fmt: skip
        return transformers.GPT2LMHeadModel(cfg).double().eval()
    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=20, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=24, max_position_embeddings=32, attn_implementation="eager",
    )  # fmt: skip
    return transformers.BertModel(cfg).double().eval()


def _random_graph(seed: int, causal: bool) -> Any:
    """graph_fn: one random mask M over L_MAX positions, each sequence taking M[:n, :n] (so a
    prefix's graph is the graph's prefix); causal keeps j <= i."""
    gen = torch.Generator().manual_seed(seed)
    M = torch.rand(L_MAX, L_MAX, generator=gen) < 0.5  # [L, L]
    if causal:
        M = M.tril()

    def graph_fn(lengths: list[int]) -> ga.TokenGraph:
        return _graph(torch.block_diag(*[M[:n, :n] for n in lengths]), lengths)

    return graph_fn


def _graph(mask: torch.Tensor, lengths: list[int]) -> ga.TokenGraph:
    return ga.TokenGraph(ga.from_mask(mask).edge_index, sum(lengths), lengths=lengths)


def _batch(lengths: list[int], left: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask [B, L] of sequences of ``lengths``, padded on one side."""
    gen = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids = torch.randint(1, VOCAB, (len(lengths), L), generator=gen)
    pos = torch.arange(L)
    n = torch.tensor(lengths)[:, None]
    mask = (pos >= L - n) if left else (pos < n)  # [B, L]
    return ids, mask.long()


lengths_st = st.lists(st.integers(1, L_MAX), min_size=2, max_size=3)


def _last(out: Any) -> torch.Tensor:
    """GPT-2's logits or BERT's last hidden state [B, L, ...]."""
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@settings(max_examples=15, deadline=None)
@given(
    family=st.sampled_from(["gpt2", "bert"]),
    lengths=lengths_st,
    seed=st.integers(0, 2**16),
    left=st.booleans(),
)
def test_a_swap_never_crosses_batch_rows(
    family: str, lengths: list[int], seed: int, left: bool
) -> None:
    graph_fn = _random_graph(seed, causal=family == "gpt2")
    conv = ga.hf.convert(_model(family), graph_fn=graph_fn)
    ids, mask = _batch(lengths, left and family == "gpt2", seed)
    L = ids.size(1)
    with torch.no_grad():
        pos = (mask.cumsum(1) - 1).clamp(min=0)  # positions within each sequence
        out = _last(conv(input_ids=ids, attention_mask=mask, position_ids=pos))  # [B, L, C]
        for b, n in enumerate(lengths):
            real = mask[b].bool()
            alone = _last(conv(input_ids=ids[b : b + 1, real]))[0]  # [n, C]
            assert (out[b, real] - alone).abs().max() <= 1e-10, (b, n, L)

    # one edge from the first sequence into the second: refused, whatever else the graph holds
    def crossing(n: list[int]) -> ga.TokenGraph:
        dense = graph_fn(n).to_dense_mask().clone()
        dense[n[0], 0] = True  # token 0 of sequence 1 attends to token 0 of sequence 0
        return ga.TokenGraph(ga.from_mask(dense).edge_index, sum(n), lengths=None)

    with pytest.raises(ValueError, match="between different sequences"):
        conv(input_ids=ids, attention_mask=mask, graph_fn=crossing)


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(2, L_MAX), min_size=2, max_size=3),
    seed=st.integers(0, 2**16),
    prefill=st.integers(1, 4),
)
def test_cached_steps_equal_the_uncached_forward(
    lengths: list[int], seed: int, prefill: int
) -> None:
    conv = ga.hf.convert(_model("gpt2"), graph_fn=_random_graph(seed, causal=True))
    ids, mask = _batch(lengths, True, seed)  # left-padded, as generation pads
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    T = ids.size(1)
    prefill = min(prefill, T - 1)
    with torch.no_grad():
        full = conv(input_ids=ids, attention_mask=mask, position_ids=pos).logits  # [B, T, V]
        out = conv(
            input_ids=ids[:, :prefill], attention_mask=mask[:, :prefill],
            position_ids=pos[:, :prefill], use_cache=True,
        )  # fmt: skip
        cache = out.cache
        for t in range(prefill, T):
            out = conv(
                input_ids=ids[:, t : t + 1], attention_mask=mask[:, : t + 1],
                position_ids=pos[:, t : t + 1], cache=cache, use_cache=True,
            )  # fmt: skip
            cache = out.cache
            real = mask[:, t].bool()  # [B]
            assert (out.logits[real, -1] - full[real, t]).abs().max() <= 1e-10, t
