"""Learning quality of graph transformers (docs/graph_transformers.md): gatattn's Graphormer and
a GPS-style recipe against PyG's GATConv, TransformerConv and GPSConv, at equal depth and width.

Generated data only (nothing is downloaded):

* long-range: per node, the hop distance to the nearer of two marked nodes (classes 0..6, and
  7 = "farther") on random trees with chords of 30-60 nodes; node features [marked, 1].
* CSL: circulant graphs C(41, {1, s}), s in {2, 3, 4, 5, 6, 9, 11, 12, 13, 16}, 15 per class,
  nodes randomly permuted; 1-WL cannot separate them. Features: a positional encoding, the same
  for every model: random-walk PE (PyG's ``AddRandomWalkPE``, 8 steps; ``csl-rw``) or 8
  Laplacian eigenvectors (``AddLaplacianEigenvectorPE``, random signs; ``csl-lap``).
* BA-Shapes: PyG's ``ExplainerDataset`` (a 300-node Barabási-Albert graph with 80 house motifs,
  4 classes), constant features; a random half of the nodes trains.
* SBM: 4 blocks of 60 nodes (p_in = 0.1, p_out = 0.01) with noisy class-mean features;
  20 labelled nodes per block (as examples/node_classification.py).

Models (2 layers, C = 32, H = 4, the same input and output layers; Adam, lr 3e-3):

    gatattn Graphormer     DegreeEncoding + GraphormerLayer × 2 (SpatialBias) on complete graphs
    gatattn GPS            local GINConv + global ga.GraphAttention on complete graphs, per layer
    PyG GATConv            GATConv × 2 with residuals on the input graph
    PyG TransformerConv    TransformerConv × 2 with residuals on the input graph
    PyG GPSConv            GPSConv(GINConv, multihead attention) × 2

Reported: test accuracy at the last epoch (no model selection), mean ± std over seeds, and the
mean training time per epoch.

    python benchmarks/learn_graph_transformers.py              # the table (a few minutes)
    python benchmarks/learn_graph_transformers.py --quick      # tiny, a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import networkx as nx
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GATConv, GINConv, GPSConv, TransformerConv, global_mean_pool
from torch_geometric.transforms import AddLaplacianEigenvectorPE, AddRandomWalkPE
from torch_geometric.utils import stochastic_blockmodel_graph, to_undirected

import gatattn as ga

DIM, HEADS, LAYERS = 32, 4, 2
SPD = ga.AddShortestPaths(max_distance=20)


# ------------------------------------------------------------------ tasks
@dataclass
class Task:
    name: str
    train: list[Data]  # node tasks: ``mask`` marks the nodes of the loss / the metric
    test: list[Data]
    level: str  # "node" or "graph"
    classes: int
    epochs: int
    batch_size: int


def _tree_with_chords(gen: torch.Generator, low: int, high: int) -> tuple[Tensor, int]:
    n = int(torch.randint(low, high + 1, (1,), generator=gen))
    child = torch.arange(1, n)
    parent = (torch.rand(n - 1, generator=gen) * child).long()  # [n-1] in [0, child)
    chords = torch.randint(0, n, (2, max(1, n // 10)), generator=gen)
    e = torch.cat([torch.stack([parent, child]), chords], 1)
    return to_undirected(e[:, e[0] != e[1]], num_nodes=n), n


def long_range(seed: int, num_train: int, num_test: int) -> Task:
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for _ in range(num_train + num_test):
        ei, n = _tree_with_chords(gen, 30, 60)
        marked = torch.randperm(n, generator=gen)[:2]
        G = nx.Graph(ei.t().tolist())
        hops = nx.multi_source_dijkstra_path_length(G, set(marked.tolist()))
        y = torch.tensor([min(int(hops[i]), 7) for i in range(n)])  # 7 = "farther"
        x = torch.zeros(n, 2)
        x[:, 1] = 1.0
        x[marked, 0] = 1.0
        graphs.append(SPD(Data(x=x, edge_index=ei, y=y, mask=torch.ones(n, dtype=torch.bool))))
    return Task("long-range hops", graphs[:num_train], graphs[num_train:], "node", 8, 0, 32)


CSL_SKIPS = (2, 3, 4, 5, 6, 9, 11, 12, 13, 16)


def csl(seed: int, per_class: int, encoding: str = "rw") -> Task:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # AddLaplacianEigenvectorPE flips signs with the global RNG
    pe: Callable[[Data], Data] = (  # concatenated to x
        AddRandomWalkPE(walk_length=8, attr_name=None)
        if encoding == "rw"
        else AddLaplacianEigenvectorPE(k=8, attr_name=None, is_undirected=True)
    )
    graphs = []
    for label, s in enumerate(CSL_SKIPS):
        for _ in range(per_class):
            n = 41
            i = torch.arange(n)
            ei = torch.cat([torch.stack([i, (i + 1) % n]), torch.stack([i, (i + s) % n])], 1)
            perm = torch.randperm(n, generator=gen)
            ei = to_undirected(perm[ei], num_nodes=n)
            data = Data(x=torch.ones(n, 1), edge_index=ei, y=torch.tensor([label]), num_nodes=n)
            graphs.append(SPD(pe(data)))
    order = torch.randperm(len(graphs), generator=gen).tolist()
    graphs = [graphs[k] for k in order]
    cut = len(graphs) * 2 // 3
    name = "CSL (RW-PE)" if encoding == "rw" else "CSL (LapPE)"
    return Task(name, graphs[:cut], graphs[cut:], "graph", 10, 0, 25)


def ba_shapes(seed: int) -> Task:
    from torch_geometric.datasets import ExplainerDataset
    from torch_geometric.datasets.graph_generator import BAGraph

    torch.manual_seed(seed)  # the generators draw from the global RNG
    data = ExplainerDataset(
        graph_generator=BAGraph(num_nodes=300, num_edges=5),
        motif_generator="house",
        num_motifs=80,
    )[0]
    n = data.num_nodes
    gen = torch.Generator().manual_seed(seed)
    train = torch.zeros(n, dtype=torch.bool)
    train[torch.randperm(n, generator=gen)[: n // 2]] = True
    base = Data(x=torch.ones(n, 1), edge_index=data.edge_index, y=data.y, num_nodes=n)
    base = SPD(base)
    tr, te = base.clone(), base.clone()
    tr.mask, te.mask = train, ~train
    return Task("BA-Shapes", [tr], [te], "node", 4, 0, 1)


def sbm(seed: int) -> Task:
    blocks, size = 4, 60
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # stochastic_blockmodel_graph draws from the global RNG
    probs = torch.full((blocks, blocks), 0.01).fill_diagonal_(0.1)
    ei = stochastic_blockmodel_graph([size] * blocks, probs, directed=False)
    y = torch.arange(blocks).repeat_interleave(size)
    x = torch.randn(blocks, 16, generator=gen)[y] + 2.0 * torch.randn(
        blocks * size, 16, generator=gen
    )
    train = torch.zeros(blocks * size, dtype=torch.bool)
    for c in range(blocks):
        idx = (y == c).nonzero().squeeze(1)
        train[idx[torch.randperm(size, generator=gen)[:20]]] = True
    base = SPD(Data(x=x, edge_index=ei, y=y, num_nodes=blocks * size))
    tr, te = base.clone(), base.clone()
    tr.mask, te.mask = train, ~train
    return Task("SBM (4 × 60)", [tr], [te], "node", 4, 0, 1)


# ------------------------------------------------------------------ models
def _mlp(dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))


class GatattnGPSLayer(nn.Module):
    """GPS (Rampášek et al. 2022) from gatattn parts: local MPNN + global attention, summed,
    then an FFN. The global part is ``ga.GraphAttention`` on each graph's complete graph: no
    padding to a dense batch, as PyG's GPSConv needs."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.local = GINConv(_mlp(dim))
        self.attn = ga.GraphAttention(dim, heads)
        self.norm_local, self.norm_attn, self.norm_out = (nn.LayerNorm(dim) for _ in range(3))
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def forward(self, h: Tensor, edge_index: Tensor, g: ga.TokenGraph) -> Tensor:
        local = self.norm_local(h + self.local(h, edge_index))  # [N, C]
        glob = self.norm_attn(h + self.attn(h, g))  # [N, C]
        out = local + glob
        return self.norm_out(out + self.ffn(out))


