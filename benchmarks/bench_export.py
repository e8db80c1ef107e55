"""Export speed: ga.to_networkx vs torch_geometric.utils.to_networkx, side by side in one run.

The case of the issue: one 512-token complete graph (262,144 edges), H=8 heads, fp32 scores and
weights on the edges. Both exporters produce an nx.DiGraph with the per-edge ``score`` and
``weight`` attributes; PyG's is given the head-mean columns so both carry the same data. Two
bulk-NetworkX floors are timed as well: ``add_weighted_edges_from`` (one attribute, no per-edge
dict built by us) and ``nx.from_scipy_sparse_array`` (one attribute).

    python benchmarks/bench_export.py                 # N=512, best of 3
    python benchmarks/bench_export.py --n 128 --repeat 1 --per-head
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable

import networkx as nx
import numpy as np
import torch

import gatattn as ga


def best_of(
    fn: Callable[[], nx.DiGraph], repeat: int, probe: list[tuple[int, int]]
) -> tuple[float, list[float]]:
    """Smallest wall time over ``repeat`` calls, and the ``weight`` of the probe edges.

    Each graph is dropped and garbage-collected before the next call, so that no run pays for
    the garbage collector walking the graphs of earlier runs.
    """
    best, values = float("inf"), []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        G = fn()
        best = min(best, time.perf_counter() - t0)
        assert isinstance(G, nx.DiGraph) and G.number_of_edges() == len(G) ** 2
        values = [G[u][v]["weight"] for u, v in probe]
        del G
    return best, values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=512, help="tokens (default 512)")
    parser.add_argument("--heads", type=int, default=8, help="heads (default 8)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument(
        "--per-head", action="store_true", help="also time PyG with per-head attributes (slow)"
    )
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
        ("add_weighted_edges_from (1 attr)", weighted_floor),
        ("nx.from_scipy_sparse_array (1 attr)", scipy_floor),
        ("ga.to_networkx (head='all')", lambda: ga.to_networkx(res, head="all")),
    ]
    if args.per_head:  # slow: PyG sets each attribute of each edge in a Python loop
        rows.append(
            (
                f"PyG to_networkx ({2 * h + 2} attributes)",
                lambda: pyg_to_networkx(data, edge_attrs=["score", "weight", *per_head]),
            )
        )
    print(
        f"N={n} complete graph, E={g.num_edges:,} edges, H={h}, torch {torch.__version__}, "
        f"networkx {nx.__version__}, best of {args.repeat}"
    )
    probe = [(0, 0), (3, n - 1), (n - 1, 5)]
    times, values = {}, {}
    for name, fn in rows:
        times[name], values[name] = best_of(fn, args.repeat, probe)
        print(f"  {name:<38} {times[name]:8.3f} s")
    names = [name for name, _ in rows]
    assert np.allclose(values[names[0]], values[names[1]], atol=1e-6)  # same numbers, same edges
    print(
        f"speed-up of ga.to_networkx over PyG (2 attributes): {times[names[0]] / times[names[1]]:.1f}x"
    )
    if args.per_head:
        ratio = times[names[5]] / times[names[4]]
        print(
            f"speed-up with per-head attributes (head='all', {2 * h + 2} attributes): {ratio:.1f}x"
        )


if __name__ == "__main__":
    main()
