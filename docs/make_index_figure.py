"""Draw docs/img/index_complete_graph.png, the picture on the landing page (docs/index.md).

One GraphAttention layer with random weights runs on six tokens twice: on the complete graph
(dense attention) and on a window graph (sparse attention). Each row shows the attention matrix
Attn_ij next to the same numbers drawn as a directed graph, edge j -> i with width ~ Attn_ij.

    python docs/make_index_figure.py            # rewrites docs/img/index_complete_graph.png
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import gatattn as ga

TOKENS = ["the", "cat", "sat", "on", "the", "mat"]
OUT = Path(__file__).resolve().parent / "img" / "index_complete_graph.png"


def attention_matrix(
    graph: ga.TokenGraph, layer: ga.GraphAttention, x: torch.Tensor
) -> torch.Tensor:
    """Attn [N, N] (row i = query, column j = key), 0 where the graph has no edge j -> i."""
    res = layer(x, graph, return_attention=True)
    n = x.shape[0]
    mat = torch.zeros(n, n)
    src, dst = res.edge_index
    mat[dst, src] = res.weights[:, 0].detach()
    return mat


def draw_graph(ax: plt.Axes, mat: torch.Tensor, title: str) -> None:
    n = mat.shape[0]
    pos = [
        (math.cos(math.pi / 2 - 2 * math.pi * k / n), math.sin(math.pi / 2 - 2 * math.pi * k / n))
        for k in range(n)
    ]
    top = float(mat.max())
    for i in range(n):
        for j in range(n):
            w = float(mat[i, j])
            if w <= 0:
                continue
            if i == j:  # self-loop: a small circle outside the node
                x, y = pos[i]
                ax.add_patch(
                    plt.Circle(
                        (1.3 * x, 1.3 * y),
                        0.12,
                        fill=False,
                        lw=0.5 + 4 * w / top,
                        color="tab:blue",
                        alpha=0.35 + 0.65 * w / top,
                    )
                )
                continue
            ax.annotate(
                "",
                xy=pos[i],
                xytext=pos[j],
                arrowprops=dict(
                    arrowstyle="-|>",
                    lw=0.5 + 4 * w / top,
                    color="tab:blue",
                    alpha=0.35 + 0.65 * w / top,
                    shrinkA=14,
                    shrinkB=14,
                    connectionstyle="arc3,rad=0.12",
                ),
            )
    for k, (x, y) in enumerate(pos):
        ax.scatter([x], [y], s=900, color="white", edgecolor="black", zorder=3)
        ax.text(x, y, TOKENS[k], ha="center", va="center", fontsize=9, zorder=4)
    ax.set_xlim(-1.6, 1.6)
    ax.set_ylim(-1.6, 1.6)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=11)


def draw_matrix(ax: plt.Axes, mat: torch.Tensor, title: str) -> None:
    shown = mat.masked_fill(mat == 0, float("nan"))
    ax.imshow(shown.numpy(), cmap="viridis", vmin=0, vmax=float(mat.max()))
    n = mat.shape[0]
    ax.set_xticks(range(n), TOKENS, fontsize=8)
    ax.set_yticks(range(n), TOKENS, fontsize=8)
    ax.set_xlabel("key j", fontsize=9)
    ax.set_ylabel("query i", fontsize=9)
    ax.set_title(title, fontsize=11)


def main() -> int:
    torch.manual_seed(0)
    n = len(TOKENS)
    layer = ga.GraphAttention(embed_dim=16, num_heads=1).eval()
    x = 2.0 * torch.randn(n, 16)
    rows = [
        (ga.complete_graph(n), "dense attention: Attn_ij", "= GAT on the complete graph"),
        (ga.window_graph(n, 1), "window attention (mask)", "= GAT on the window graph"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(8.5, 8.2))
    for (graph, left, right), (ax_m, ax_g) in zip(rows, axes):
        mat = attention_matrix(graph, layer, x)
        draw_matrix(ax_m, mat, left)
        draw_graph(ax_g, mat, f"{right} ({graph.num_edges} edges)")
    fig.suptitle("Attention is a softmax over each token's in-neighbours", fontsize=13)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
