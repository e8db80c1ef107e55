"""Data-parallel training of a gatattn model with torch.distributed DDP (docs/distributed.md).

Each step draws one global batch of G graphs. Rank r trains on its shard of G / W graphs, and
DDP all-reduces (averages) the gradients. Every shard has the same size and the loss is a mean,
so the averaged gradient equals the gradient of the mean loss on the whole batch:

    (1/W) Σ_r ∇ mean_{g ∈ shard r} ℓ_g  =  ∇ mean_{g ∈ batch} ℓ_g

After training, every rank holds the same parameters, and they match one process trained on
the combined batches (tests/test_ddp.py checks both).

    torchrun --nproc_per_node=2 examples/ddp_train.py --steps 20       # gloo on CPU
    python examples/ddp_train.py --nproc 2 --steps 20                  # spawns the workers itself
    torchrun --nproc_per_node=8 examples/ddp_train.py --backend nccl    # one GPU per process
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch_geometric.data import Batch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling example, when spawned
from graph_classification import COLOURS, GraphClassifier, random_graphs

GLOBAL_BATCH = 8


def make_model(seed: int) -> GraphClassifier:
    torch.manual_seed(seed)  # same initial weights in every process (DDP also broadcasts rank 0's)
    return GraphClassifier(COLOURS, 12, 3, 2)


def shard(step: int, seed: int, rank: int, world: int, device: torch.device) -> Batch:
    """Rank ``rank``'s part of the global batch of step ``step`` as one PyG Batch."""
    graphs = random_graphs(GLOBAL_BATCH, seed=seed * 10_000 + step)
    per = GLOBAL_BATCH // world
    return Batch.from_data_list(graphs[rank * per : (rank + 1) * per]).to(device)


def train(
    model: torch.nn.Module, rank: int, world: int, steps: int, seed: int, device: torch.device
) -> None:
    """SGD on ``steps`` global batches; with world=1 this is the single-process reference."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(steps):
        b = shard(step, seed, rank, world, device)
        loss = F.cross_entropy(model(b.x, b.edge_index, b.batch), b.y)  # mean over the shard
        opt.zero_grad()
        loss.backward()  # DDP: gradients are averaged across ranks here
        opt.step()
        if rank == 0 and (step + 1) % 10 == 0:
            print(f"step {step + 1:4d}  loss (rank 0 shard) {float(loss.detach()):.4f}")


def flat_parameters(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).cpu() for p in model.parameters()])


def worker(
    rank: int,
    world: int,
    steps: int,
    seed: int,
    backend: str,
    init_method: str,
    out_dir: str | None,
) -> None:
    """One DDP process: join the group, train, save its parameters to ``out_dir/rank{r}.pt``."""
    torch.set_num_threads(1)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
    try:
        if backend == "nccl":  # one GPU per process
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        model = make_model(seed).to(device)
        ddp = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        train(ddp, rank, world, steps, seed, device)
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            torch.save(flat_parameters(model), Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(
    nproc: int,
    steps: int,
    seed: int,
    out_dir: str | None,
    backend: str = "gloo",
    start_method: str = "spawn",
) -> None:
    """Start ``nproc`` workers on this machine (what torchrun does for you). ``start_method``
    "fork" skips re-importing torch in every worker (CPU only; CUDA needs "spawn")."""
    init = f"tcp://127.0.0.1:{free_port()}"
    args = (nproc, steps, seed, backend, init, out_dir)
    mp.start_processes(worker, args=args, nprocs=nproc, join=True, start_method=start_method)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=["gloo", "nccl"], default="gloo")
    parser.add_argument("--nproc", type=int, default=2, help="workers to spawn without torchrun")
    parser.add_argument("--out", default=None, help="folder for each rank's final parameters")
    args = parser.parse_args(argv)
    if GLOBAL_BATCH % args.nproc:
        parser.error(f"--nproc must divide the global batch of {GLOBAL_BATCH}, got {args.nproc}")
    if "RANK" in os.environ:  # launched by torchrun: it set RANK, WORLD_SIZE, MASTER_ADDR/PORT
        world = int(os.environ["WORLD_SIZE"])
        worker(
            int(os.environ["RANK"]), world, args.steps, args.seed, args.backend, "env://", args.out
        )
    else:
        spawn(args.nproc, args.steps, args.seed, args.out, args.backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
