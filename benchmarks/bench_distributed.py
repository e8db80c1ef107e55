"""Distributed measurements of docs/distributed.md: activation checkpointing and sequence sharding.

memory  peak memory of forward+backward of a 4-layer GraphTransformerBlock stack, with and
        without activation checkpointing (torch.utils.checkpoint, non-reentrant), per backend;
        also the bytes autograd keeps for the backward (saved tensors, counted once per storage).
        CPU peak: harness.peak_memory_mib (VmHWM after a /proc/self/clear_refs reset); CUDA:
        torch.cuda.max_memory_allocated. Each point runs in a fresh process.
comm    the sharded window problem of examples/context_parallel.py (L = 65,536, window ±128,
        C = 6, fp64) on P = 1, 2, 4 gloo processes: the bytes each rank sends against the
        formula 2·w·C·8 (interior rank) and against a ring of the same processes that passes
        every K and V block once around (measured by doing it); the forward+backward time of
        the sharded call (median of --repeat after a warm-up), and one process with 1 and 2
        threads on the same problem.

    python benchmarks/bench_distributed.py memory
    python benchmarks/bench_distributed.py comm --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import context_parallel as example  # the L = 65,536 problem
import harness  # benchmarks/ is not a package

import gatattn as ga
import gatattn.distributed as gd

LAYERS = 4


# ---------------------------------------------------------------------------- memory
def memory_point(backend: str, checkpointed: bool, n: int, c: int, h: int) -> dict[str, Any]:
    """One point: peak MiB of one forward+backward, and the MiB autograd saved for backward."""
    torch.manual_seed(0)
    blocks = [ga.GraphTransformerBlock(c, h, backend=backend) for _ in range(LAYERS)]
    stack = torch.nn.ModuleList(blocks)
    graph = ga.causal_graph(n) if backend == "dense" else ga.window_graph(n, 64)
    x = torch.randn(n, c, requires_grad=True)  # [N, C]

    def forward() -> torch.Tensor:
        y = x
        for block in stack:
            y = (
                checkpoint(block, y, graph, use_reentrant=False)
                if checkpointed
                else block(y, graph)
            )
        return y

    forward().sum().backward()  # warm-up: graph caches, allocator
    stack.zero_grad()
    x.grad = None
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = forward()
    saved = sum(storages.values()) / 2**20
    del y
    peak = harness.peak_memory_mib(lambda: forward().sum().backward(), "cpu")
    return {"backend": backend, "checkpoint": checkpointed, "peak_mib": peak, "saved_mib": saved}


def memory(args: argparse.Namespace) -> None:
    rows = []
    for backend in args.backends.split(","):
        for ckpt in (False, True):
            cmd = [sys.executable, __file__, "memory-point", backend, str(int(ckpt))]
            cmd += [str(args.n), str(args.channels), str(args.heads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=900)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{LAYERS} GraphTransformerBlocks, N={args.n}, C={args.channels}, H={args.heads}, fp32")
    print("| backend | checkpointing | peak MiB (fwd+bwd) | saved for backward, MiB |")
    print("|---|---|---|---|")
    for r in rows:
        peak = "—" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        yes = "yes" if r["checkpoint"] else "no"
        print(f"| {r['backend']} | {yes} | {peak} | {r['saved_mib']:.1f} |")


# ---------------------------------------------------------------------------- comm
def ring_bytes(seq: gd.ShardedSequence, k: torch.Tensor, v: torch.Tensor) -> int:
    """Pass every rank's K and V block once around the ring (P − 1 hops); bytes this rank sent."""
    sent, P, me = 0, seq.world_size, seq.rank
    kv = torch.cat([k, v], 1)  # [n_r, 2C]
    holder = me  # whose block this rank holds now
    for _ in range(P - 1):
        got = torch.empty(seq.sizes[(holder - 1) % P], kv.shape[1], dtype=kv.dtype)  # [n, 2C]
        ops = [dist.P2POp(dist.isend, kv, (me + 1) % P), dist.P2POp(dist.irecv, got, (me - 1) % P)]
        for work in dist.batch_isend_irecv(ops):
            work.wait()
        sent += kv.numel() * kv.element_size()
        kv, holder = got, (holder - 1) % P  # pass on, next hop, the block just received
    return sent


