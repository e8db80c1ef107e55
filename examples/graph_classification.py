"""Graph classification with gatattn layers on batches of small synthetic graphs (docs/pyg.md).

Each graph has 5-10 nodes coloured red, green or blue (one-hot features). The label says whether
some edge joins a red node to a blue node. Colour counts alone cannot tell, so a node has to look
at its neighbours: attention over the graph does that. Graphs go through PyG's ``DataLoader``,
which packs them into one ``Batch`` (block-diagonal edge_index plus the ``batch`` vector), and
the model is

    Linear -> GraphTransformerBlock(gatv2) -> GraphAttention(root_weight) -> mean pool -> Linear

    python examples/graph_classification.py --epochs 10
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from torch_geometric.nn import global_mean_pool
from torch_geometric.utils import to_undirected

import gatattn as ga

COLOURS = 3  # red, green, blue


class GraphClassifier(nn.Module):
    """x [N, F] -> node embeddings -> per-graph logits [B, classes]."""

    def __init__(self, in_dim: int, dim: int, heads: int, classes: int) -> None:
        super().__init__()
        self.inp = nn.Linear(in_dim, dim)
        self.block = ga.GraphTransformerBlock(dim, heads, score="gatv2", ffn_dim=2 * dim)
        self.att = ga.GraphAttention(dim, heads, root_weight=True)
        self.out = nn.Linear(dim, classes)

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor) -> Tensor:
        h = self.inp(x)  # [N, C]
        h = self.block(h, edge_index, None, batch)  # [N, C]
        h = torch.relu(self.att(h, edge_index))  # [N, C]
        return self.out(global_mean_pool(h, batch))  # [B, classes]


def random_graph(gen: torch.Generator, label: int) -> Data:
    """A connected graph (random tree + chords) whose red-blue edge test gives ``label``."""
    while True:
        n = int(torch.randint(5, 11, (1,), generator=gen))
        parent = [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)]
        src = torch.tensor(parent + torch.randint(0, n, (2,), generator=gen).tolist())
        dst = torch.tensor(list(range(1, n)) + torch.randint(0, n, (2,), generator=gen).tolist())
        keep = src != dst
        edge_index = to_undirected(torch.stack([src[keep], dst[keep]]), num_nodes=n)  # [2, E]
        colour = torch.randint(0, COLOURS, (n,), generator=gen)  # [N]
        a, b = colour[edge_index[0]], colour[edge_index[1]]
        has = bool(((a == 0) & (b == 2)).any())
        if int(has) == label:
            x = F.one_hot(colour, COLOURS).float()  # [N, 3]
            return Data(x=x, edge_index=edge_index, y=torch.tensor([label]))


def random_graphs(num: int, seed: int) -> list[Data]:
    """``num`` graphs, classes alternating 0/1 (balanced), from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    return [random_graph(gen, i % 2) for i in range(num)]


def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for b in loader:
            correct += int((model(b.x, b.edge_index, b.batch).argmax(-1) == b.y).sum())
            total += b.num_graphs
    model.train()
    return correct / total


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--graphs", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.graphs < 4:
        parser.error(f"need --epochs >= 1 and --graphs >= 4, got {args.epochs}, {args.graphs}")
    torch.set_num_threads(1)  # tiny graphs: one thread is fastest
    torch.manual_seed(args.seed)
    graphs = random_graphs(args.graphs, args.seed)
    split = len(graphs) * 3 // 4
    train = DataLoader(graphs[:split], batch_size=32, shuffle=True)
    test = DataLoader(graphs[split:], batch_size=64)
    model = GraphClassifier(COLOURS, 24, 3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history: dict[str, list[float]] = {"loss": [], "train_acc": [], "test_acc": []}
    for epoch in range(args.epochs):
        total = 0.0
        for b in train:  # b: a Batch of 32 graphs
            loss = F.cross_entropy(model(b.x, b.edge_index, b.batch), b.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * b.num_graphs
        history["loss"].append(total / split)
        history["train_acc"].append(accuracy(model, train))
        history["test_acc"].append(accuracy(model, test))
        print(
            f"epoch {epoch + 1:3d}  loss {history['loss'][-1]:.3f}  "
            f"train {history['train_acc'][-1]:.1%}  test {history['test_acc'][-1]:.1%}"
        )
    return history


if __name__ == "__main__":
    main()
    sys.exit(0)
