"""``gatattn bench``: runs the benchmark harness of a source checkout (docs/benchmarks.md).

The harness (``benchmarks/harness.py``) lives outside the package: it measures, it is not part of
what ``import gatattn`` gives. From a source checkout (``pip install -e .`` or the repository
on ``PYTHONPATH``) ``gatattn bench ...`` is the same as ``python benchmarks/bench.py ...``. From
an installed wheel there is no harness, and the command says so (exit code 2).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from . import UsageError

__all__ = ["configure", "harness_path", "load_harness", "run"]

#: module name under which the harness is loaded (it is not an importable package)
MODULE = "gatattn_benchmarks_harness"


def harness_path() -> Path:
    """Where a source checkout keeps the harness: ``<repository>/benchmarks/harness.py``."""
    return Path(__file__).resolve().parents[2] / "benchmarks" / "harness.py"


def load_harness() -> ModuleType | None:
    """The harness module, loaded from its file once per process; None when there is none."""
    if MODULE in sys.modules:
        return sys.modules[MODULE]
    path = harness_path()
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(MODULE, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = mod  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[MODULE]
        raise
    return mod


def configure(parser: argparse.ArgumentParser) -> None:
    """The harness's arguments; a UsageError (exit code 2) when this installation has none."""
    parser.description = "Time and memory of gatattn against its peers (docs/benchmarks.md)."
    _harness().configure(parser)


def run(args: argparse.Namespace) -> int:
    """Run the harness; exit code 0."""
    return int(_harness().run(args))


def _harness() -> ModuleType:
    harness = load_harness()
    if harness is None:
        raise UsageError(
            "the benchmark harness is not part of the installed package; run it from a source "
            "checkout of gatattn: python benchmarks/bench.py [--quick] "
            f"(looked for {harness_path()})"
        )
    return harness