class Net(nn.Module):
    """Linear -> 2 layers of ``kind`` -> (mean pool) -> Linear."""

    def __init__(self, kind: str, in_dim: int, classes: int, level: str) -> None:
        super().__init__()
        self.kind, self.level = kind, level
        self.inp = nn.Linear(in_dim, DIM)
        self.degree = ga.DegreeEncoding(DIM, 32, directed=False) if kind == "graphormer" else None
        layers: list[nn.Module] = []
        for _ in range(LAYERS):
            if kind == "graphormer":
                layers.append(ga.GraphormerLayer(DIM, HEADS, ffn_dim=2 * DIM))
            elif kind == "gatattn_gps":
                layers.append(GatattnGPSLayer(DIM, HEADS))
            elif kind == "gat":
                layers.append(GATConv(DIM, DIM // HEADS, heads=HEADS))
            elif kind == "transformer":
                layers.append(TransformerConv(DIM, DIM // HEADS, heads=HEADS))
            elif kind == "gps":
                layers.append(GPSConv(DIM, GINConv(_mlp(DIM)), heads=HEADS))
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(DIM)
        self.out = nn.Linear(DIM, classes)

    def forward(self, b: Batch) -> Tensor:
        h = self.inp(b.x)  # [N, C]
        g = ga.AddShortestPaths.graph(b)  # complete graph per graph, aligned with b.spd
        if self.degree is not None:
            h = self.degree(h, b.edge_index)
        for layer in self.layers:
            if self.kind == "graphormer":
                h = layer(h, g, b.spd)
            elif self.kind == "gatattn_gps":
                h = layer(h, b.edge_index, g)
            elif self.kind == "gps":
                h = layer(h, b.edge_index, b.batch)
            else:
                h = h + F.elu(layer(h, b.edge_index))
        h = self.norm(h)
        if self.level == "graph":
            h = global_mean_pool(h, b.batch)  # [B, C]
        return self.out(h)


MODELS = {
    "gatattn Graphormer": "graphormer",
    "gatattn GPS": "gatattn_gps",
    "PyG GATConv": "gat",
    "PyG TransformerConv": "transformer",
    "PyG GPSConv": "gps",
}


# ------------------------------------------------------------------ training
def _loss_and_hits(model: Net, b: Batch, level: str) -> tuple[Tensor, int, int]:
    logits = model(b)
    if level == "graph":
        y = b.y
    else:
        logits, y = logits[b.mask], b.y[b.mask]
    loss = F.cross_entropy(logits, y)
    return loss, int((logits.argmax(-1) == y).sum()), int(y.numel())


def train_once(task: Task, kind: str, seed: int) -> tuple[float, float]:
    """(test accuracy at the last epoch, mean seconds per training epoch)."""
    torch.manual_seed(seed)
    in_dim = task.train[0].x.size(1)
    model = Net(kind, in_dim, task.classes, task.level)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(task.train, batch_size=task.batch_size, shuffle=True)  # type: ignore[arg-type]
    seconds = []
    for _ in range(task.epochs):
        model.train()
        t0 = time.perf_counter()
        for b in loader:
            loss, _, _ = _loss_and_hits(model, b, task.level)
            opt.zero_grad()
            loss.backward()
            opt.step()
        seconds.append(time.perf_counter() - t0)
    model.eval()
    hits = total = 0
    with torch.no_grad():
        for b in DataLoader(task.test, batch_size=64):  # type: ignore[arg-type]
            _, h, t = _loss_and_hits(model, b, task.level)
            hits, total = hits + h, total + t
    return hits / total, statistics.mean(seconds)


TASKS = ("long-range", "csl-rw", "csl-lap", "ba-shapes", "sbm")


def make_task(name: str, quick: bool, seed: int = 0) -> Task:
    """One task by name (``TASKS``), with its number of epochs."""
    if name == "long-range":
        task, epochs = long_range(seed, 24 if quick else 240, 8 if quick else 80), 30
    elif name in ("csl-rw", "csl-lap"):
        task, epochs = csl(seed, 3 if quick else 15, name.removeprefix("csl-")), 50
    elif name == "ba-shapes":
        task, epochs = ba_shapes(seed), 100
    elif name == "sbm":
        task, epochs = sbm(seed), 100
    else:
        raise SystemExit(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    task.epochs = 2 if quick else epochs
    return task


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model names")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    chosen = [m.strip() for m in args.models.split(",")]
    results: dict[str, dict[str, list[float]]] = {}
    print("| task | model | test accuracy | s / epoch |\n|---|---|---|---:|")
    for task in (make_task(t.strip(), args.quick) for t in args.tasks.split(",")):
        for name in chosen:
            accs, secs = [], []
            for seed in range(args.seeds):
                acc, sec = train_once(task, MODELS[name], seed)
                accs.append(acc)
                secs.append(sec)
            results.setdefault(task.name, {})[name] = accs
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(
                f"| {task.name} | {name} | {statistics.mean(accs):.3f} ± {std:.3f} "
                f"| {statistics.mean(secs):.3f} |",
                flush=True,
            )
    return results


if __name__ == "__main__":
    main()
