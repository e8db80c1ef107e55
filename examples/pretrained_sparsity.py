"""How local is a pretrained transformer's attention? all-MiniLM-L6-v2 on sparse neighbourhoods.

The pretrained model attends over the complete graph of each sentence. Here every layer attends
only over a sparse graph instead (nothing is retrained):

    window k:          N(i) = { j : |i - j| <= k }                  (Beltagy et al. 2020)
    window k + [CLS]:  N(i) = { j : |i - j| <= k } ∪ {0} ∪ (all j if i = 0)

and the sentence embeddings are compared with the full model's by cosine similarity,
cos(e_full, e_sparse) = <e_full, e_sparse> (both are L2-normalised). Sentences come from
examples/sentences.txt. Writes sparsity.json and sparsity.png to --out.

    python examples/pretrained_sparsity.py --out sparsity_out      # full run
    python examples/pretrained_sparsity.py --quick --out /some/dir  # 4 sentences, k = 1, 4
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

import gatattn as ga

HERE = Path(__file__).resolve().parent
WINDOWS = (1, 2, 4, 8, 16)


def load_sentences(path: Path = HERE / "sentences.txt") -> list[str]:
    """Non-empty, non-comment lines of ``path``."""
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def graph_fns(windows: Sequence[int]) -> dict[str, ga.pretrained.GraphFn]:
    """name -> graph_fn(lengths) for each window and window + global [CLS] (position 0)."""
    fns: dict[str, ga.pretrained.GraphFn] = {}
    for k in windows:
        fns[f"window {k}"] = lambda lens, k=k: ga.window_graph(window=k, lengths=lens)
        fns[f"window {k} + CLS"] = lambda lens, k=k: ga.global_graph(
            global_tokens=[0], window=k, lengths=lens
        )
    return fns


def run(
    sentences: Sequence[str], windows: Sequence[int], model: ga.pretrained.BertGraphEncoder
) -> dict[str, dict[str, float]]:
    """Cosine similarity to the full model and edge fraction for every sparse graph."""
    lengths = [len(model.tokenize(s)) for s in sentences]
    full_edges = sum(n * n for n in lengths)
    full = model.encode(sentences)  # [B, C]
    results: dict[str, dict[str, float]] = {}
    for name, fn in graph_fns(windows).items():
        sparse = model.encode(sentences, graph_fn=fn)  # [B, C]
        cos = (full * sparse).sum(1)  # [B]
        results[name] = {
            "mean_cos": float(cos.mean()),
            "min_cos": float(cos.min()),
            "edge_fraction": fn(lengths).num_edges / full_edges,
        }
    return results


def plot(results: dict[str, dict[str, float]], windows: Sequence[int], path: Path) -> None:
    """Mean (and min) cosine similarity against the window size, with and without [CLS]."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for suffix, label, color in (
        ("", "window k", "C0"),
        (" + CLS", "window k + global [CLS]", "C1"),
    ):
        mean = [results[f"window {k}{suffix}"]["mean_cos"] for k in windows]
        low = [results[f"window {k}{suffix}"]["min_cos"] for k in windows]
        ax.plot(windows, mean, "o-", color=color, label=f"{label} (mean)")
        ax.plot(windows, low, "x--", color=color, alpha=0.6, label=f"{label} (min)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(windows), [str(k) for k in windows])
    ax.set_xlabel("window k (neighbours on each side)")
    ax.set_ylabel("cosine similarity to the full model")
    ax.set_title("all-MiniLM-L6-v2 on sparse neighbourhoods")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("sparsity_out"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="4 sentences, windows 1 and 4")
    args = parser.parse_args(argv)
    sentences = load_sentences()
    windows: Sequence[int] = WINDOWS
    if args.quick:
        sentences, windows = sentences[:4], (1, 4)
    torch.manual_seed(0)
    results = run(sentences, windows, ga.pretrained.minilm())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sparsity.json").write_text(json.dumps(results, indent=2))
    plot(results, windows, args.out / "sparsity.png")
    print(f"{len(sentences)} sentences; cosine similarity to the full model")
    print(f"{'graph':<18} {'mean cos':>9} {'min cos':>9} {'edges':>7}")
    for name, r in results.items():
        print(f"{name:<18} {r['mean_cos']:>9.4f} {r['min_cos']:>9.4f} {r['edge_fraction']:>7.1%}")
    print(f"wrote {args.out / 'sparsity.json'} and {args.out / 'sparsity.png'}")
    return results


if __name__ == "__main__":
    main()
