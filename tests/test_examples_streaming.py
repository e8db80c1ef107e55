"""examples/streaming_sinks.py runs in its quick mode and its numbers hang together."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="needs the hf extra: pip install gatattn[hf]")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "streaming_sinks.py"


def test_streaming_sinks_quick(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("streaming_sinks", EXAMPLE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--quick"])
    rows = res["rows"]
    assert res["cached_equals_uncached"] is True
    assert set(rows) == {
        f"window {w}" + suffix for w in (4, 8, 24) for suffix in ("", " + 4 sinks")
    }
    # a window as long as the prompt is the causal graph: the same distribution, all edges
    for name in ("window 24", "window 24 + 4 sinks"):
        assert rows[name]["edge_fraction"] == 1.0 and rows[name]["kl"] <= 1e-12, name
    for w in (4, 8):
        alone, sinks = rows[f"window {w}"], rows[f"window {w} + 4 sinks"]
        assert 0 < alone["edge_fraction"] < sinks["edge_fraction"] < 1
        assert alone["kl"] > 0 and sinks["kl"] > 0 and 0 <= sinks["tv"] <= 1
    assert rows["window 4"]["kl"] > rows["window 8"]["kl"]  # a wider window is closer
    assert "with cache == without: True" in capsys.readouterr().out
