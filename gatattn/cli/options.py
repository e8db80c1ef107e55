"""Checks of command-line options, run before any work: each bad value raises ``UsageError``
(exit code 2, one line that names the option) instead of a traceback after the run.

Used by every subcommand and by the benchmark harness (``benchmarks/harness.py``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from . import UsageError

__all__ = [
    "MAX_SEED",
    "check_finite",
    "check_output_dir",
    "check_output_file",
    "check_positive",
    "check_prefix",
    "check_seed",
]

#: Largest accepted ``--seed``: torch seeds a generator with a 64-bit integer, and the commands
#: derive further seeds from it by small multiplications, so seeds stay within 32 bits.
MAX_SEED = 2**32 - 1


def check_positive(value: int, option: str, *, minimum: int = 1) -> int:
    """``value`` >= ``minimum``, else a UsageError naming ``option``."""
    if value < minimum:
        raise UsageError(f"{option} must be >= {minimum}, got {value}")
    return value


def check_seed(value: int, option: str = "--seed") -> int:
    """A seed in 0..MAX_SEED."""
    if not 0 <= value <= MAX_SEED:
        raise UsageError(f"{option} must be between 0 and {MAX_SEED} (2**32 - 1), got {value}")
    return value


def check_finite(value: float, option: str, *, minimum: float | None = None) -> float:
    """A finite number (not nan, not ±inf), >= ``minimum`` when given."""
    if not math.isfinite(value):
        raise UsageError(f"{option} must be a finite number, got {value}")
    if minimum is not None and value < minimum:
        raise UsageError(f"{option} must be >= {minimum:g}, got {value:g}")
    return value


def check_prefix(value: str, option: str = "--prefix") -> str:
    """A file-name prefix: no path separator (the folder is given by --out)."""
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if any(s in value for s in seps):
        raise UsageError(
            f"{option} {value!r} must be a file name prefix without a path separator; "
            "choose the folder with --out"
        )
    return value


def check_output_dir(path: str | Path, option: str = "--out") -> Path:
    """Create the output folder ``path`` (and its parents) now, or fail naming ``option``:
    a path that exists and is no folder, a folder that cannot be created or written."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{option} {str(out)!r} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(
            f"{option} {str(out)!r}: cannot create the folder ({err.strerror or err})"
        ) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {str(out)!r}: the folder is not writable")
    return out


def check_output_file(path: str | Path, option: str) -> Path:
    """``path`` can be written as a file: it is no folder, and its folder exists and is
    writable (checked before a long run, so that the run is not lost at the end)."""
    out = Path(path)
    parent = out.parent
    if out.is_dir():
        raise UsageError(f"{option} {str(out)!r} is a folder; give a file path")
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise UsageError(f"{option} {str(out)!r}: its folder {str(parent)!r} {what}")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UsageError(f"{option} {str(out)!r}: not writable")
    return out
