"""Peak memory of building the flex backend's BlockMask: from the tiles against a dense mask.

    tiles   gatattn.backends.flex.block_mask_for: the 128x128 BlockLayout -> kv / full_kv blocks
            and per-tile bit tables (what the flex backend does now)
    dense   the way before: graph.to_dense_mask() [N, N] bool, then create_block_mask with a
            mask_mod that reads it (as flex.py did up to issue 20)

Graph: a ±128 window over N tokens (``ga.window_graph(N, 128)``, E ≈ 257·N). Each measurement
runs in a fresh interpreter: the graph and its edge_index are built first, then the peak
resident set size is reset (``/proc/self/clear_refs``, Linux) and the mask is built; the row
reports the peak above the resident size just before, and the time. The dense way needs N² bytes
for the mask alone, so sizes whose N² exceeds ``--dense-limit`` GiB are not run: their row gives
that lower bound instead. CPU only; no accelerator is used.

    python benchmarks/bench_flex_mask.py                      # N = 8192 ... 262144
    python benchmarks/bench_flex_mask.py --sizes 16384 --markdown
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

WINDOW = 128
SIZES = [8192, 16384, 32768, 65536, 131072, 262144]


def _status(field: str) -> int:
    """A field of /proc/self/status in bytes (VmRSS, VmHWM)."""
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, flags=re.M)
    assert match is not None, field
    return int(match.group(1)) * 1024


def child(method: str, n: int) -> dict[str, float]:
    """Build the mask once in this process; peak bytes above the baseline, and seconds."""
    import torch

    import gatattn as ga
    from gatattn.backends.flex import block_mask_for

    torch.set_num_threads(1)
    g = ga.window_graph(n, WINDOW, max_edges=None)
    edges = g.num_edges
    _ = g.edge_index  # the graph's own edges exist before the measurement
    cpu = torch.device("cpu")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    base = _status("VmRSS")
    start = time.perf_counter()
    if method == "tiles":
        mask = block_mask_for(g, cpu)
    else:
        from torch.nn.attention.flex_attention import create_block_mask

        dense = g.to_dense_mask()  # [N, N] bool

        def mask_mod(b, h, q_idx, kv_idx):  # type: ignore[no-untyped-def]
            return dense[q_idx, kv_idx]

        mask = create_block_mask(mask_mod, None, None, n, n, device="cpu")
    seconds = time.perf_counter() - start
    peak = _status("VmHWM") - base
    blocks = int(mask.kv_num_blocks.sum() + mask.full_kv_num_blocks.sum())
    return {"n": n, "edges": edges, "peak": peak, "seconds": seconds, "blocks": blocks}


def measure(method: str, n: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", method, str(n)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{method} N={n} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    parser.add_argument("--dense-limit", type=float, default=2.0, help="GiB of N² mask to run")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return
    gib = 2**30
    rows = []
    for n in args.sizes:
        tiles = measure("tiles", n)
        if n * n / gib <= args.dense_limit:
            dense = measure("dense", n)
            before = f"{dense['peak'] / gib:.2f} GiB in {dense['seconds']:.1f} s"
            ratio = f"{dense['peak'] / tiles['peak']:.0f}x"
        else:
            before = f"not run: the [N, N] mask alone is {n * n / gib:.0f} GiB"
            ratio = f">= {n * n / tiles['peak']:.0f}x"
        after = f"{tiles['peak'] / 2**20:.0f} MiB in {tiles['seconds']:.2f} s"
        rows.append((n, int(tiles["edges"]), before, after, ratio))
        print(f"# done N={n}: {before} | {after}", file=sys.stderr, flush=True)
    head = ("N", "E", "dense mask (before)", "from tiles (after)", "before / after")
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print(f"| {r[0]:,} | {r[1]:,} | {r[2]} | {r[3]} | {r[4]} |")
    else:
        for r in rows:
            print(f"N={r[0]:>7}  E={r[1]:>11,}  before: {r[2]:<45} after: {r[3]:<22} {r[4]}")


if __name__ == "__main__":
    main()
