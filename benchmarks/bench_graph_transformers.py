"""Graph-transformer speed (docs/graph_transformers.md): Graphormer's spatial bias on batches of
small complete graphs, and the shortest-path distances that feed it.

Case S1, one attention layer, fwd+bwd, on 128 random trees with chords of 15-35 nodes
(C=64, H=8). Every gatattn row is a ``ga.GraphAttention`` over the complete graph of each tree
(``ga.shortest_path_distances``); the PyG rows are the same width and heads:

    gatattn no bias        scaled_dot on the complete graphs (the dense backend: one SDPA call)
    gatattn SpatialBias    scaled_dot + SpatialBias(H, 20), edge_attr = the hop distances
    gatattn EdgeFeatureBias  scaled_dot + EdgeFeatureBias on one-hot distances [E, 22] (the
                           closest part before SpatialBias existed)
    GATConv / TransformerConv (input)     PyG on the trees' own edges (the usual GNN use)
    GATConv / TransformerConv (complete)  PyG on the same complete graphs

Case G1, training: one full-batch Adam step (fwd + bwd + step) of a 2-layer model (C=32, H=8)
on 200 random trees with chords of 30-60 nodes, 4 node classes: ``ga.GraphormerLayer`` × 2
(scaled_dot + SpatialBias on the complete graphs, distances computed once) against PyG's
GATConv × 2 with residuals on the input edges; the same input and output layers.

Case S2, ``ga.shortest_path_distances`` on 1,000 random trees with chords of 20-40 nodes
(one batched call) against ``networkx.all_pairs_shortest_path_length`` per graph and SciPy's
``scipy.sparse.csgraph.shortest_path`` (BFS, unweighted) per graph, on the same graphs.

Case P6 (issue 23), one attention layer, fwd+bwd, on 128 molecule-like graphs (``molecules``:
3,194 nodes, 6,976 directed edges; C=64, H=8), all on the graphs' own edges: ``ga.GraphAttention``
called with the raw edge_index tensor (as a PyG user calls a conv: the same tensor, a fresh call
each time), with a ``ga.TokenGraph`` built once, and with a new copy of the edge_index on every
call (as a DataLoader gives a new batch: nothing about the graph is known in advance), against
PyG's TransformerConv and GATConv of the same width and heads.

Times are medians of interleaved rounds (every method once per round), in ms.

    python benchmarks/bench_graph_transformers.py            # every case
    python benchmarks/bench_graph_transformers.py --quick    # small sizes, a smoke run
    python benchmarks/bench_graph_transformers.py --cases P6 --rounds 21 --threads 2
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

import gatattn as ga


def trees_with_chords(
    num_graphs: int, low: int, high: int, seed: int = 0
) -> tuple[Tensor, Tensor, list[int]]:
    """Undirected random trees (each node hangs under a random earlier one) plus n/5 random
    chords, both directions stored. Returns (edge_index [2, E], batch [N], sizes)."""
    gen = torch.Generator().manual_seed(seed)
    edges, sizes, start = [], [], 0
    for _ in range(num_graphs):
        n = int(torch.randint(low, high + 1, (1,), generator=gen))
        child = torch.arange(1, n)
        parent = (torch.rand(n - 1, generator=gen) * child).long()  # [n-1] in [0, child)
        chords = torch.randint(0, n, (2, max(1, n // 5)), generator=gen)
        e = torch.cat([torch.stack([parent, child]), chords], 1)
        e = e[:, e[0] != e[1]]
        edges.append(torch.cat([e, e.flip(0)], 1) + start)
        sizes.append(n)
        start += n
    batch = torch.arange(num_graphs).repeat_interleave(torch.tensor(sizes))
    return torch.cat(edges, 1), batch, sizes


def molecules(
    num_graphs: int, low: int = 15, high: int = 35, seed: int = 20
) -> tuple[Tensor, Tensor, list[int]]:
    """Molecule-like graphs: random trees of ``low``-``high`` atoms with at most 4 bonds per
    atom, each atom bonded to one of the 6 atoms before it (chains with branches), plus about
    n/7.5 ring closures of 5 or 6 atoms; no duplicate bonds, both directions stored. With the
    defaults, 128 graphs have 3,194 nodes and 6,976 edges (ZINC-like: about 25 atoms and 2.2
    directed edges per atom). Returns (edge_index [2, E], batch [N], sizes)."""
    rng = random.Random(seed)
    edges, sizes, start = [], [], 0
    for _ in range(num_graphs):
        n = rng.randint(low, high)
        deg, parent = [0] * n, [-1] * n
        bonds = []
        for c in range(1, n):
            recent = [p for p in range(max(0, c - 6), c) if deg[p] < 4]
            light = [p for p in recent if deg[p] < 3]
            p = rng.choice(light if light and rng.random() < 0.85 else recent)
            bonds.append((p, c))
            deg[p] += 1
            deg[c] += 1
            parent[c] = p
        made = tries = 0
        while made < round(n / 7.5) and tries < 50 * n:
            tries += 1
            u = a = rng.randrange(n)
            for _ in range(rng.choice((4, 5))):  # a ring of 5 or 6 atoms
                a = parent[a] if a >= 0 else -1
            if a < 0 or deg[u] >= 4 or deg[a] >= 4 or (a, u) in bonds:
                continue
            bonds.append((a, u))
            deg[u] += 1
            deg[a] += 1
            made += 1
        e = torch.tensor(bonds).t()  # [2, bonds]
        edges.append(torch.cat([e, e.flip(0)], 1) + start)
        sizes.append(n)
        start += n
    batch = torch.arange(num_graphs).repeat_interleave(torch.tensor(sizes))
    return torch.cat(edges, 1), batch, sizes


def median_ms(methods: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median wall time per method over interleaved rounds (after one warm-up call each)."""
    for f in methods.values():
        f()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, f in methods.items():
            t0 = time.perf_counter()
            f()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def case_s1(num_graphs: int, channels: int, heads: int, rounds: int) -> dict[str, float]:
    """One attention layer, fwd+bwd, ms."""
    from torch_geometric.nn import GATConv, TransformerConv

    ei, batch, _ = trees_with_chords(num_graphs, 15, 35, seed=1)
    N = batch.numel()
    g, dist = ga.shortest_path_distances(ei, N, batch=batch, max_distance=20)
    onehot = torch.nn.functional.one_hot(dist, 22).float()  # [E_c, 22]
    C, H = channels, heads
    x = torch.randn(N, C, requires_grad=True)
    plain = ga.GraphAttention(C, H)
    spatial = ga.GraphAttention(
        C, H, score=ga.make_score("scaled_dot", H, C // H) + ga.SpatialBias(H)
    )
    edgefeat = ga.GraphAttention(
        C, H, score=ga.make_score("scaled_dot", H, C // H) + ga.EdgeFeatureBias(22, H)
    )
    gat = GATConv(C, C // H, heads=H)
    tconv = TransformerConv(C, C // H, heads=H)
    print(f"S1: {num_graphs} graphs, N={N}, input E={ei.size(1)}, complete E={g.num_edges}")
    print(f"    no bias:     {plain.explain_backend(x, g).splitlines()[0]}")
    print(f"    SpatialBias: {spatial.explain_backend(x, g).splitlines()[0]}")

    def step(f: Callable[[], Tensor]) -> Callable[[], None]:
        def run() -> None:
            out = f()
            out.sum().backward()

        return run

    methods = {
        "gatattn no bias": step(lambda: plain(x, g)),
        "gatattn SpatialBias": step(lambda: spatial(x, g, edge_attr=dist)),
        "gatattn EdgeFeatureBias (one-hot)": step(lambda: edgefeat(x, g, edge_attr=onehot)),
        "GATConv (input graph)": step(lambda: gat(x, ei)),
        "TransformerConv (input graph)": step(lambda: tconv(x, ei)),
        "GATConv (complete graph)": step(lambda: gat(x, g.edge_index)),
        "TransformerConv (complete graph)": step(lambda: tconv(x, g.edge_index)),
    }
    return median_ms(methods, rounds)


def case_g1(num_graphs: int, channels: int, heads: int, rounds: int) -> dict[str, float]:
    """One full-batch Adam step of a 2-layer model, ms: Graphormer-style against GATConv."""
    from torch_geometric.nn import GATConv

    ei, batch, _ = trees_with_chords(num_graphs, 30, 60, seed=3)
    N = batch.numel()
    g, dist = ga.shortest_path_distances(ei, N, batch=batch, max_distance=20)
    C, H = channels, heads
    x, y = torch.randn(N, 8), torch.randint(0, 4, (N,))
    print(f"G1: {num_graphs} graphs, N={N}, input E={ei.size(1)}, complete E={g.num_edges}")

    class Graphormer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.out = torch.nn.Linear(8, C), torch.nn.Linear(C, 4)
            layers = [ga.GraphormerLayer(C, H, ffn_dim=2 * C) for _ in range(2)]
            self.layers = torch.nn.ModuleList(layers)

        def forward(self) -> Tensor:
            h = self.inp(x)
            for layer in self.layers:
                h = layer(h, g, dist)
            return self.out(h)

    class GAT(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.out = torch.nn.Linear(8, C), torch.nn.Linear(C, 4)
            self.layers = torch.nn.ModuleList(GATConv(C, C // H, heads=H) for _ in range(2))

        def forward(self) -> Tensor:
            h = self.inp(x)
            for layer in self.layers:
                h = h + torch.nn.functional.elu(layer(h, ei))
            return self.out(h)

    def trainer(model: torch.nn.Module) -> Callable[[], None]:
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)

        def step() -> None:
            loss = torch.nn.functional.cross_entropy(model(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step

    torch.manual_seed(0)
    methods = {
        "gatattn Graphormer (2 x GraphormerLayer)": trainer(Graphormer()),
        "GATConv x 2 (input graph)": trainer(GAT()),
    }
    return median_ms(methods, rounds)


def case_s2(num_graphs: int, rounds: int) -> dict[str, float]:
    """All-pairs hop distances of ``num_graphs`` graphs, ms."""
    import networkx as nx
    import numpy as np
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import shortest_path

    ei, batch, sizes = trees_with_chords(num_graphs, 20, 40, seed=2)
    N = batch.numel()
    starts = [0]
    for n in sizes[:-1]:
        starts.append(starts[-1] + n)
    per_graph = [ei[:, batch[ei[0]] == b] - starts[b] for b in range(num_graphs)]
    nx_graphs, sp_graphs = [], []
    for n, e in zip(sizes, per_graph):
        G = nx.Graph()
        G.add_nodes_from(range(n))
        G.add_edges_from(e.t().tolist())
        nx_graphs.append(G)
        sp_graphs.append(csr_matrix((np.ones(e.size(1)), (e[0].numpy(), e[1].numpy())), (n, n)))
    print(f"S2: {num_graphs} graphs of 20-40 nodes, N={N}, E={ei.size(1)}")
    methods = {
        "gatattn shortest_path_distances": lambda: ga.shortest_path_distances(ei, N, batch=batch),
        "networkx all_pairs_shortest_path_length": lambda: [
            dict(nx.all_pairs_shortest_path_length(G)) for G in nx_graphs
        ],
        "scipy csgraph.shortest_path per graph": lambda: [
            shortest_path(a, unweighted=True, directed=True) for a in sp_graphs
        ],
    }
    return median_ms(methods, rounds)


def case_p6(num_graphs: int, channels: int, heads: int, rounds: int) -> dict[str, float]:
    """One attention layer on molecule-size graphs' own edges, fwd+bwd, ms."""
    from torch_geometric.nn import GATConv, TransformerConv

    ei, batch, _ = molecules(num_graphs)
    N, C, H = batch.numel(), channels, heads
    x = torch.randn(N, C, requires_grad=True)
    layer = ga.GraphAttention(C, H)
    g = ga.TokenGraph(ei, N)  # built once, reused every call
    gat = GATConv(C, C // H, heads=H)
    tconv = TransformerConv(C, C // H, heads=H)
    print(f"P6: {num_graphs} molecule-like graphs, N={N}, E={ei.size(1)}")
    print(f"    {layer.explain_backend(x, ei).splitlines()[0]}")

    def step(f: Callable[[], Tensor]) -> Callable[[], None]:
        def run() -> None:
            f().sum().backward()

        return run

    methods = {
        "gatattn, edge_index (each call)": step(lambda: layer(x, ei)),
        "gatattn, TokenGraph (built once)": step(lambda: layer(x, g)),
        "gatattn, a new edge_index tensor each call": step(lambda: layer(x, ei.clone())),
        "TransformerConv": step(lambda: tconv(x, ei)),
        "GATConv": step(lambda: gat(x, ei)),
    }
    return median_ms(methods, rounds)


def _table(title: str, times: dict[str, float], base: str) -> None:
    print(f"\n| {title} | ms | ÷ {base} |\n|---|---:|---:|")
    for name, ms in times.items():
        print(f"| {name} | {ms:,.1f} | {ms / times[base]:.2f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--cases", default="S1,G1,S2,P6", help="comma-separated: S1, G1, S2, P6")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--heads", type=int, default=8)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), quick={args.quick}")
    cases = {c.strip() for c in args.cases.split(",")}
    if "S1" in cases:
        t = case_s1(16 if args.quick else 128, args.channels, args.heads, args.rounds)
        _table("S1 layer fwd+bwd", t, "gatattn no bias")
    if "G1" in cases:
        t = case_g1(20 if args.quick else 200, 32, 8, args.rounds)
        _table("G1 training step (Adam)", t, "GATConv x 2 (input graph)")
    if "S2" in cases:
        t = case_s2(50 if args.quick else 1000, args.rounds)
        _table("S2 all-pairs hop distances", t, "networkx all_pairs_shortest_path_length")
    if "P6" in cases:
        t = case_p6(16 if args.quick else 128, args.channels, args.heads, args.rounds)
        _table("P6 layer fwd+bwd, input edges", t, "TransformerConv")
        _table("P6 layer fwd+bwd, input edges", t, "GATConv")


if __name__ == "__main__":
    main()
