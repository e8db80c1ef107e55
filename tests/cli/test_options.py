"""Bad command-line options exit 2 with one line that names the option, before any work
(gatattn/cli/options.py). Each case used to exit 1 with a traceback, some after the whole run."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatattn.cli import UsageError, main
from gatattn.cli import options as opt

SENTENCE = ["--text", "the cat sat"]


def _cases(tmp: Path) -> list[tuple[list[str], str]]:
    a_file = tmp / "a_file"
    a_file.write_text("not a folder")
    under_file = a_file / "sub"  # cannot be created, even by root
    big = " ".join(f"t{i}" for i in range(317))  # 317² = 100,489 edges > MAX_WRITE_EDGES
    return [
        (["export", *SENTENCE, "--out", str(a_file)], "--out '.*a_file' exists and is not a folder"),
        (["export", *SENTENCE, "--out", str(under_file)], "--out '.*sub': cannot create the folder"),
        (["patterns", "window", "--out", str(a_file)], "--out '.*a_file' exists and is not a folder"),
        (["patterns", "window", "--out", str(under_file)], "--out .*: cannot create the folder"),
        (["demo", "--steps", "1", "--out", str(a_file)], "--out '.*a_file' exists and is not a folder"),
        (["patterns", "window", "--out", str(tmp), "--prefix", "sub/dir/"],
         "--prefix 'sub/dir/' must be a file name prefix without a path separator"),
        (["verify", "--quick", "--seed", "99999999999999999999999"],
         r"--seed must be between 0 and 4294967295 \(2\*\*32 - 1\), got 99999999999999999999999"),
        (["demo", "--seed", "99999999999999999999999", "--out", str(tmp)], "--seed must be between 0"),
        (["demo", "--seed", "-1", "--out", str(tmp)], "--seed must be between 0 and 4294967295"),
        (["export", *SENTENCE, "--seed", "99999999999999999999999", "--out", str(tmp)], "--seed must be"),
        (["export", *SENTENCE, "--threshold", "nan", "--out", str(tmp)], "--threshold must be a finite number, got nan"),
        (["export", *SENTENCE, "--threshold", "inf", "--out", str(tmp)], "--threshold must be a finite number, got inf"),
        (["export", *SENTENCE, "--threshold", "-0.5", "--out", str(tmp)], "--threshold must be >= 0, got -0.5"),
        (["export", *SENTENCE, "--layers", "0", "--out", str(tmp)], "--layers must be >= 1, got 0"),
        (["export", "--text", big, "--out", str(tmp)],
         "317 tokens give 100,489 edges per layer, more than the graph files' limit of 100,000; pass --allow-large"),
        (["bench", "--quick", "--heads", "0"], "--heads must be >= 1, got 0"),
        (["bench", "--quick", "--channels", "0"], "--channels must be >= 1, got 0"),
        (["bench", "--quick", "--channels", "-8", "--heads", "2"], "--channels must be >= 1, got -8"),
        (["bench", "--quick", "--n1", "-4"], "--n1 must be >= 1, got -4"),
        (["bench", "--quick", "--cases", "P1", "--json", str(under_file / "rows.json")],
         "--json '.*rows.json': its folder '.*sub' does not exist"),
        (["bench", "--quick", "--cases", "P1", "--json", str(a_file / "rows.json")],
         "--json '.*rows.json': its folder '.*a_file' is not a folder"),
        (["bench", "--quick", "--cases", "P1", "--markdown", str(tmp)], "--markdown '.*' is a folder; give a file path"),
    ]  # fmt: skip


def test_bad_options_exit_2_with_one_line_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    from gatattn.cli import export as export_cli

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model ran before the options were checked")

    monkeypatch.setattr(export_cli, "_run_model", no_model)
    for argv, message in _cases(tmp_path):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (argv, err)
        assert err.startswith(f"gatattn {argv[0]}: error: "), (argv, err)
        assert re.search(message, err), (argv, err)


def test_export_allow_large_writes_big_graphs(tmp_path: Path, monkeypatch) -> None:
    from gatattn.inspect import export

    monkeypatch.setattr(export, "MAX_WRITE_EDGES", 8)  # 3 tokens: 9 edges per layer
    from gatattn.cli import export as export_cli

    monkeypatch.setattr(export_cli, "MAX_WRITE_EDGES", 8)
    argv = ["export", *SENTENCE, "--no-png", "--layers", "1", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert main([*argv, "--allow-large"]) == 0
    assert (tmp_path / "layer0.graphml").stat().st_size > 0


def test_option_checks_accept_good_values(tmp_path: Path) -> None:
    assert opt.check_seed(opt.MAX_SEED) == opt.MAX_SEED
    assert opt.check_positive(1, "--n") == 1
    assert opt.check_finite(0.0, "--threshold", minimum=0.0) == 0.0
    assert opt.check_prefix("fig_") == "fig_"
    assert opt.check_output_dir(tmp_path / "new" / "dir").is_dir()
    assert opt.check_output_file(tmp_path / "rows.json", "--json") == tmp_path / "rows.json"
    with pytest.raises(UsageError, match="--n must be >= 8, got 7"):
        opt.check_positive(7, "--n", minimum=8)
