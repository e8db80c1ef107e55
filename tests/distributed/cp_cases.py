"""Worker script of tests/distributed/test_context_parallel.py: 4 gloo processes, every case.

Run in a fresh interpreter (``python tests/distributed/cp_cases.py OUT``); the workers are forked
from it before any torch op runs. Each rank saves ``OUT/rank{r}.pt``: per case its rows, outputs
and gradients, and per error case the message it raised. The test compares with one process.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gatattn as ga
import gatattn.distributed as gd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import context_parallel as example  # the L = 65,536 problem of the example

WORLD = 4
C, H = 6, 2

#: name -> (graph, sizes, ranks of the group or None for all); small L, uneven shards.
CASES: dict[str, tuple[gd.BandedGraph, list[int] | None, list[int] | None]] = {
    "window_dilated_uneven": (gd.BandedGraph("window", 1001, window=7, dilation=2), [300, 250, 200, 251], None),
    "causal_window_999": (gd.BandedGraph("causal_window", 999, window=16), None, None),
    "block_banded": (gd.BandedGraph("block_banded", 1000, block_size=24, window_blocks=3), [260, 240, 250, 250], None),
    "window_subgroup": (gd.BandedGraph("window", 500, window=5), None, [1, 2, 3]),
}  # fmt: skip


def make_layer(seed: int) -> ga.GraphAttention:
    torch.manual_seed(seed)
    return ga.GraphAttention(C, H, score="scaled_dot+alibi").double()


def make_inputs(length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(length, C, generator=gen, dtype=torch.float64)  # [L, C]
    return x, torch.randn(length, C, generator=gen, dtype=torch.float64)  # [L, C]


def run_case(seq: gd.ShardedSequence, seed: int, big: bool = False) -> dict[str, Any]:
    layer = example.make_block(seed) if big else make_layer(seed)
    x, r = (example.make_inputs if big else make_inputs)(seq.graph.length, seed)
    x_local = seq.shard(x).clone().requires_grad_(True)  # [n_r, C]
    y = seq(layer, x_local)  # [n_r, C]
    (y * seq.shard(r)).sum().backward()
    grads = torch.cat([p.grad.reshape(-1) for p in layer.parameters() if p.grad is not None])
    return {
        "start": seq.start,
        "stop": seq.stop,
        "y": y.detach(),
        "x_grad": x_local.grad,
        "param_grad": grads,
        "bytes_sent": seq.bytes_sent,
    }


def error(fn: Any) -> str:
    try:
        fn()
    except (ValueError, TypeError) as err:
        return f"{type(err).__name__}: {err}"
    return "no error"


def worker(rank: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        results: dict[str, Any] = {}
        big = gd.BandedGraph("window", 65536, window=128)
        results["window_65536"] = run_case(gd.ShardedSequence(big), 0, big=True)
        for name, (graph, sizes, ranks) in CASES.items():
            group = dist.new_group(ranks) if ranks is not None else None  # collective on all
            if ranks is None or rank in ranks:
                results[name] = run_case(gd.ShardedSequence(graph, sizes=sizes, group=group), 0)
        window = gd.BandedGraph("window", 100, window=3)
        kind = "window" if rank == 0 else "causal_window"
        errors = {
            "mismatch": error(lambda: gd.ShardedSequence(gd.BandedGraph(kind, 100, window=3))),
            "too_wide": error(lambda: gd.ShardedSequence(gd.BandedGraph("window", 100, window=30))),
            "sizes_sum": error(lambda: gd.ShardedSequence(window, sizes=[10, 10, 10, 10])),
            "sizes_count": error(lambda: gd.ShardedSequence(window, sizes=[50, 50])),
            "not_banded": error(lambda: gd.ShardedSequence(ga.window_graph(100, 3))),  # type: ignore[arg-type]
        }
        seq = gd.ShardedSequence(window)
        layer = make_layer(0)
        errors["rows"] = error(lambda: seq(layer, torch.zeros(7, C, dtype=torch.float64)))
        x_local = torch.zeros(seq.stop - seq.start, C, dtype=torch.float64)
        errors["not_tensor"] = error(lambda: seq(layer, x_local, return_attention=True))
        errors["crop"] = error(lambda: seq.crop(x_local))
        errors["shard"] = error(lambda: seq.shard(x_local))
        results["errors"] = errors
        torch.save(results, Path(out) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(out: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    Path(out).mkdir(parents=True, exist_ok=True)
    # fork: this interpreter has run no torch op yet, so no thread pool is copied mid-flight
    mp.start_processes(
        worker, args=(f"tcp://127.0.0.1:{port}", out), nprocs=WORLD, start_method="fork"
    )


if __name__ == "__main__":
    main(sys.argv[1])
