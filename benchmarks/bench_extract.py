"""Peak memory of extracting one long layer's attention graph: sparse (top-k) vs whole.

The case of issue 22: a tiny random GPT-2 (one layer, H=8 heads, D=8, fp32) converted with
``ga.convert``, one sequence of L = 4,096 tokens (a causal graph: E = L(L+1)/2 = 8.4M edges).
Each mode runs in a fresh interpreter, which reports its peak resident memory (``ru_maxrss``)
just before the measured call (model built, inputs made) and after it; the difference is the
call's own peak. It also reports the call's wall time and its process CPU time
(``time.process_time``, all threads; on a shared machine the load stretches the wall time more
than the CPU time). Modes:

    forward      the converted model's forward alone (no weights requested): the floor
    top-k        ga.hf.attention_graphs(model, input_ids=..., top_k=16): rows in blocks, the kept
                 (edge, head) pairs only (O(L·k·H))
    whole        ga.hf.attention_graphs(model, input_ids=...): every edge's α and Attn [E, H]
    eager dense  transformers' eager model with output_attentions=True: the [1, H, L, L] weights

and the size of the dense [H, L, L] fp32 weights, H·L²·4 bytes, for reference.

    python benchmarks/bench_extract.py                     # L=4096, top-k=16
    python benchmarks/bench_extract.py --length 1024 --modes forward top-k
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

MODES = ("forward", "top-k", "whole", "eager dense")


def _model(args: argparse.Namespace, impl: str) -> object:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=100,
        n_embd=args.heads * 8,
        n_layer=1,
        n_head=args.heads,
        n_positions=args.length,
        attn_implementation=impl,
    )
    return transformers.GPT2Model(config).eval()


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_mode(args: argparse.Namespace) -> None:
    """One mode, in this (fresh) interpreter: print its peak memory and time as JSON."""
    import torch

    import gatattn as ga

    torch.set_num_threads(args.threads)
    model = _model(args, "eager")
    model = model if args.mode == "eager dense" else ga.convert(model)
    ids = torch.randint(0, 100, (1, args.length), generator=torch.Generator().manual_seed(1))
    kept = 0
    before = _peak_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        if args.mode == "forward":
            model(input_ids=ids)
        elif args.mode == "top-k":
            res = ga.hf.attention_graphs(model, input_ids=ids, top_k=args.top_k)
            kept = res.sparse[0].num_edges
        elif args.mode == "whole":
            res = ga.hf.attention_graphs(model, input_ids=ids)
            kept = res.attentions[0].weights.numel()
        else:
            out = model(input_ids=ids, output_attentions=True)
            kept = out.attentions[0].numel()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    after = _peak_mib()
    print(
        json.dumps({"before": before, "after": after, "seconds": seconds, "cpu": cpu, "kept": kept})
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=4096, help="L (default 4096)")
    parser.add_argument("--heads", type=int, default=8, help="H (default 8; D = 8)")
    parser.add_argument("--top-k", type=int, default=16, help="k (default 16)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # the child's mode
    args = parser.parse_args()
    if args.mode is not None:
        run_mode(args)
        return
    import torch
    import transformers

    L, H = args.length, args.heads
    dense = H * L * L * 4 / 2**20
    print(
        f"one GPT-2 layer, L={L:,}, H={H}, D=8, fp32, top-k={args.top_k}; torch "
        f"{torch.__version__}, transformers {transformers.__version__}; peak RSS of the call "
        f"in a fresh interpreter"
    )
    print(f"dense [H, L, L] fp32 weights: {dense:,.0f} MiB\n")
    print(
        "| mode | peak extra memory (MiB) | × dense [H, L, L] | values kept | time (s) "
        "| CPU time (s) |"
    )
    print("|---|---|---|---|---|---|")
    base = [sys.executable, __file__, "--length", str(L), "--heads", str(H)]
    base += ["--top-k", str(args.top_k), "--threads", str(args.threads)]
    for mode in args.modes:
        done = subprocess.run(
            [*base, "--mode", mode], capture_output=True, text=True, check=True, timeout=1800
        )
        r = json.loads(done.stdout.strip().splitlines()[-1])
        extra = r["after"] - r["before"]
        print(
            f"| {mode} | {extra:,.0f} | {extra / dense:.3f} | {r['kept']:,} | {r['seconds']:.1f} "
            f"| {r['cpu']:.2f} |"
        )


if __name__ == "__main__":
    main()
