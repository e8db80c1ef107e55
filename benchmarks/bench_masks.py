"""Masked encoders: gatattn's drop-ins against nn.TransformerEncoder on padded batches, one run.

A padded batch of dense sequences is dense attention with a mask, so the drop-ins must stay on
the dense (SDPA) path with a ``src_key_padding_mask``. Model: ``nn.TransformerEncoder`` of 2
``nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=64, batch_first=True,
dropout=0)`` (the sizes of PyTorch's ``test_transformerencoder_fastpath``), and its gatattn
versions with the same weights:

    torch                 the model as is (eval: torch's nested-tensor / fused fast paths)
    torch, no fast path   torch.backends.mha.set_fastpath_enabled(False) around the call
    gatattn convert       ga.convert(model): torch's layers calling GraphMultiheadAttention
    gatattn layers        nn.TransformerEncoder of ga.GraphTransformerEncoderLayer

Cases: (a) B=4, L=1040 with the padding of ``test_transformerencoder_fastpath`` (16, 15, 9 and 0
padded keys); (b) B=8, L=512 with mixed padding (lengths 512 ... 64). Modes: eval forward under
no_grad, and training forward+backward. Times are medians of interleaved rounds
(``harness._timed``); ratios are method / torch, and method / the faster of the two torch rows,
from the same run.

Cases M1 and M2 (issue 23): one ``GraphMultiheadAttention`` against ``nn.MultiheadAttention``
with the same weights, self-attention in training (forward+backward, ``need_weights=False``),
B=8, L=256, C=64, H=4: M1 with a float 2-D ``attn_mask`` [L, L], M2 with a per-head boolean
``attn_mask`` [B·H, L, L] (30 % masked). The drop-in hands these masks to SDPA as they are.

    python benchmarks/bench_masks.py                 # every case, 7 rounds
    python benchmarks/bench_masks.py --cases M1,M2 --repeat 15 --markdown
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # benchmarks/ is not a package

import gatattn as ga

D_MODEL, HEADS, FF, LAYERS = 64, 4, 64, 2
CASES: dict[str, tuple[int, list[int]]] = {
    "B=4, L=1040": (1040, [1024, 1025, 1031, 1040]),
    "B=8, L=512 mixed": (512, [512, 480, 400, 333, 256, 200, 128, 64]),
}


@contextlib.contextmanager
def no_fastpath() -> Iterator[None]:
    old = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(old)


def models(
    seed: int,
) -> dict[str, tuple[nn.Module, Callable[[], contextlib.AbstractContextManager[None]]]]:
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, FF, dropout=0.0, batch_first=True)
    ref = nn.TransformerEncoder(layer, LAYERS)
    glayer = ga.GraphTransformerEncoderLayer.from_torch(layer)
    layers = nn.TransformerEncoder(glayer, LAYERS, enable_nested_tensor=False)
    layers.load_state_dict(ref.state_dict())
    plain = contextlib.nullcontext
    return {
        "torch": (ref, plain),
        "torch, no fast path": (ref, no_fastpath),
        "gatattn convert": (ga.convert(ref), plain),
        "gatattn layers": (layers, plain),
    }


def run(repeat: int) -> list[tuple[str, str, str, float]]:
    """(case, mode, method, median ms) for every case, mode and method."""
    rows = []
    for case, (length, lengths) in CASES.items():
        B = len(lengths)
        x = torch.randn(B, length, D_MODEL)
        pad = torch.arange(length)[None, :] >= torch.tensor(lengths)[:, None]  # [B, L]
        ms = models(0)
        for mode in ("eval fwd", "train fwd+bwd"):
            calls: dict[str, Callable[[], None]] = {}
            for name, (model, ctx) in ms.items():

                def call(
                    model: nn.Module = model,
                    ctx: Callable = ctx,
                    mode: str = mode,
                    x: Tensor = x,
                    pad: Tensor = pad,
                ) -> None:
                    if mode == "eval fwd":
                        model.eval()
                        with torch.no_grad(), ctx():
                            model(x, src_key_padding_mask=pad)
                    else:
                        model.train()
                        xx = x.clone().requires_grad_()
                        with ctx():
                            out: Tensor = model(xx, src_key_padding_mask=pad)
                        out.masked_fill(pad[..., None], 0).square().mean().backward()
                        model.zero_grad(set_to_none=True)

                calls[name] = call
            for call in calls.values():  # warm-up
                call()
            samples: dict[str, list[float]] = {n: [] for n in calls}
            for _ in range(repeat):  # interleaved rounds: load changes hit every method alike
                for name, call in calls.items():
                    samples[name].append(1e3 * harness._timed(call, "cpu"))
            for name in calls:
                rows.append((case, mode, name, statistics.median(samples[name])))
                print(f"{case:18s} {mode:14s} {name:22s} {rows[-1][3]:9.1f} ms", flush=True)
    return rows


def run_drop_in(cases: list[str], repeat: int) -> list[tuple[str, str, str, float]]:
    """(case, mode, method, median ms) for M1 / M2: the drop-in against torch's module."""
    B, L, C, H = 8, 256, 64, 4
    gen = torch.Generator().manual_seed(0)
    masks = {
        "M1 float [L, L]": torch.randn(L, L, generator=gen),
        "M2 per-head bool [B·H, L, L]": torch.rand(B * H, L, L, generator=gen) < 0.3,
    }
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(C, H, batch_first=True)
    twin = ga.GraphMultiheadAttention.from_torch(mha)
    x = torch.randn(B, L, C)
    rows = []
    for case, mask in masks.items():
        if case.split()[0] not in cases:
            continue

        def step(model: nn.Module, mask: Tensor = mask) -> None:
            xx = x.clone().requires_grad_()
            out, _ = model(xx, xx, xx, attn_mask=mask, need_weights=False)
            out.square().mean().backward()
            model.zero_grad(set_to_none=True)

        calls = {
            "torch": lambda: step(mha),
            "gatattn GraphMultiheadAttention": lambda: step(twin),
        }
        for call in calls.values():  # warm-up
            call()
        samples: dict[str, list[float]] = {n: [] for n in calls}
        for _ in range(repeat):
            for name, call in calls.items():
                samples[name].append(1e3 * harness._timed(call, "cpu"))
        for name in calls:
            rows.append((case, "train fwd+bwd", name, statistics.median(samples[name])))
            print(f"{case:30s} {name:32s} {rows[-1][3]:9.1f} ms", flush=True)
    return rows


def markdown(rows: list[tuple[str, str, str, float]]) -> str:
    lines = [
        "| case | mode | method | ms | ÷ torch | ÷ faster torch |",
        "|---|---|---|---:|---:|---:|",
    ]
    for case, mode, name, t in rows:
        same = [r for r in rows if r[:2] == (case, mode)]
        ref = next(r[3] for r in same if r[2] == "torch")
        best = min(r[3] for r in same if r[2].startswith("torch"))
        lines.append(f"| {case} | {mode} | {name} | {t:.1f} | {t / ref:.2f} | {t / best:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed rounds (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument(
        "--cases", default="encoders,M1,M2", help="comma-separated: encoders, M1, M2"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(harness.machine())
    cases = [c.strip() for c in args.cases.split(",")]
    rows = run(args.repeat) if "encoders" in cases else []
    rows += run_drop_in(cases, args.repeat)
    if args.markdown:
        print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
