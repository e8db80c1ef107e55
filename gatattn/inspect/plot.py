"""Pictures of attention: heatmaps of Attn (or α) and drawings of the attention graph.

The top layer of ``gatattn.inspect``: it reads ``matrices`` and is imported by none of the
other inspection modules.

Both functions build a ``matplotlib.figure.Figure`` directly (no pyplot, so no GUI backend and
no global figure state) and write a PNG when ``path`` is given. matplotlib is imported inside
the functions: ``import gatattn`` does not load it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..result import Attention
from .html import attention_html
from .matrices import HeadSpec, attention_matrix, check_head

if TYPE_CHECKING:
    import networkx as nx
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["attention_html", "graph", "heatmap"]


def _save(fig: Figure, path: str | Path | None) -> None:
    if path is None:
        return
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(
            f"pictures are written as PNG; got the suffix {path.suffix!r} in {str(path)!r}"
        )
    fig.savefig(path, dpi=120)


def heatmap(
    attention: Attention,
    *,
    head: HeadSpec = "mean",
    tokens: Sequence[Any] | None = None,
    which: Literal["weight", "score"] = "weight",
    path: str | Path | None = None,
    cmap: str = "viridis",
    title: str | None = None,
) -> Figure:
    """Heatmap of one layer's attention: row i = query (target), column j = key (source).

    .. math::
        \\mathrm{pixel}(i, j) = \\mathrm{Attn}_{ij} \\ (\\text{or } \\alpha_{ij}) \\text{ if } j \\in N(i),
        \\text{ else blank}

    ``which="weight"`` shows Attn_ij (eq. 2), ``"score"`` shows α_ij (eq. 1). Pairs that are
    not edges of the graph are left blank. ``head="all"`` draws a grid with one panel per head.

    Args:
        attention: ``GraphAttention(..., return_attention=True)``'s result.
        head: ``"mean"``, an int head index, or ``"all"``.
        tokens: axis labels, one per token.
        which: ``"weight"`` (default) or ``"score"``.
        path: write a PNG here.
        cmap: a matplotlib colour map name.
        title: the figure's title.

    Shapes:
        weights [E, H] -> panels of [N_t, N_s].

    Raises:
        ValueError: a bad ``head``, a token list of the wrong length, a path not ending in .png.
    """
    from matplotlib.figure import Figure

    if not isinstance(attention, Attention):
        raise TypeError(f"heatmap needs a gatattn.Attention, got {type(attention).__name__}")
    check_head(head, attention.num_heads)
    dense = attention_matrix(attention, head="all", which=which, fill=np.nan)  # [H, N_t, N_s]
    if head == "all":
        panels = [(f"head {h}", dense[h]) for h in range(dense.shape[0])]
    elif head == "mean":
        panels = [("mean over heads", dense.mean(0))]  # [N_t, N_s]; NaN where no edge
    else:
        panels = [(f"head {head}", dense[int(head)])]
    num_dst, num_src = dense.shape[1:]
    if tokens is not None and len(tokens) != num_dst:
        raise ValueError(f"got {len(tokens)} tokens but the attention has {num_dst} tokens")
    cols = math.ceil(math.sqrt(len(panels)))
    rows = math.ceil(len(panels) / cols)
    side = 1.2 + 0.35 * max(num_dst, num_src)
    fig = Figure(figsize=(min(4 + side * cols, 24), min(1 + side * rows, 24)), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    vals = np.concatenate([p[np.isfinite(p)] for _, p in panels])  # one colour scale for all
    vmax = float(vals.max()) if vals.size else 1.0
    vmin = 0.0 if which == "weight" or not vals.size else float(vals.min())
    image = None
    for ax, (name, panel) in zip(axes.flat, panels):
        image = ax.imshow(np.ma.masked_invalid(panel), cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("key j (source)")
        ax.set_ylabel("query i (target)")
        if tokens is not None:
            labels = [str(t) for t in tokens]
            ax.set_xticks(
                range(num_src), labels if num_src == num_dst else None, rotation=90, fontsize=7
            )
            ax.set_yticks(range(num_dst), labels, fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_axis_off()
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="Attn" if which == "weight" else "α")
    if title:
        fig.suptitle(title)
    _save(fig, path)
    return fig


def _layout(G: nx.DiGraph) -> dict[Any, tuple[float, float]]:
    """Layered graphs: tokens left to right, layers bottom to top; otherwise a circle."""
    import networkx as nx

    layers = dict(G.nodes(data="layer"))
    if layers and all(v is not None for v in layers.values()):
        index = dict(G.nodes(data="index"))
        return {node: (float(index[node]), float(layers[node])) for node in G}
    return dict(nx.circular_layout(sorted(G)))


def graph(
    G: nx.DiGraph,
    *,
    threshold: float = 0.0,
    weight: str = "weight",
    path: str | Path | None = None,
    width: float = 4.0,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Draw an attention graph with edge width ∝ ``weight``; edges below ``threshold`` are hidden.

    Nodes are labelled with their ``token`` attribute (else the node id). A graph from
    ``ga.layered_graph`` is drawn layer by layer (input at the bottom); any other graph on a
    circle. Arrows point along the information flow u → v (v attended to u).

    .. math::
        \\mathrm{linewidth}(u \\to v) = \\mathrm{width} \\cdot w(u \\to v) / \\max_{e\\ \\mathrm{shown}} w(e),
        \\qquad \\text{shown: } w(u \\to v) \\ge \\mathrm{threshold}

    Args:
        G: from ``ga.to_networkx`` or ``ga.layered_graph``.
        threshold: hide edges whose weight is below it (default 0: draw all).
        weight: the edge attribute that sets the width.
        path: write a PNG here.
        width: line width of the heaviest edge.
        ax: draw into these axes instead of a new figure.
        title: the axes' title (default: how many edges are shown).

    Shapes:
        DiGraph with N nodes, E edges -> one picture of N nodes and <= E arrows.

    Raises:
        ValueError: an edge without ``weight``, or a path not ending in .png.
    """
    import networkx as nx
    from matplotlib.figure import Figure

    values = dict(((u, v), w) for u, v, w in G.edges(data=weight))
    missing = next((e for e, w in values.items() if w is None), None)
    if missing is not None:
        raise ValueError(f"edge {missing[0]!r} -> {missing[1]!r} has no {weight!r} attribute")
    shown = [e for e, w in values.items() if w >= threshold]
    top = max((values[e] for e in shown), default=1.0) or 1.0
    if ax is None:
        n = G.number_of_nodes()
        side = min(4 + 0.3 * n, 16)
        fig = Figure(figsize=(side, side * 0.8), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure  # type: ignore[assignment]
    pos = _layout(G)
    labels = {node: str(G.nodes[node].get("token", node)) for node in G}
    nx.draw_networkx_nodes(G, pos, ax=ax, node_color="#cfe3f7", edgecolors="#2b6cb0", node_size=500)
    nx.draw_networkx_labels(G, pos, labels=labels, ax=ax, font_size=8)
    if shown:
        nx.draw_networkx_edges(
            G,
            pos,
            edgelist=shown,
            width=[width * values[e] / top for e in shown],
            alpha=0.6,
            edge_color="#444444",
            ax=ax,
            arrows=True,
            arrowsize=8,
            node_size=500,
            connectionstyle="arc3,rad=0.1",
        )
    ax.set_title(
        title or f"{len(shown)} of {len(values)} edges (weight >= {threshold:g})", fontsize=9
    )
    ax.set_axis_off()
    _save(fig, path)
    return fig
