"""The benchmark harness (benchmarks/harness.py) and ``gatattn bench``: a tiny end-to-end run,
the table, the JSON hand-off between processes, and every bad argument (exit code 2).

Only shapes and bookkeeping are checked here; timings are never asserted (docs/benchmarks.md
holds the measured table).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gatattn.cli import UsageError, main
from gatattn.cli import bench as bench_cli

ROOT = Path(__file__).resolve().parents[2]
bench = bench_cli.load_harness()
assert bench is not None, "a source checkout has benchmarks/harness.py"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.configure(parser)
    return parser.parse_args(list(argv))


def test_tiny_run_covers_every_case_and_method(tmp_path) -> None:
    cfg = bench._config(
        _args("--quick", "--device", "cpu", "--n1", "24", "--n2", "40", "--window", "3")
    )
    cfg.n3, cfg.degree, cfg.p4_nodes, cfg.p4_sizes = 48, 5, 64, (2, 4, 8)
    cfg.p4_subprocess = False  # in-process here; the subprocess path has its own test
    cfg.p5_channels, cfg.p5_heads, cfg.p5_nodes, cfg.p5_degree = 16, 2, 300, 20
    cfg.p5_window_nodes, cfg.p5_window = 512, 8  # E > 4096: big enough for the block path
    rows = bench.run_cases(cfg)
    methods = {(r.case.split()[0], r.method.split(" (")[0]) for r in rows}
    for case in ("P1", "P2", "P3"):
        assert (case, "gatattn auto") in methods
        assert (case, "PyG TransformerConv") in methods
    assert ("P1", "nn.MultiheadAttention") in methods and ("P2", "masked SDPA") in methods
    timed = [r for r in rows if r.case[:2] in ("P1", "P2", "P3")]
    assert all(r.fwd_ms and r.fwdbwd_ms and not r.note for r in timed), [r for r in timed if r.note]
    fits = [r.note for r in rows if r.method.endswith("fit")]
    assert len(fits) == 2 and all("bytes/edge" in f for f in fits)
    p5 = [r for r in rows if r.case.startswith("P5")]
    assert [r.method for r in p5] == [
        "gatattn auto (edge)",
        "gatattn edge (forced)",
        "gatattn auto (block)",
        "gatattn block (forced)",
    ]
    assert all(r.fwd_ms and r.fwdbwd_ms for r in p5)
    for auto in p5[::2]:  # auto's row carries the ratios and dispatch's reason
        assert auto.note.startswith("auto ÷ forced: fwd+bwd ") and "×, peak " in auto.note
        assert auto.note.split("; ", 1)[1].startswith(auto.method.split("(")[1][:-1] + ": ")
    table = bench.markdown(rows)
    assert (
        table.count("\n") == len(rows) + 1
        and "| P1 complete N=24 | fp32 | gatattn auto (dense) |" in table
    )


@pytest.mark.slow
def test_p4_points_run_in_fresh_processes() -> None:
    cfg = bench.Config(channels=12, heads=3, p4_nodes=40, p4_sizes=(4,))
    bench._p4(cfg)
    assert [r.method for r in cfg.rows] == ["gatattn edge", "gatattn block"]
    assert all(r.note.startswith("E=") for r in cfg.rows)


def test_results_cross_processes_as_json() -> None:
    """A child's result is one JSON line (parsed with json.loads, never evaluated as code)."""
    point = bench._p4_point_in_subprocess(backend="edge", n=10, size=3, c=6, h=2, device="cpu")
    assert point["edges"] == 30 and isinstance(point["edges"], int)
    assert point["peak_mib"] is None or isinstance(point["peak_mib"], float)
    # the child's stdout may start with warnings; the last line is the JSON object
    assert bench.parse_result('a warning\n{"edges": 7, "peak_mib": null}\n') == {
        "edges": 7,
        "peak_mib": None,
    }
    for bad in ("", "(7, 1.5)", "[7, 1.5]", "__import__('os')"):
        with pytest.raises(ValueError):  # json.JSONDecodeError is a ValueError
            bench.parse_result(bad)
    assert "eval(" not in (ROOT / "benchmarks" / "harness.py").read_text()


def test_cpu_peak_falls_back_to_none_without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_open = builtins.open

    def no_proc(path, *args, **kwargs):  # as on macOS, or a container that forbids the write
        if str(path).startswith("/proc/"):
            raise PermissionError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    assert bench.peak_memory_mib(lambda: None, "cpu") is None


def test_script_runs_from_a_checkout(tmp_path: Path) -> None:
    """``python benchmarks/bench.py`` is the harness's own command line (no gatattn bench)."""
    out_json = tmp_path / "b.json"
    argv = ["--quick", "--cases", "P1", "--n1", "8", "--channels", "6", "--heads", "2"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), *argv, "--json", str(out_json)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# gatattn bench on ") and "| P1 complete N=8 |" in proc.stdout
    assert json.loads(out_json.read_text())["rows"][0]["method"].startswith("gatattn auto")
    bad = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--cases", "P9"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert bad.returncode == 2 and "unknown case 'P9'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_cli_writes_json_and_markdown(tmp_path) -> None:
    out_json, out_md = tmp_path / "b.json", tmp_path / "b.md"
    code = main(
        [
            "bench",
            "--quick",
            "--cases",
            "P1",
            "--n1",
            "16",
            "--channels",
            "24",
            "--heads",
            "3",
            "--threads",
            "1",
            "--json",
            str(out_json),
            "--markdown",
            str(out_md),
        ]
    )
    assert code == 0
    data = json.loads(out_json.read_text())
    assert {r["method"].split(" (")[0] for r in data["rows"]} >= {"gatattn auto", "SDPA"}
    assert out_md.read_text().startswith("Machine: ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "tpu"], "--device must be cpu, cuda or auto, got 'tpu'"),
        (["--dtype", "fp8"], "unknown dtype 'fp8'"),
        (["--cases", "P1,P9"], "unknown case 'P9'"),
        (["--channels", "10", "--heads", "3"], "--channels 10 is not divisible by --heads 3"),
        (["--repeat", "-1"], "--repeat must be >= 1, got -1"),
    ],
)
def test_bad_arguments_raise_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        bench._config(_args(*argv))


def test_bad_threads_and_cuda_without_gpu_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--threads", "0"])
    assert exc.value.code == 2 and "--threads must be >= 1, got 0" in capsys.readouterr().err
    if not bench.torch.cuda.is_available():
        with pytest.raises(UsageError, match="torch.cuda.is_available"):
            bench._config(_args("--device", "cuda"))


def test_unknown_case_in_graph_builder_raises() -> None:
    with pytest.raises(UsageError, match="unknown case 'P7'"):
        bench._graphs(bench.Config(), "P7")


def test_without_the_harness_gatattn_bench_says_so_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As from an installed wheel: no benchmarks/ folder next to the package."""
    monkeypatch.setattr(bench_cli, "harness_path", lambda: tmp_path / "benchmarks" / "harness.py")
    monkeypatch.delitem(sys.modules, bench_cli.MODULE)
    assert bench_cli.load_harness() is None
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--quick", "--cases", "P1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert "gatattn bench: error: the benchmark harness is not part of the installed package" in err
    assert "python benchmarks/bench.py" in err
