"""Sharded-parameter training (FSDP2, ``fully_shard``) of gatattn models, with a sharded checkpoint.

Four models, each trained with Adam on one global batch of 4 items per step, in fp64:

    blocks      a stack of 3 ga.GraphTransformerBlock on window graphs (activation checkpointing
                with --checkpoint)
    graphormer  a stack of 2 ga.GraphormerLayer on the shortest-path graphs of random graphs
    encoder     ga.convert(nn.TransformerEncoder(...)): GraphTransformerEncoderLayer inside
    bert        ga.convert(BertModel(tiny random config)): every attention through gatattn

Every layer and then the root get ``fully_shard`` on a 1-D device mesh (gloo on CPU, NCCL on
GPUs): each rank keeps 1/W of every parameter and of Adam's state. Rank r trains on items
[r·4/W, (r+1)·4/W); FSDP averages the gradients (reduce-scatter), so with equal shards and a
mean loss the run follows one process on the whole batch:

    (1/W) Σ_r ∇ mean_{b ∈ shard r} ℓ_b  =  ∇ mean_{b ∈ batch} ℓ_b

At step --save-at the sharded model and optimizer state go to disk with
torch.distributed.checkpoint (each rank writes its shards); then a fresh model (other weights)
loads them and trains the remaining steps again. tests/distributed/test_fsdp.py checks that the
losses and final parameters equal one process, and that the resumed losses equal the first run's.

    python examples/fsdp_train.py --nproc 2 --steps 20            # all four models
    torchrun --nproc_per_node=2 examples/fsdp_train.py --model bert --out fsdp-out
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

import gatattn as ga

MODELS = ("blocks", "graphormer", "encoder", "bert")
GLOBAL_BATCH, C, H, LR = 4, 12, 3, 1e-2
Item = tuple[Tensor, ...]


class Stack(nn.Module):
    """Layers applied in turn to (x [N, C], graph, *extra); optionally activation-checkpointed:
    each layer's activations are recomputed in the backward instead of kept."""

    def __init__(self, layers: list[nn.Module], checkpointed: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.checkpointed = checkpointed

    def forward(self, x: Tensor, graph: ga.TokenGraph, *extra: Any) -> Tensor:
        for layer in self.layers:
            if self.checkpointed:
                x = checkpoint(layer, x, graph, *extra, use_reentrant=False)  # [N, C]
            else:
                x = layer(x, graph, *extra)  # [N, C]
        return x


def make_model(kind: str, seed: int, checkpointed: bool = False) -> nn.Module:
    """The model ``kind`` in fp64, with the weights of ``seed``."""
    torch.manual_seed(seed)
    if kind == "blocks":
        model: nn.Module = Stack(
            [ga.GraphTransformerBlock(C, H, ffn_dim=20) for _ in range(3)], checkpointed
        )
    elif kind == "graphormer":
        model = Stack([ga.GraphormerLayer(C, H, max_distance=5) for _ in range(2)], checkpointed)
    elif kind == "encoder":
        layer = nn.TransformerEncoderLayer(C, H, 20, dropout=0.0, batch_first=True)
        model = ga.convert(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False))
    elif kind == "bert":
        from transformers import BertConfig, BertModel

        cfg = BertConfig(
            vocab_size=50, hidden_size=C, num_hidden_layers=2, num_attention_heads=H,
            intermediate_size=20, max_position_embeddings=16, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, attn_implementation="eager",
        )  # fmt: skip
        model = ga.convert(BertModel(cfg, add_pooling_layer=False))
    else:
        raise ValueError(f"model must be one of {MODELS}, got {kind!r}")
    return model.double()


def layers(model: nn.Module) -> list[nn.Module]:
    """The transformer layers, each its own FSDP unit (its parameters gathered together)."""
    if isinstance(model, Stack) or isinstance(model, nn.TransformerEncoder):
        return list(model.layers)
    return list(model.encoder.layer)  # type: ignore[union-attr, arg-type]  # BERT


def global_batch(kind: str, step: int, seed: int) -> list[Item]:
    """The 4 items of step ``step``: (input, target) pairs, the same in every process."""
    gen = torch.Generator().manual_seed(seed * 1000 + step)
    items: list[Item] = []
    for b in range(GLOBAL_BATCH):
        n = 9 if kind in ("encoder", "bert") else 7 + b  # graphs and sequences of distinct sizes
        target = torch.randn(n, C, generator=gen, dtype=torch.float64)  # [n, C]
        if kind == "bert":
            items.append((torch.randint(50, (n,), generator=gen), target))
        elif kind == "graphormer":
            src = torch.randint(n, (2 * n,), generator=gen)
            dst = torch.randint(n, (2 * n,), generator=gen)
            x = torch.randn(n, C, generator=gen, dtype=torch.float64)  # [n, C]
            items.append((x, torch.stack([src, dst]), target))
        else:
            items.append((torch.randn(n, C, generator=gen, dtype=torch.float64), target))
    return items