def comm_worker(rank: int, world: int, repeat: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        seq = gd.ShardedSequence(gd.BandedGraph("window", 65536, window=128))
        block = example.make_block(0)
        x, r = example.make_inputs(65536, 0)
        x_local = seq.shard(x).clone().requires_grad_(True)  # [n_r, C]

        def step() -> None:
            y = seq(block, x_local)  # [n_r, C]
            (y * seq.shard(r)).sum().backward()

        step()  # warm-up: local graph, block layout
        times = []
        for _ in range(repeat):
            dist.barrier()
            t0 = time.perf_counter()
            step()
            dist.barrier()
            times.append(time.perf_counter() - t0)
        per_call = {k: v // (repeat + 1) for k, v in seq.bytes_sent.items()}
        kv = x_local.detach()  # stands for K and V of the same width C
        ring = ring_bytes(seq, kv, kv) if world > 1 else 0
        result = {"rank": rank, "world": world, "halo": seq.halo, "sent": per_call}
        result["ring_forward"] = ring
        result["seconds"] = statistics.median(times)
        Path(out, f"comm{world}_{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def one_process(threads: int, repeat: int) -> float:
    torch.set_num_threads(threads)
    block = example.make_block(0)
    x, r = example.make_inputs(65536, 0)
    x.requires_grad_(True)
    g = ga.window_graph(65536, 128, max_edges=None)

    def step() -> None:
        (block(x, g) * r).sum().backward()

    step()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def comm(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"load before: {os.getloadavg()}")
    rows = []
    for world in args.worlds:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            init = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        mp.start_processes(comm_worker, args=(world, args.repeat, init, str(out)), nprocs=world)
        rows += [json.loads(Path(out, f"comm{world}_{r}.json").read_text()) for r in range(world)]
        print(
            f"P={world}: "
            + ", ".join(f"rank {x['rank']} {x['seconds']:.2f} s" for x in rows[-world:])
        )
    w, c, n = 128, 6, 65536
    print("| P | rank | halo (l, r) | sent fwd | sent bwd | formula (l + r)·C·8 | ring fwd (K,V) |")
    print("|---|---|---|---|---|---|---|")
    for x in rows:
        world = len([y for y in rows if y.get("world") == x["world"]])
        if world > 1:
            formula = sum(x["halo"]) * c * 8  # what the neighbours send it equals what it sends
            print(
                f"| {world} | {x['rank']} | {tuple(x['halo'])} | {x['sent']['forward']:,} | "
                f"{x['sent']['backward']:,} | {formula:,} | {x['ring_forward']:,} |"
            )
    for threads in (1, 2):
        print(
            f"one process, {threads} thread(s), no sharding: {one_process(threads, args.repeat):.2f} s"
        )
    print(f"load after: {os.getloadavg()}  (w={w}, C={c}, L={n})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--backends", default="edge,block,dense")
    m.add_argument("--n", type=int, default=4096)
    m.add_argument("--channels", type=int, default=128)
    m.add_argument("--heads", type=int, default=4)
    p = sub.add_parser("memory-point")
    p.add_argument("backend")
    p.add_argument("checkpointed", type=int)
    p.add_argument("n", type=int)
    p.add_argument("channels", type=int)
    p.add_argument("heads", type=int)
    c = sub.add_parser("comm")
    c.add_argument("--repeat", type=int, default=3)
    c.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    c.add_argument("--out", default="bench-distributed")
    args = parser.parse_args(argv)
    if args.what == "memory":
        memory(args)
    elif args.what == "memory-point":
        row = memory_point(args.backend, bool(args.checkpointed), args.n, args.channels, args.heads)
        print(json.dumps(row))
    else:
        comm(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
