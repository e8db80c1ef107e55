"""Pattern-builder speed and memory, side by side with plain-torch and SciPy peers in one run.

Times are wall seconds of one call (set-up excluded); ratios are peer / gatattn. With
``--memory`` each (case, implementation) runs in its own process, so that its peak resident
memory (the growth over what imports and input set-up hold) is its own. Peers:

* ``broadcast``: the obvious vectorised torch code, an [N, 2w+1] grid of candidate sources and a
  boolean select (what one writes without the ragged-range trick);
* ``from_mask``: ``ga.from_mask`` on the dense [N, N] boolean mask (the SDPA way of stating a
  pattern); only at sizes where the mask fits;
* ``kdtree``: SciPy's ``cKDTree`` (``query`` for kNN, ``query_pairs``-style
  ``sparse_distance_matrix`` for the radius graph), single-threaded C++.

    python benchmarks/bench_patterns.py               # the issue's window_graph(1_000_000, 128) and the rest
    python benchmarks/bench_patterns.py --quick       # 10-100x smaller sizes, a few seconds
    python benchmarks/bench_patterns.py --case knn    # one case
    python benchmarks/bench_patterns.py --memory      # + peak memory, one process per row
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch

import gatattn as ga

Builder = Callable[[], object]


def _broadcast_window(n: int, w: int) -> torch.Tensor:
    grid = torch.arange(n)[:, None] + torch.arange(-w, w + 1)[None, :]  # [N, 2w+1]
    valid = (grid >= 0) & (grid < n)  # [N, 2w+1]
    dst = torch.arange(n)[:, None].expand_as(grid)[valid]  # [E]
    return torch.stack([grid[valid], dst])


def _points(n: int) -> torch.Tensor:
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(0))  # [N, 3] unit cube


def _kdtree_knn(pos: torch.Tensor, k: int) -> object:
    from scipy.spatial import cKDTree

    _, idx = cKDTree(pos.numpy()).query(pos.numpy(), k=k + 1)  # self is the first neighbour
    return idx[:, 1:]


def _kdtree_radius(pos: torch.Tensor, r: float) -> object:
    from scipy.spatial import cKDTree

    tree = cKDTree(pos.numpy())
    return tree.sparse_distance_matrix(tree, r, output_type="coo_matrix")


def cases(quick: bool) -> dict[str, dict[str, Callable[[], Builder]]]:
    """case -> implementation -> set-up returning the timed call (set-up is not timed)."""
    s = 10 if quick else 1
    n_big, n_mid, n_causal = 1_000_000 // s, 20_000 // s, 10_000 // s
    n_pts = 50_000 // s
    r = 0.0417 * s ** (1 / 3)  # about 16 neighbours on average in the unit cube
    band = lambda n, w: (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs() <= w  # noqa: E731
    return {
        f"window_graph({n_big}, 128)": {
            "gatattn": lambda: lambda: ga.window_graph(n_big, 128, max_edges=None),
            "broadcast": lambda: lambda: _broadcast_window(n_big, 128),
        },
        f"window_graph({n_mid}, 128)": {
            "gatattn": lambda: lambda: ga.window_graph(n_mid, 128, max_edges=None),
            "broadcast": lambda: lambda: _broadcast_window(n_mid, 128),
            "from_mask": lambda: (lambda m: lambda: ga.from_mask(m))(band(n_mid, 128)),
        },
        f"causal_graph({n_causal})": {
            "gatattn": lambda: lambda: ga.causal_graph(n_causal, max_edges=None),
            "from_mask": lambda: (lambda m: lambda: ga.from_mask(m))(
                torch.ones(n_causal, n_causal, dtype=torch.bool).tril()
            ),
        },
        f"bigbird_graph({n_mid}, block_size=64)": {
            "gatattn": lambda: (
                lambda: ga.bigbird_graph(n_mid, block_size=64, seed=0, max_edges=None)
            ),
            "from_mask": lambda: (lambda m: lambda: ga.from_mask(m))(
                ga.bigbird_graph(n_mid, block_size=64, seed=0, max_edges=None).to_dense_mask()
            ),
        },
        f"knn_graph([{n_pts}, 3], 16)": {
            "gatattn": lambda: (lambda p: lambda: ga.knn_graph(p, 16))(_points(n_pts)),
            "brute": lambda: (lambda p: lambda: ga.knn_graph(p, 16, method="brute"))(
                _points(n_pts)
            ),
            "kdtree": lambda: (lambda p: lambda: _kdtree_knn(p, 16))(_points(n_pts)),
        },
        f"radius_graph([{n_pts}, 3], {r:.3f})": {
            "gatattn": lambda: (lambda p: lambda: ga.radius_graph(p, r))(_points(n_pts)),
            "brute": lambda: (lambda p: lambda: ga.radius_graph(p, r, method="brute"))(
                _points(n_pts)
            ),
            "kdtree": lambda: (lambda p: lambda: _kdtree_radius(p, r))(_points(n_pts)),
        },
    }


def run_one(case: str, impl: str, quick: bool) -> dict[str, float | int | None]:
    """Time one implementation of one case; with ``memory`` set, also its peak RSS growth."""
    call = cases(quick)[case][impl]()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB (Linux)
    t0 = time.perf_counter()
    out = call()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    edges = out.num_edges if isinstance(out, ga.TokenGraph) else None
    return {"seconds": seconds, "peak_mb": peak / 1024, "edges": edges}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--case", default="", help="only cases whose name starts with this")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--memory",
        action="store_true",
        help="run each implementation in its own process and report its peak memory (slower)",
    )
    parser.add_argument("--child", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(run_one(*args.child, args.quick)))
        return
    print(f"torch {torch.__version__}, {args.threads} threads, quick={args.quick}")
    print(f"{'case':42} {'impl':10} {'edges':>12} {'seconds':>9} {'peak MB':>9} {'vs gatattn':>10}")
    for case, impls in cases(args.quick).items():
        if not case.startswith(args.case):
            continue
        base = None
        for impl in impls:
            if args.memory:
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    case,
                    impl,
                    "--threads",
                    str(args.threads),
                ]
                cmd += ["--quick"] if args.quick else []
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{case:42} {impl:10} failed: {proc.stderr.strip().splitlines()[-1:]}")
                    continue
                res = json.loads(proc.stdout.strip().splitlines()[-1])
            else:
                res = run_one(case, impl, args.quick)
                res["peak_mb"] = None  # one process: peaks are not separable
            base = res["seconds"] if impl == "gatattn" else base
            ratio = f"{res['seconds'] / base:.2f}x" if base else "-"
            edges = f"{res['edges']:,}" if res["edges"] is not None else "-"
            peak = f"{res['peak_mb']:.0f}" if res["peak_mb"] is not None else "-"
            print(f"{case:42} {impl:10} {edges:>12} {res['seconds']:9.3f} {peak:>9} {ratio:>10}")


if __name__ == "__main__":
    main()
