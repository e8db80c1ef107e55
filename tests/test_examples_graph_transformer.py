"""examples/graph_transformer.py runs, shortened (a Graphormer on the long-range hop task)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_graph_transformer_short(capsys: pytest.CaptureFixture[str]) -> None:
    mod = _load("graph_transformer")
    hist = mod.main(["--epochs", "2", "--graphs", "8"])
    assert len(hist["loss"]) == 2 and all(math.isfinite(v) for v in hist["loss"])
    assert all(0.0 <= a <= 1.0 for a in hist["test_accuracy"])
    assert "epoch   2" in capsys.readouterr().out


def test_graph_transformer_labels_are_hop_distances() -> None:
    mod = _load("graph_transformer")
    data = mod.random_graph(torch.Generator().manual_seed(4))
    marked = data.x[:, 0].nonzero().squeeze(1)
    assert marked.numel() == 2 and (data.y[marked] == 0).all()
    assert int(data.y.max()) <= 7 and 30 <= data.num_nodes <= 60


def test_graph_transformer_bad_args(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:
        _load("graph_transformer").main(["--epochs", "0"])
    assert err.value.code == 2
    assert "need --epochs >= 1 and --graphs >= 8, got 0, 320" in capsys.readouterr().err
