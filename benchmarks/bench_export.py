"""Export speed: ga.to_networkx vs torch_geometric.utils.to_networkx, side by side in one run.

The case of the issue: one 512-token complete graph (262,144 edges), H=8 heads, fp32 scores and
weights on the edges. Both exporters produce an nx.DiGraph with the per-edge ``score`` and
``weight`` attributes; PyG's is given the head-mean columns so both carry the same data. Two
bulk-NetworkX floors are timed as well: ``add_weighted_edges_from`` (one attribute, no per-edge
dict built by us) and ``nx.from_scipy_sparse_array`` (one attribute).

    python benchmarks/bench_export.py                 # N=512, best of 3
    python benchmarks/bench_export.py --n 128 --repeat 1
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import networkx as nx
import torch

import gatattn as ga


def best_of(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Smallest wall time over ``repeat`` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=512, help="tokens (default 512)")
    parser.add_argument("--heads", type=int, default=8, help="heads (default 8)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = parser.parse_args(argv)

    from scipy.sparse import coo_array
    from torch_geometric.data import Data
    from torch_geometric.utils import to_networkx as pyg_to_networkx

    torch.manual_seed(0)
    n, h = args.n, args.heads
    g = ga.complete_graph(n)
    scores = torch.randn(g.num_edges, h)  # [E, H]
    weights = ga.neighbourhood_softmax(scores, g.edge_index[1], n)  # [E, H]
    res = ga.Attention(torch.zeros(n, 1), g.edge_index, scores, weights, g)
    data = Data(edge_index=g.edge_index, score=scores.mean(1), weight=weights.mean(1), num_nodes=n)
    per_head = [f"{k}_h{i}" for i in range(h) for k in ("score", "weight")]
    for i in range(h):
        data[f"score_h{i}"], data[f"weight_h{i}"] = scores[:, i], weights[:, i]
    w_mean = weights.mean(1).double().numpy()  # [E]
    src, dst = g.edge_index.numpy()

    def weighted_floor() -> nx.DiGraph:
        G = nx.DiGraph()
        G.add_nodes_from(range(n))
        G.add_weighted_edges_from(zip(src.tolist(), dst.tolist(), w_mean.tolist()))
        return G

    def scipy_floor() -> nx.DiGraph:
        return nx.from_scipy_sparse_array(
            coo_array((w_mean, (src, dst)), shape=(n, n)), create_using=nx.DiGraph
        )

    rows = [
        (
            "torch_geometric.utils.to_networkx",
            lambda: pyg_to_networkx(data, edge_attrs=["score", "weight"]),
        ),
        ("ga.to_networkx (head='mean')", lambda: ga.to_networkx(res)),
        (
            f"PyG to_networkx ({2 * h + 2} attributes)",
            lambda: pyg_to_networkx(data, edge_attrs=["score", "weight", *per_head]),
        ),
        ("ga.to_networkx (head='all')", lambda: ga.to_networkx(res, head="all")),
        ("add_weighted_edges_from (1 attr)", weighted_floor),
        ("nx.from_scipy_sparse_array (1 attr)", scipy_floor),
    ]
    print(
        f"N={n} complete graph, E={g.num_edges:,} edges, H={h}, torch {torch.__version__}, "
        f"networkx {nx.__version__}, best of {args.repeat}"
    )
    times, graphs = {}, {}
    for name, fn in rows:
        t, G = best_of(fn, args.repeat)
        assert isinstance(G, nx.DiGraph) and G.number_of_edges() == g.num_edges
        times[name], graphs[name] = t, G
        print(f"  {name:<38} {t:8.3f} s")
    names = [name for name, _ in rows]
    ours, theirs = graphs[names[1]], graphs[names[0]]
    for u, v in [(0, 0), (3, n - 1), (n - 1, 5)]:  # the same numbers on the same edges
        assert abs(ours[u][v]["weight"] - theirs[u][v]["weight"]) < 1e-6
    print(
        f"speed-up of ga.to_networkx over PyG: {times[names[0]] / times[names[1]]:.1f}x "
        f"(head='mean', 2 attributes each), {times[names[2]] / times[names[3]]:.1f}x "
        f"(head='all', {2 * h + 2} attributes each)"
    )


if __name__ == "__main__":
    main()
