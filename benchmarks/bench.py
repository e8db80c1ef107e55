"""Benchmark gatattn against SDPA, masked SDPA, nn.MultiheadAttention, PyG TransformerConv
(eager and torch.compile) and FlexAttention (CUDA), side by side in one process.

    python benchmarks/bench.py [--quick] [--cases P1,P2,P3,P4,P5] [--dtype fp32,bf16] ...

The harness is benchmarks/harness.py; from a source checkout ``gatattn bench ...`` runs the same.
See docs/benchmarks.md for the cases and the results.
"""

from __future__ import annotations

import argparse
import sys

import harness  # this folder is sys.path[0] when the file runs as a script

from gatattn.cli import UsageError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0])
    harness.configure(parser)
    args = parser.parse_args(argv)
    try:
        return harness.run(args)
    except UsageError as err:
        parser.exit(2, f"bench.py: error: {err}\n")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
