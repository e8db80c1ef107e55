"""Worker script of tests/distributed/test_adversarial.py: hostile sharded calls on P gloo ranks.

Run in a fresh interpreter (``python tests/distributed/adversarial_cases.py 1,3 OUT``: world sizes 1 and 3); the workers
are forked from it before any torch op runs. Each rank saves ``OUT/world{P}/rank{r}.pt``: per case its
rows, outputs and gradients (the test compares them with a written-out fp64 formula), and per
error case the message it raised.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gatattn as ga
import gatattn.distributed as gd

C, H = 6, 2

#: name -> (graph, sizes per world size (None: even)); tiny and uneven shards, one of them no
#: wider than the window, one row on a rank, numpy sizes.
CASES: dict[str, tuple[gd.BandedGraph, dict[int, Any]]] = {
    "window_uneven": (gd.BandedGraph("window", 17, window=3), {1: None, 3: [3, 9, 5]}),
    "window_tiny_edge_shard": (gd.BandedGraph("window", 15, window=3), {1: None, 3: [2, 10, 3]}),
    "causal_one_row": (gd.BandedGraph("causal_window", 12, window=1), {1: None, 3: [5, 1, 6]}),
    "dilated": (gd.BandedGraph("window", 31, window=2, dilation=3), {1: None, 3: [9, 12, 10]}),
    "block_banded": (gd.BandedGraph("block_banded", 26, block_size=4, window_blocks=3),
                     {1: None, 3: [8, 9, 9]}),
    "numpy_sizes": (gd.BandedGraph("window", 13, window=2), {1: np.array([13]), 3: np.array([4, 5, 4])}),
}  # fmt: skip


def make_layer(seed: int) -> ga.GraphAttention:
    torch.manual_seed(seed)
    return ga.GraphAttention(C, H).double()


def inputs(length: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(length)
    x = torch.randn(length, C, generator=gen, dtype=torch.float64)  # [L, C]
    return x, torch.randn(length, C, generator=gen, dtype=torch.float64)  # [L, C]


def run_case(seq: gd.ShardedSequence) -> dict[str, Any]:
    layer = make_layer(0)
    x, r = inputs(seq.graph.length)
    x_local = seq.shard(x).clone().requires_grad_(True)  # [n_r, C]
    y = seq(layer, x_local)  # [n_r, C]
    (y * seq.shard(r)).sum().backward()
    return {
        "start": seq.start,
        "stop": seq.stop,
        "halo": seq.halo,
        "y": y.detach(),
        "x_grad": x_local.grad,
        "param_grad": {n: p.grad for n, p in layer.named_parameters()},
        "bytes_sent": seq.bytes_sent,
    }


def error(fn: Any) -> str:
    try:
        fn()
    except (ValueError, TypeError, RuntimeError) as err:
        return f"{type(err).__name__}: {err}"
    return "no error"


def worker(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        results: dict[str, Any] = {}
        for name, (graph, sizes) in CASES.items():
            results[name] = run_case(gd.ShardedSequence(graph, sizes=sizes[world]))
        # exchange of other shapes and dtypes: 1-D, 3-D, integer and non-contiguous rows
        seq = gd.ShardedSequence(gd.BandedGraph("window", 11, window=2))
        ids = torch.arange(11)
        wide = torch.arange(11 * 8, dtype=torch.float32).view(11, 8)
        results["exchange"] = {
            "ids": seq.exchange(seq.shard(ids)),
            "cube": seq.exchange(seq.shard(wide.view(11, 2, 4))),
            "strided": seq.exchange(seq.shard(wide)[:, ::2]),
            "bytes_sent": seq.bytes_sent,
        }
        # every rank refuses together: sizes that disagree only in their type, a window wider
        # than a shard, sizes of another world size
        window = gd.BandedGraph("window", 30, window=4)
        results["errors"] = {
            "too_wide": error(lambda: gd.ShardedSequence(window, sizes=[13, 3, 14]))
            if world == 3 else "skipped",
            "float_sizes": error(lambda: gd.ShardedSequence(window, sizes=[30.0 / world] * world)),
        }  # fmt: skip
        torch.save(results, Path(out) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(worlds: list[int], out: str) -> None:
    for world in worlds:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        folder = Path(out) / f"world{world}"
        folder.mkdir(parents=True, exist_ok=True)
        # fork: this interpreter runs no torch op, so no thread pool is copied mid-flight
        mp.start_processes(
            worker,
            args=(world, f"tcp://127.0.0.1:{port}", str(folder)),
            nprocs=world,
            start_method="fork",
        )


if __name__ == "__main__":
    main([int(w) for w in sys.argv[1].split(",")], sys.argv[2])
