"""The ``gatattn`` command: ``gatattn verify | export | bench | demo | patterns``.

Each subcommand lives in its own module, imported only when it runs, which defines
``configure(parser)`` and ``run(args) -> int`` (the exit code). Bad arguments exit with 2 and a
usage message, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main"]

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "verify": ("gatattn.verify", "prove graph attention equals PyTorch's attention (main job)"),
    "patterns": ("gatattn.patterns_cli", "draw attention patterns (sparse masks) as PNG files"),
    "export": ("gatattn.export_cli", "attention graphs of a sentence: GraphML/GEXF/JSON + PNG"),
    "demo": ("gatattn.demo", "watch W_q, W_k, W_v learned from random init (toy task, PNGs)"),
    "bench": ("gatattn.bench", "time and memory against SDPA, MHA, PyG and FlexAttention"),
}


class UsageError(Exception):
    """Raised by a subcommand for bad arguments: printed, and the exit code is 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gatattn`` console script."""
    parser = argparse.ArgumentParser(
        prog="gatattn",
        description="Transformer self-attention as graph attention.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
            mod.configure(p)
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
