"""Node classification: gatattn's GraphAttention next to PyG's GATConv and TransformerConv.

Two datasets, no downloads:

* KarateClub (ships inside PyG): 34 nodes, 4 classes, one labelled node per class.
* A stochastic block model from ``torch_geometric.utils.stochastic_blockmodel_graph``: 4 blocks of
  60 nodes (p_in = 0.1, p_out = 0.01), with 16-d features that are noisy class means (σ = 2), so the
  graph carries most of the signal. Each class has 20 labelled nodes.

Every model is the same network with a different attention layer:

    Linear(F -> 32) -> conv -> ELU -> conv -> ELU -> Linear(32 -> classes),    4 heads

conv is GraphAttention(score=scaled_dot | additive | gatv2, root_weight=True), GATConv(32, 8,
heads=4) or TransformerConv(32, 8, heads=4). All models use the same loop (Adam, lr 0.01,
weight decay 5e-4, full batch) and the same seeds. The script reports test accuracy as
mean ± std over the seeds (last epoch, no early stopping) and the wall time per training epoch
as a ratio to GATConv and to TransformerConv. Times come from a separate pass that interleaves
the five models epoch by epoch, so background load hits them alike, and keeps each model's
fastest epoch (as ``timeit`` does), on one thread.

    python examples/node_classification.py --epochs 100 --seeds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.datasets import KarateClub
from torch_geometric.nn import GATConv, TransformerConv
from torch_geometric.utils import stochastic_blockmodel_graph

import gatattn as ga

DIM, HEADS = 32, 4

CONVS: dict[str, Callable[[], nn.Module]] = {
    "gatattn scaled_dot": lambda: ga.GraphAttention(DIM, HEADS, root_weight=True),
    "gatattn additive": lambda: ga.GraphAttention(DIM, HEADS, score="additive", root_weight=True),
    "gatattn gatv2": lambda: ga.GraphAttention(DIM, HEADS, score="gatv2", root_weight=True),
    "PyG GATConv": lambda: GATConv(DIM, DIM // HEADS, heads=HEADS),
    "PyG TransformerConv": lambda: TransformerConv(DIM, DIM // HEADS, heads=HEADS),
}


class Net(nn.Module):
    """Linear -> conv -> ELU -> conv -> ELU -> Linear; x [N, F] -> logits [N, classes]."""

    def __init__(self, conv: Callable[[], nn.Module], in_dim: int, classes: int) -> None:
        super().__init__()
        self.inp = nn.Linear(in_dim, DIM)
        self.conv1, self.conv2 = conv(), conv()
        self.out = nn.Linear(DIM, classes)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        h = self.inp(x)  # [N, 32]
        h = F.elu(self.conv1(h, edge_index))  # [N, 32]
        h = F.elu(self.conv2(h, edge_index))
        return self.out(h)  # [N, classes]


def karate() -> Data:
    data = KarateClub()[0]
    data.test_mask = ~data.train_mask
    return data


def sbm(seed: int = 0, blocks: int = 4, size: int = 60, labelled: int = 20) -> Data:
    """Stochastic block model with weakly informative features; the same graph for every seed."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # stochastic_blockmodel_graph draws from the global RNG
    probs = torch.full((blocks, blocks), 0.01).fill_diagonal_(0.1)
    edge_index = stochastic_blockmodel_graph([size] * blocks, probs, directed=False)
    y = torch.arange(blocks).repeat_interleave(size)  # [N]
    means = torch.randn(blocks, 16, generator=gen)  # [classes, 16]
    x = means[y] + 2.0 * torch.randn(blocks * size, 16, generator=gen)  # [N, 16]
    train = torch.zeros(blocks * size, dtype=torch.bool)
    for c in range(blocks):
        idx = (y == c).nonzero().squeeze(1)
        train[idx[torch.randperm(size, generator=gen)[:labelled]]] = True
    return Data(x=x, edge_index=edge_index, y=y, train_mask=train, test_mask=~train)


@dataclass
class Run:
    accuracy: float
    first_loss: float
    last_loss: float


def epoch(model: nn.Module, opt: torch.optim.Optimizer, data: Data) -> float:
    """One full-batch training step; returns the loss."""
    model.train()
    logits = model(data.x, data.edge_index)  # [N, classes]
    loss = F.cross_entropy(logits[data.train_mask], data.y[data.train_mask])
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def train_one(name: str, data: Data, seed: int, epochs: int) -> Run:
    torch.manual_seed(seed)
    model = Net(CONVS[name], data.num_features, int(data.y.max()) + 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    losses = [epoch(model, opt, data) for _ in range(epochs)]
    model.eval()
    with torch.no_grad():
        pred = model(data.x, data.edge_index).argmax(-1)
    acc = float((pred[data.test_mask] == data.y[data.test_mask]).float().mean())
    return Run(acc, losses[0], losses[-1])


def epoch_seconds(data: Data, rounds: int) -> dict[str, float]:
    """Fastest training epoch of each model over ``rounds`` interleaved rounds (after 2 warm-up)."""
    classes = int(data.y.max()) + 1
    models = {name: Net(conv, data.num_features, classes) for name, conv in CONVS.items()}
    opts = {name: torch.optim.Adam(m.parameters(), lr=0.01) for name, m in models.items()}
    best = dict.fromkeys(models, float("inf"))
    for r in range(rounds + 2):
        for name, model in models.items():
            t0 = time.perf_counter()
            epoch(model, opts[name], data)
            if r >= 2:
                best[name] = min(best[name], time.perf_counter() - t0)
    return best


DATASETS: dict[str, Callable[[], Data]] = {"KarateClub": karate, "SBM (4 × 60)": sbm}


def compare(epochs: int, seeds: int) -> dict[str, dict[str, list[Run]]]:
    """dataset -> model -> one Run per seed."""
    out = {}
    for ds, make in DATASETS.items():
        data = make()
        out[ds] = {name: [train_one(name, data, s, epochs) for s in range(seeds)] for name in CONVS}
    return out


def timings(epochs: int) -> dict[str, dict[str, float]]:
    """dataset -> model -> fastest training epoch in seconds."""
    return {ds: epoch_seconds(make(), epochs) for ds, make in DATASETS.items()}


def table(results: dict[str, dict[str, list[Run]]], times: dict[str, dict[str, float]]) -> str:
    """Markdown table: accuracy mean ± std, and per-epoch time as ratios to the PyG layers."""
    lines = [
        "| dataset | model | test accuracy | time/epoch | ÷ GATConv | ÷ TransformerConv |",
        "|---|---|---|---|---|---|",
    ]
    for ds, models in results.items():
        t_gat, t_tc = times[ds]["PyG GATConv"], times[ds]["PyG TransformerConv"]
        for name, runs in models.items():
            accs = [r.accuracy for r in runs]
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            t = times[ds][name]
            lines.append(
                f"| {ds} | {name} | {statistics.mean(accs):.3f} ± {std:.3f} | {t * 1e3:.2f} ms "
                f"| {t / t_gat:.2f} | {t / t_tc:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[Run]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.seeds < 1:
        parser.error(f"--epochs and --seeds must be >= 1, got {args.epochs}, {args.seeds}")
    torch.set_num_threads(1)  # small graphs: one thread, and steadier timings
    results = compare(args.epochs, args.seeds)
    times = timings(args.epochs)
    print(f"{args.epochs} epochs, {args.seeds} seeds, accuracy on the unlabelled nodes")
    print(table(results, times))
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