def shard_loss(kind: str, model: nn.Module, items: list[Item]) -> Tensor:
    """mean over the items of the mean squared error of each item's outputs."""
    targets = [it[-1] for it in items]
    if kind in ("encoder", "bert"):
        inputs = torch.stack([it[0] for it in items])  # [B, L, C] or ids [B, L]
        y = model(inputs) if kind == "encoder" else model(input_ids=inputs).last_hidden_state
        outs = list(y.unbind(0))  # B x [L, C]
    else:
        lengths = [it[0].shape[0] for it in items]
        x = torch.cat([it[0] for it in items])  # [N, C]
        if kind == "blocks":
            y = model(x, ga.window_graph(window=2, lengths=lengths))  # [N, C]
        else:
            starts = torch.tensor([0, *lengths[:-1]]).cumsum(0)
            edges = torch.cat([it[1] + s for it, s in zip(items, starts)], 1)  # [2, E_in]
            batch = torch.arange(len(items)).repeat_interleave(torch.tensor(lengths))  # [N]
            g, hops = ga.shortest_path_distances(edges, x.shape[0], batch=batch, max_distance=5)
            y = model(x, g, hops)  # [N, C]
        outs = list(y.split(lengths))
    return torch.stack([F.mse_loss(o, t) for o, t in zip(outs, targets)]).mean()


def train(
    kind: str, model: nn.Module, opt: torch.optim.Optimizer, steps: range, seed: int,
    rank: int = 0, world: int = 1,
) -> list[float]:  # fmt: skip
    """Adam on the steps; returns the loss of the whole batch at each step (mean over ranks)."""
    per = GLOBAL_BATCH // world
    losses = []
    for step in steps:
        loss = shard_loss(
            kind, model, global_batch(kind, step, seed)[rank * per : (rank + 1) * per]
        )
        opt.zero_grad()
        loss.backward()  # FSDP: reduce-scatter of the gradients, averaged over ranks
        opt.step()
        total = loss.detach().clone()
        if world > 1:
            dist.all_reduce(total)
        losses.append(float(total) / world)
    return losses


def single_process(kind: str, steps: int, seed: int) -> tuple[list[float], dict[str, Tensor]]:
    """The reference: one process, no sharding, the whole batch each step."""
    model = make_model(kind, seed)
    losses = train(kind, model, torch.optim.Adam(model.parameters(), lr=LR), range(steps), seed)
    return losses, {k: p.detach().clone() for k, p in model.named_parameters()}


def sharded(kind: str, seed: int, mesh: Any, checkpointed: bool) -> tuple[nn.Module, Any]:
    """The model with every layer, then the root, under ``fully_shard``; its Adam optimizer."""
    from torch.distributed.fsdp import fully_shard

    model = make_model(kind, seed, checkpointed)
    for layer in layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, torch.optim.Adam(model.parameters(), lr=LR)


def run_model(kind: str, rank: int, world: int, mesh: Any, args: argparse.Namespace) -> None:
    """Train ``kind`` sharded, save at --save-at, resume from the checkpoint, save the results."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    folder = Path(args.out or ".") / f"checkpoint-{kind}"
    model, opt = sharded(kind, args.seed, mesh, args.checkpoint)
    losses = train(kind, model, opt, range(args.save_at), args.seed, rank, world)
    msd, osd = get_state_dict(model, opt)  # sharded (DTensor) model and optimizer state
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=folder)
    rest = range(args.save_at, args.steps)
    losses += train(kind, model, opt, rest, args.seed, rank, world)
    params = {k: p.full_tensor().detach() for k, p in model.named_parameters()}

    model2, opt2 = sharded(kind, args.seed + 1, mesh, args.checkpoint)  # other weights
    msd2, osd2 = get_state_dict(model2, opt2)
    state = {"model": msd2, "optim": osd2}
    dcp.load(state, checkpoint_id=folder)  # each rank reads its own shards
    set_state_dict(model2, opt2, model_state_dict=state["model"], optim_state_dict=state["optim"])
    resumed = train(kind, model2, opt2, rest, args.seed, rank, world)
    if rank == 0:
        print(
            f"{kind}: loss {losses[0]:.6f} -> {losses[-1]:.6f} in {args.steps} steps; "
            f"resumed at step {args.save_at}: {resumed[-1]:.6f}"
        )
        if args.out:
            result = {"losses": losses, "resumed": resumed, "params": params}
            torch.save(result, Path(args.out) / f"{kind}.pt")


def worker(rank: int, world: int, args: argparse.Namespace, init_method: str) -> None:
    """One FSDP process: ``run_model`` for every model of --model."""
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        for kind in args.model:
            run_model(kind, rank, world, mesh, args)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, nargs="+", default=list(MODELS))
    parser.add_argument("--nproc", type=int, default=2, help="workers to spawn without torchrun")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--save-at", type=int, default=10, help="step of the checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", action="store_true", help="activation checkpointing")
    parser.add_argument("--out", default=None, help="folder for the checkpoint and the results")
    parser.add_argument("--start-method", choices=["spawn", "fork"], default="spawn")
    args = parser.parse_args(argv)
    if GLOBAL_BATCH % args.nproc or not 0 < args.save_at < args.steps:
        parser.error(
            f"need --nproc dividing {GLOBAL_BATCH} and 0 < --save-at < --steps, got "
            f"{args.nproc}, {args.save_at}, {args.steps}"
        )
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
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
