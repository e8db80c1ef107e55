"""``gatattn patterns``: draw each attention pattern's mask as a PNG (the gallery of
docs/patterns.md).

    gatattn patterns                      # every pattern, 32 tokens, into ./patterns/
    gatattn patterns window bigbird --n 64 --out figs --prefix patterns_
"""

from __future__ import annotations

import argparse

from . import UsageError
from .options import check_output_dir, check_prefix

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gatattn patterns``."""
    from ..patterns import GALLERY

    parser.description = "Draw attention patterns (dense masks of the builders) as PNG files."
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"patterns to draw (default all): {', '.join(GALLERY)}",
    )
    parser.add_argument("--n", type=int, default=32, help="tokens per picture (default 32, >= 8)")
    parser.add_argument("--out", default="patterns", help="output folder (default ./patterns)")
    parser.add_argument("--prefix", default="", help="file name prefix (default none)")


def run(args: argparse.Namespace) -> int:
    """Draw the chosen gallery entries; print one line per file written."""
    from ..patterns import GALLERY, show

    unknown = [name for name in args.names if name not in GALLERY]
    if unknown:
        raise UsageError(f"unknown pattern {unknown[0]!r}; choose from {', '.join(GALLERY)}")
    if not 8 <= args.n <= 512:
        raise UsageError(f"--n must be between 8 and 512, got {args.n}")
    check_prefix(args.prefix)
    out = check_output_dir(args.out)
    for name in args.names or list(GALLERY):
        build, caption = GALLERY[name]
        graph = build(args.n)
        path = out / f"{args.prefix}{name}.png"
        show(graph, path, title=f"{caption}\nn={args.n}, E={graph.num_edges}")
        print(f"{path}  {graph!r}")
    return 0
