"""The PyG examples run, shortened (examples/node_classification.py, graph_classification.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


def test_node_classification_short(capsys: pytest.CaptureFixture[str]) -> None:
    mod = _load("node_classification")
    results = mod.main(["--epochs", "3", "--seeds", "1"])
    assert set(results) == {"KarateClub", "SBM (4 × 60)"}
    for models in results.values():
        assert set(models) == set(mod.CONVS)
        for name, (run,) in models.items():
            assert run.last_loss < run.first_loss, name  # every model learns under the same loop
            assert 0.0 <= run.accuracy <= 1.0
    out = capsys.readouterr().out
    assert out.count("| KarateClub |") == 5 and out.count("| SBM (4 × 60) |") == 5


def test_node_classification_bad_args(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:
        _load("node_classification").main(["--seeds", "0"])
    assert err.value.code == 2
    assert "--epochs and --seeds must be >= 1, got 100, 0" in capsys.readouterr().err


def test_sbm_is_balanced_and_seeded() -> None:
    mod = _load("node_classification")
    a, b = mod.sbm(), mod.sbm()
    assert a.num_nodes == 240 and int(a.train_mask.sum()) == 80
    assert a.edge_index.equal(b.edge_index) and a.x.equal(b.x)


def test_graph_classification_short(capsys: pytest.CaptureFixture[str]) -> None:
    mod = _load("graph_classification")
    hist = mod.main(["--epochs", "2", "--graphs", "96"])
    assert len(hist["loss"]) == 2 and hist["loss"][1] < hist["loss"][0]
    assert "epoch   2" in capsys.readouterr().out
    graphs = mod.random_graphs(10, seed=3)
    assert [int(g.y) for g in graphs] == [0, 1] * 5  # balanced labels by construction
    with pytest.raises(SystemExit) as err:
        mod.main(["--epochs", "0"])
    assert err.value.code == 2
    assert "need --epochs >= 1 and --graphs >= 4, got 0, 600" in capsys.readouterr().err
