"""``gatattn bench``: a tiny end-to-end run, the table, and every bad argument (exit code 2).

Only shapes and bookkeeping are checked here; timings are never asserted (docs/benchmarks.md
holds the measured table).
"""

from __future__ import annotations

import argparse
import json

import pytest

from gatattn import bench
from gatattn.cli import UsageError, main


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
    rows = bench.run_cases(cfg)
    methods = {(r.case.split()[0], r.method.split(" (")[0]) for r in rows}
    for case in ("P1", "P2", "P3"):
        assert (case, "gatattn auto") in methods
        assert (case, "PyG TransformerConv") in methods
    assert ("P1", "nn.MultiheadAttention") in methods and ("P2", "masked SDPA") in methods
    timed = [r for r in rows if not r.case.startswith("P4")]
    assert all(r.fwd_ms and r.fwdbwd_ms and not r.note for r in timed), [r for r in timed if r.note]
    fits = [r.note for r in rows if r.method.endswith("fit")]
    assert len(fits) == 2 and all("bytes/edge" in f for f in fits)
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
