"""``gatattn demo`` and examples/where_weights_come_from.py (docs/demo.md), in short runs."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from gatattn import cli
from gatattn.cli.demo import train_demo

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_short_run_learns_moves_weights_specialises_and_draws(tmp_path: Path) -> None:
    res = train_demo(steps=40, seed=0, out_dir=tmp_path, progress=False)
    # Loss falls from chance (log V = log 11 ≈ 2.4) by a wide margin.
    assert res.losses[0] > 0.8 * math.log(11)
    assert sum(res.losses[-5:]) / 5 < res.losses[0] - 1.0
    # Every W_q, W_k, W_v moved away from its random initialisation.
    assert len(res.moved) == 6 and min(res.moved.values()) > 0.1, res.moved
    # At random each query spreads over ~9 keys; after training a head looks at the previous one.
    assert float(res.prev_before.max()) < 0.3
    assert float(res.prev_after.max()) > 0.5
    for name in ("attention_before.png", "attention_after.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert [p.name for p in res.pngs] == ["attention_before.png", "attention_after.png"]


def test_same_seed_same_numbers(tmp_path: Path) -> None:
    kw = dict(steps=3, out_dir=tmp_path, progress=False, draw=False)
    a, b, c = train_demo(seed=1, **kw), train_demo(seed=1, **kw), train_demo(seed=2, **kw)
    assert a.losses == b.losses and a.moved == b.moved
    assert torch.equal(a.prev_after, b.prev_after)
    assert a.losses != c.losses


def test_bad_steps() -> None:
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        train_demo(steps=0, progress=False)


def _example():
    path = ROOT / "examples" / "where_weights_come_from.py"
    spec = importlib.util.spec_from_file_location("where_weights_come_from", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_and_example_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--steps", "2", "--no-progress"]
    assert cli.main(["demo", *args, "--out", str(tmp_path / "cli")]) == 0
    out_cli = capsys.readouterr().out
    assert _example().main([*args, "--out", str(tmp_path / "ex")]) == 0
    out_ex = capsys.readouterr().out
    assert "Previous-token head" in out_cli and "layer 1 W_v" in out_cli

    # Same seed, same report (apart from the folders written).
    def numbers(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("wrote")]

    assert numbers(out_cli) == numbers(out_ex)
    assert (tmp_path / "ex" / "attention_after.png").exists()


def test_cli_bad_steps_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:
        cli.main(["demo", "--steps", "0"])
    assert err.value.code == 2
    assert "--steps must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        _example().main(["--steps", "-3"])
    assert err.value.code == 2
    assert "--steps must be >= 1, got -3" in capsys.readouterr().err
