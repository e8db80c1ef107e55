"""A converted Llama-style model against the same model with transformers' SDPA attention.

The model: ``LlamaForCausalLM`` with hidden 256, 4 layers, 8 query heads and 2 key/value heads
(grouped-query attention), vocabulary 1000, random weights. "sdpa" is the model with
``attn_implementation="sdpa"``; "gatattn" is ``ga.convert`` of the same model (the same
modules and weights, gatattn's attention function: the causal graph of each sequence, q, k and v
handed to the dense backend as transformers gives them, [B, H | H_kv, L, D]). Measured (medians
of interleaved rounds, wall-clock time and the process's CPU time):

* eval forward and training forward + backward (loss on the logits) at B = 4, L = 512, with no
  padding and with right padding (lengths 512, 448, 384, 320);
* greedy generation of 64 new tokens with the KV cache from a prompt of B = 4 × 32 tokens, in
  tokens per second.

Goals (issue 22): ≤ 1.1× SDPA's time for the forwards, ≥ 0.9× its tokens per second. The numbers
depend on the machine and on what else runs on it: on a shared CPU machine the CPU time
(``time.process_time``: this process's own, not the time it waited for a core) moves less than
the wall-clock time; on CUDA only the wall-clock time is shown.

    python benchmarks/bench_hf_modern.py                 # 5 rounds
    python benchmarks/bench_hf_modern.py --rounds 3 --device cuda
    PYTHONPATH=. python benchmarks/bench_hf_modern.py    # a checkout's gatattn, not the installed one
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import gatattn as ga


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn: Callable[[], Any], device: str) -> tuple[float, float]:
    """(wall-clock seconds, this process's CPU seconds) of one call."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def build(device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """(the SDPA model, the converted copy), the same random weights."""
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=1000,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    sdpa = transformers.LlamaForCausalLM(cfg).to(device, dtype)
    return sdpa, ga.convert(sdpa)


def cases(device: str, B: int, L: int) -> dict[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 1000, (B, L), generator=gen).to(device)
    lens = torch.tensor([L - 64 * i for i in range(B)], device=device)
    mask = (torch.arange(L, device=device) < lens[:, None]).long()  # [B, L] right padding
    return {"no padding": {"input_ids": ids}, "padded": {"input_ids": ids, "attention_mask": mask}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    sdpa, conv = build(dev, torch.float32)
    models = {"sdpa": sdpa, "gatattn": conv}
    rows: list[tuple[str, str, str, float, float]] = []

    def forward(m: Any, inputs: dict[str, torch.Tensor]) -> None:
        m.eval()
        with torch.no_grad():
            m(**inputs)

    def train(m: Any, inputs: dict[str, torch.Tensor]) -> None:
        m.train()
        m.zero_grad(set_to_none=True)
        m(**inputs, labels=inputs["input_ids"]).loss.backward()

    prompt = cases(dev, args.batch, 32)["no padding"]["input_ids"]
    gen_kw = {
        "max_new_tokens": args.new_tokens,
        "min_new_tokens": args.new_tokens,
        "do_sample": False,
        "use_cache": True,
    }

    def generate(m: Any) -> None:
        m.eval()
        with torch.no_grad():
            out = m.generate(prompt, attention_mask=torch.ones_like(prompt), **gen_kw)
        assert out.size(1) == prompt.size(1) + args.new_tokens

    work: list[tuple[str, str, Callable[[Any], None]]] = []
    for name, inputs in cases(dev, args.batch, args.length).items():
        work.append((name, "eval fwd", lambda m, x=inputs: forward(m, x)))
        work.append((name, "train fwd+bwd", lambda m, x=inputs: train(m, x)))
    work.append(("prompt 32", f"generate {args.new_tokens}", generate))
    times: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for _, _, fn in work:  # warm-up
        for m in models.values():
            fn(m)
    for _ in range(args.rounds):
        for case, mode, fn in work:
            for label, m in models.items():
                run = lambda f=fn, model=m: f(model)  # noqa: E731
                times.setdefault((case, mode, label), []).append(_time(run, dev))
    for (case, mode, label), ts in times.items():
        wall, cpu = (statistics.median(t[i] for t in ts) for i in (0, 1))
        rows.append((case, mode, label, wall, cpu))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{platform.machine()} {dev}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"B={args.batch}, L={args.length}, medians of {args.rounds} rounds, load {load:.1f}"
    )
    cpu = dev == "cpu"
    head = "| case | mode | method | ms | ÷ sdpa | tokens/s | ÷ sdpa tokens/s |"
    print(head + (" CPU ms | ÷ sdpa (CPU) |" if cpu else ""))
    print("|---|---|---|---:|---:|---:|---:|" + ("---:|---:|" if cpu else ""))
    base = {(c, md): (w, t) for c, md, lb, w, t in rows if lb == "sdpa"}
    for case, mode, label, wall, used in rows:
        ratio = wall / base[(case, mode)][0]
        if mode.startswith("generate"):
            tps = args.batch * args.new_tokens / wall
            line = f"| {case} | {mode} | {label} | {wall * 1e3:.1f} | {ratio:.2f} | {tps:.0f} | {1 / ratio:.2f} |"
        else:
            line = f"| {case} | {mode} | {label} | {wall * 1e3:.1f} | {ratio:.2f} | | |"
        if cpu:
            line += f" {used * 1e3:.1f} | {used / base[(case, mode)][1]:.2f} |"
        print(line)


if __name__ == "__main__":
    main()
