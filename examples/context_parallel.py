"""One long sequence sharded by sequence across processes: halo exchange for window attention.

Rank r holds the tokens [a_r, b_r) of a sequence of L tokens. A window graph of reach w needs,
for those targets, only the keys and values in [a_r − w, b_r + w): a halo of w tokens from each
neighbour, not the whole sequence (docs/distributed.md):

    seq = gd.ShardedSequence(gd.BandedGraph("window", L, window=w))     # collective
    y_local = seq(block, seq.shard(x))            # halo exchange, block on the slice, crop

Each rank saves its outputs y, the gradient of x on its rows and its parameter gradients (of
the loss Σ_i <y_i, r_i> with a fixed random r), which tests/distributed/test_context_parallel.py
compares with one process on the whole sequence. ``--check`` makes rank 0 do that comparison
itself and print the largest differences.

    python examples/context_parallel.py --nproc 2 --length 65536 --window 128 --check
    torchrun --nproc_per_node=4 examples/context_parallel.py --length 65536
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gatattn as ga
import gatattn.distributed as gd

C, H = 6, 2  # small channels: the exchange and the graph matter here, not the width


def make_block(seed: int) -> ga.GraphTransformerBlock:
    torch.manual_seed(seed)
    return ga.GraphTransformerBlock(C, H, ffn_dim=10).double()


def make_inputs(length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [L, C] and the loss weights r [L, C], the same in every process."""
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(length, C, generator=gen, dtype=torch.float64)  # [L, C]
    r = torch.randn(length, C, generator=gen, dtype=torch.float64)  # [L, C]
    return x, r


def grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def one_process(graph: gd.BandedGraph, seed: int) -> dict[str, torch.Tensor]:
    """The reference: the same block on the whole sequence in one process."""
    block = make_block(seed)
    x, r = make_inputs(graph.length, seed)
    x.requires_grad_(True)
    y = block(x, graph.graph())  # [L, C]
    (y * r).sum().backward()
    assert x.grad is not None
    return {"y": y.detach(), "x_grad": x.grad, "param_grad": grads(block)}


def worker(rank: int, world: int, args: argparse.Namespace, init_method: str) -> None:
    """One rank: sharded forward and backward, saved to ``args.out/rank{r}.pt``."""
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        graph = gd.BandedGraph(args.kind, args.length, window=args.window)
        seq = gd.ShardedSequence(graph)
        block = make_block(args.seed)
        x, r = make_inputs(args.length, args.seed)
        x_local = seq.shard(x).clone().requires_grad_(True)  # [n_r, C]
        seq.local_graph()  # built once, outside the timing
        dist.barrier()
        t0 = time.perf_counter()
        y = seq(block, x_local)  # [n_r, C]
        (y * seq.shard(r)).sum().backward()
        dist.barrier()
        seconds = time.perf_counter() - t0
        out = {
            "start": seq.start,
            "stop": seq.stop,
            "halo": seq.halo,
            "y": y.detach(),
            "x_grad": x_local.grad,
            "param_grad": grads(block),  # this rank's part; the sum over ranks is the total
            "bytes_sent": seq.bytes_sent,
            "seconds": seconds,
        }
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            torch.save(out, Path(args.out) / f"rank{rank}.pt")
        dist.barrier()
        if rank == 0:
            print(f"{seq!r}: first forward+backward {seconds:.2f} s, sent {seq.bytes_sent} bytes")
            if args.check and args.out:
                compare(graph, args.seed, world, Path(args.out))
    finally:
        dist.destroy_process_group()


def compare(graph: gd.BandedGraph, seed: int, world: int, folder: Path) -> None:
    """Rank 0: every rank's rows against one process on the whole sequence."""
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(world)]
    ref = one_process(graph, seed)
    y = torch.cat([o["y"] for o in ranks])  # [L, C]
    xg = torch.cat([o["x_grad"] for o in ranks])  # [L, C]
    pg = torch.stack([o["param_grad"] for o in ranks]).sum(0)  # [#params]
    for name, got in (("y", y), ("x_grad", xg), ("param_grad", pg)):
        print(f"max |{name} - one process| = {float((got - ref[name]).abs().max()):.2e}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2, help="workers to spawn without torchrun")
    parser.add_argument("--length", type=int, default=65536)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--kind", choices=["window", "causal_window"], default="window")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--out", default=None, help="folder for each rank's results")
    parser.add_argument("--check", action="store_true", help="rank 0 compares with one process")
    parser.add_argument("--start-method", choices=["spawn", "fork"], default="spawn")
    args = parser.parse_args(argv)
    if "RANK" in os.environ:  # torchrun set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
        worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args, "env://")
    else:
        init = f"tcp://127.0.0.1:{free_port()}"
        mp.start_processes(
            worker, args=(args.nproc, args, init), nprocs=args.nproc, start_method=args.start_method
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
