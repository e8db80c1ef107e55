"""Attention sinks + a recent window (StreamingLLM) as a graph swap on a converted GPT-2.

A tiny GPT-2 with random weights (nothing downloaded) is converted with ``ga.convert`` and run
on one prompt twice: on its own causal graph, and with the graph swapped for StreamingLLM's
pattern (Xiao et al. 2024), N(i) = {j <= i : j < s or i - j < w}, ``ga.sink_window_graph``.
The script compares the next-token distributions of the two (KL divergence, total variation,
top-1 agreement) for several windows, with and without the s = 4 sinks, and checks that
greedy generation under the swap gives the same tokens with and without the KV cache. A random
model has learned no attention sink, so this shows the mechanics (the swap on every step, cached
or not), not StreamingLLM's quality on a trained model.

    python examples/streaming_sinks.py            # prompt of 96 tokens
    python examples/streaming_sinks.py --quick    # 24 tokens, for the test suite
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

import torch
import torch.nn.functional as F

import gatattn as ga


def tiny_gpt2(seed: int = 0) -> Any:
    """A random 4-layer GPT-2 (C=64, H=4, vocabulary 128), fp64, eval mode."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=128, n_embd=64, n_layer=4, n_head=4, n_positions=256,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config).double().eval()


@torch.no_grad()
def next_token(model: Any, ids: torch.Tensor, graph_fn: Any = None) -> torch.Tensor:
    """log p(x_{T+1} | x_1..x_T) [B, V] under the model's graph or the swapped one."""
    return F.log_softmax(model(ids, graph_fn=graph_fn).logits[:, -1], -1)


def compare(full: torch.Tensor, swapped: torch.Tensor) -> dict[str, float]:
    """KL(full || swapped), total variation and top-1 agreement of two log-distributions."""
    kl = F.kl_div(swapped, full, log_target=True, reduction="batchmean")
    tv = 0.5 * (full.exp() - swapped.exp()).abs().sum(-1).mean()
    top1 = (full.argmax(-1) == swapped.argmax(-1)).double().mean()
    return {"kl": float(kl), "tv": float(tv), "top1": float(top1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short prompt (seconds)")
    parser.add_argument("--sinks", type=int, default=4, help="s, the sink tokens")
    args = parser.parse_args(argv)
    T, B = (24, 3) if args.quick else (96, 8)
    model = ga.convert(tiny_gpt2())
    ids = torch.randint(1, 128, (B, T), generator=torch.Generator().manual_seed(1))
    full = next_token(model, ids)  # the causal graph: every earlier token
    rows: dict[str, dict[str, float]] = {}
    for w in (4, 8, T) if args.quick else (4, 8, 16, T):
        for s in (0, args.sinks):
            fn = functools.partial(ga.sink_window_graph, num_sinks=s, window=w)
            res = compare(full, next_token(model, ids, fn))
            res["edge_fraction"] = fn([T]).num_edges / ga.causal_graph(T).num_edges
            rows[f"window {w}" + (f" + {s} sinks" if s else "")] = res
    print(f"next-token distribution of a random GPT-2, prompt of {T} tokens, batch of {B}")
    print(f"{'graph':>22}  {'edges':>6}  {'KL':>9}  {'TV':>7}  {'top-1':>6}")
    for name, r in rows.items():
        print(
            f"{name:>22}  {r['edge_fraction']:6.1%}  {r['kl']:9.2e}  {r['tv']:7.4f}  {r['top1']:6.2f}"
        )
    swap = functools.partial(ga.sink_window_graph, num_sinks=args.sinks, window=8)
    generation = ga.hf.convert(tiny_gpt2(), graph_fn=swap)
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    cached = generation.generate(ids[:2, :12], use_cache=True, **kw)
    uncached = generation.generate(ids[:2, :12], use_cache=False, **kw)
    same = bool(torch.equal(cached, uncached))
    print(f"greedy generation under sinks + window 8: with cache == without: {same}")
    return {"rows": rows, "cached_equals_uncached": same, "prompt": T}


if __name__ == "__main__":
    main()
