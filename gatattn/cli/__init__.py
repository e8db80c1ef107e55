"""The ``gatattn`` command: ``gatattn verify | export | patterns | demo | bench``.

One module per subcommand (``gatattn/cli/<command>.py``), imported only when it runs, defining
``configure(parser)`` and ``run(args) -> int`` (the exit code). Exit codes: 0 success, 1 a check
failed (``verify``), 2 bad arguments or a missing prerequisite (a usage message, never a
traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..progress import progress_bar

__all__ = ["COMMANDS", "UsageError", "main", "progress_bar"]

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "verify": ("gatattn.cli.verify", "prove graph attention equals PyTorch's attention (main job)"),
    "patterns": ("gatattn.cli.patterns", "draw attention patterns (sparse masks) as PNG files"),
    "export": ("gatattn.cli.export", "attention graphs of a sentence: GraphML/GEXF/JSON + PNG"),
    "demo": ("gatattn.cli.demo", "watch W_q, W_k, W_v learned from random init (toy task, PNGs)"),
    "bench": ("gatattn.cli.bench", "time and memory against SDPA, MHA, PyG and FlexAttention"),
}


class UsageError(Exception):
    """Raised by a subcommand for bad arguments: printed, and the exit code is 2."""


def _version() -> str:
    from .. import __version__

    return f"gatattn {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gatattn`` console script."""
    parser = argparse.ArgumentParser(
        prog="gatattn",
        description="Transformer self-attention as graph attention.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(
            name, help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        if name == chosen:  # import only the module that runs (keeps `gatattn --help` fast)
            mod = importlib.import_module(module)
            try:  # a command whose prerequisite is missing says so here (gatattn bench)
                mod.configure(p)
            except UsageError as err:
                parser.exit(2, f"gatattn {name}: error: {err}\n")
            p.set_defaults(_run=mod.run)
    args = parser.parse_args(argv)
    try:
        return int(args._run(args))
    except UsageError as err:
        parser.exit(2, f"gatattn {args.command}: error: {err}\n")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
