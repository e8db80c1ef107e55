"""examples/networkx_analysis.py runs (quick mode) and its numbers hang together."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import networkx as nx
import numpy as np

import gatattn as ga

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "networkx_analysis.py"


def _load():
    spec = importlib.util.spec_from_file_location("networkx_analysis", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_networkx_analysis_quick(tmp_path: Path, capsys) -> None:
    out = _load().main(quick=True, out=tmp_path)
    n = len(out["tokens"])
    assert n == 5 and len(out["attentions"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "heatmap.png",
        "last_layer.graphml",
        "layers.json",
        "layers.png",
    ]
    assert all(Path(f).stat().st_size > 0 for f in out["files"])
    G = nx.read_graphml(tmp_path / "last_layer.graphml")
    assert G.number_of_edges() == n * n and G.nodes["3"]["token"] == out["tokens"][3]
    assert abs(sum(out["pagerank"].values()) - 1) < 1e-9
    assert abs(sum(out["received"].values()) - n) < 1e-5  # fp32: each query gives 1
    assert np.abs(out["rollout"].sum(1) - 1).max() < 1e-5
    want = ga.attention_rollout(out["attentions"])
    assert np.array_equal(out["rollout"], want)
    # flow is at most the capacity into the output node (1) and positive from every input
    assert (out["flow"][0] > 0).all() and out["flow"][0].max() <= 1 + 1e-5
    assert not out["flow"][1:].any()  # only target 0 was computed
    assert "PageRank:" in capsys.readouterr().out
