"""Pictures of attention patterns: the dense mask of a TokenGraph as an image, and the gallery
that ``gatattn patterns`` and docs/patterns.md draw."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..graph import TokenGraph
from .bigbird import bigbird_graph
from .masks import bipartite_graph, from_padding_mask
from .sequence import (
    block_graph,
    causal_graph,
    fixed_graph,
    global_graph,
    star_graph,
    strided_graph,
    window_graph,
)
from .spatial import knn_graph, radius_graph
from .streaming import sink_window_graph

__all__ = ["GALLERY", "MAX_DRAW", "show"]

#: Largest side (in nodes) that ``show`` draws; one pixel per (query, key) pair.
MAX_DRAW = 4096


def show(graph: TokenGraph, path: str | Path | None = None, *, title: str | None = None) -> Any:
    """Draw ``graph.to_dense_mask()`` [N_t, N_s]: a dark cell at (i, j) means j ∈ N(i).

    Rows are queries i (targets), columns keys j (sources), as in the SDPA mask. Cells with
    duplicate edges are drawn darker. Needs matplotlib (imported here, not by ``import gatattn``).

    Args:
        graph: the TokenGraph.  path: save a PNG there (and return the figure).  title: the
            figure title (default: the structure tag and params).

    Returns:
        the ``matplotlib.figure.Figure`` (not attached to pyplot, so nothing to close).
    """
    from matplotlib.figure import Figure

    if not isinstance(graph, TokenGraph):
        raise TypeError(f"show needs a TokenGraph, got {type(graph).__name__}")
    if max(graph.num_dst, graph.num_src) > MAX_DRAW:
        raise ValueError(
            f"graph has {graph.num_dst} x {graph.num_src} nodes; show draws at most "
            f"{MAX_DRAW} per side (gatattn.patterns.draw.MAX_DRAW)"
        )
    counts = graph.edge_counts().cpu()  # [N_t, N_s]
    side = 4.0 * math.sqrt(max(graph.num_src / max(graph.num_dst, 1), 0.25))
    fig = Figure(figsize=(side, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(
        counts.numpy(),
        cmap="Greys",
        vmin=0,
        vmax=max(int(counts.max()), 1),
        interpolation="nearest",
    )
    ax.set_xlabel("key j (source)")
    ax.set_ylabel("query i (target)")
    if title is None:
        params = ", ".join(f"{k}={v}" for k, v in graph.params.items() if v is not None)
        title = f"{graph.structure or 'graph'}({params})  E={graph.num_edges}"
    ax.set_title(title, fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def _points(n: int) -> torch.Tensor:
    """n points on a noisy spiral [n, 2], fixed seed (for the knn/radius pictures)."""
    gen = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 3 * math.pi, n)  # [n]
    spiral = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)  # [n, 2]
    return spiral + 0.3 * torch.randn(n, 2, generator=gen)


#: name -> (builder of an n-token example, caption). ``gatattn patterns`` draws these.
GALLERY: dict[str, tuple[Callable[[int], TokenGraph], str]] = {
    "causal": (lambda n: causal_graph(n), "causal_graph(n)"),
    "window": (lambda n: window_graph(n, 3), "window_graph(n, 3)"),
    "dilated": (lambda n: window_graph(n, 3, dilation=2), "window_graph(n, 3, dilation=2)"),
    "global": (
        lambda n: global_graph(n, [0, n // 2], window=2),
        "global_graph(n, [0, n // 2], window=2)",
    ),
    "bigbird": (
        lambda n: bigbird_graph(n, block_size=max(1, n // 16), random_blocks=1, seed=0),
        "bigbird_graph(n, block_size=n//16, random_blocks=1, seed=0)",
    ),
    "block": (lambda n: block_graph(n, max(1, n // 4)), "block_graph(n, n // 4)"),
    "strided": (lambda n: strided_graph(n, 4), "strided_graph(n, 4)"),
    "fixed": (lambda n: fixed_graph(n, 8, 2), "fixed_graph(n, 8, 2)"),
    "star": (lambda n: star_graph(n), "star_graph(n)"),
    "sink_window": (
        lambda n: sink_window_graph(n, num_sinks=2, window=n // 4),
        "sink_window_graph(n, num_sinks=2, window=n // 4)",
    ),
    "knn": (lambda n: knn_graph(_points(n), 4), "knn_graph(spiral points, 4)"),
    "radius": (lambda n: radius_graph(_points(n), 2.0), "radius_graph(spiral points, 2.0)"),
    "batch": (
        lambda n: causal_graph(lengths=[n // 2, n - n // 2]),
        "causal_graph(lengths=[n // 2, n - n // 2])",
    ),
    "padding": (
        lambda n: from_padding_mask(
            torch.arange(n // 2)[None, :] >= torch.tensor([[n // 4], [n // 2 - 2]])
        ),
        "from_padding_mask(two rows of n // 2, padded)",
    ),
    "bipartite": (
        lambda n: bipartite_graph([n // 2, n // 4], [n // 4, n - n // 4]),
        "bipartite_graph([n/2, n/4], [n/4, 3n/4])",
    ),
}
