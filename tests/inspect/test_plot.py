"""heatmap / graph (gatattn.inspect.plot) write PNGs (Agg backend: conftest sets MPLBACKEND)."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

import gatattn as ga
from gatattn.inspect import matrices, plot

N, H, D = 5, 3, 7
C = H * D
TOKENS = ["the", "cat", "sat", "on", "mats"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def res() -> ga.Attention:
    torch.manual_seed(0)
    layer = ga.GraphAttention(C, H).double()
    return layer(
        torch.randn(N, C, dtype=torch.float64), ga.complete_graph(N), return_attention=True
    )


def test_heatmap_grid_of_heads_png(res: ga.Attention, tmp_path) -> None:
    import matplotlib

    fig = plot.heatmap(res, head="all", tokens=TOKENS, path=tmp_path / "h.png")
    data = (tmp_path / "h.png").read_bytes()
    assert data.startswith(PNG) and len(data) > 5000
    assert matplotlib.get_backend().lower() == "agg"
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["head 0", "head 1", "head 2"]
    shown = panels[1].images[0].get_array()  # [N, N] row = query, column = key
    want = matrices.attention_matrix(res, head=1)
    assert np.abs(np.asarray(shown) - want).max() < 1e-12
    assert [t.get_text() for t in panels[0].get_yticklabels()] == TOKENS


def test_heatmap_of_scores_leaves_non_edges_blank() -> None:
    g = ga.TokenGraph(torch.tensor([[0, 1, 1], [0, 0, 1]]), 2, 2)
    res = ga.GraphAttention(C, H).double()(
        torch.randn(2, C, dtype=torch.float64), g, return_attention=True
    )
    fig = plot.heatmap(res, which="score", head=2)  # no path: nothing written
    image = fig.axes[0].images[0].get_array()
    assert image.mask[1, 0] and not image.mask[0, 1]
    assert image[0, 1] == pytest.approx(float(res.scores.detach()[1, 2]), abs=1e-12)
    mean = plot.heatmap(res).axes[0].images[0].get_array()
    assert mean[0, 1] == pytest.approx(float(res.weights.detach()[1].mean()), abs=1e-12)


def test_graph_png_with_threshold(res: ga.Attention, tmp_path) -> None:
    G = ga.to_networkx(res, tokens=TOKENS)
    threshold = float(np.median([w for _, _, w in G.edges(data="weight")]))
    kept = sum(w >= threshold for _, _, w in G.edges(data="weight"))
    fig = plot.graph(G, threshold=threshold, path=tmp_path / "g.png")
    data = (tmp_path / "g.png").read_bytes()
    assert data.startswith(PNG) and len(data) > 5000
    ax = fig.axes[0]
    assert len(ax.patches) == kept < N * N  # one arrow per edge shown
    widths = sorted(p.get_linewidth() for p in ax.patches)
    assert widths[-1] == pytest.approx(4.0) and widths[0] < widths[-1]  # width ∝ weight
    assert sorted(t.get_text() for t in ax.texts) == sorted(TOKENS)


def test_layered_graph_picture(res: ga.Attention, tmp_path) -> None:
    G = ga.layered_graph([res, res], tokens=TOKENS)
    fig = plot.graph(G, threshold=0.2, path=tmp_path / "layers.png")
    assert (tmp_path / "layers.png").stat().st_size > 5000
    ys = {round(t.get_position()[1], 6) for t in fig.axes[0].texts}
    assert ys == {0.0, 1.0, 2.0}  # inputs at the bottom, one row per layer


def test_bad_input(res: ga.Attention, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"head 3 is out of range"):
        plot.heatmap(res, head=3)
    with pytest.raises(ValueError, match=r"got 2 tokens but the attention has 5 tokens"):
        plot.heatmap(res, tokens=["a", "b"])
    with pytest.raises(ValueError, match=r"pictures are written as PNG; got the suffix '\.jpg'"):
        plot.heatmap(res, path=tmp_path / "h.jpg")
    with pytest.raises(TypeError, match=r"heatmap needs a gatattn.Attention, got DiGraph"):
        plot.heatmap(nx.DiGraph())  # type: ignore[arg-type]
    G = nx.DiGraph()
    G.add_edge(0, 1)
    with pytest.raises(ValueError, match=r"edge 0 -> 1 has no 'weight' attribute"):
        plot.graph(G)
    assert not list(tmp_path.iterdir())
