"""Benchmark gatattn against SDPA, masked SDPA, nn.MultiheadAttention, PyG TransformerConv
(eager and torch.compile) and FlexAttention (CUDA), side by side in one process.

    python benchmarks/bench.py [--quick] [--cases P1,P2,P3,P4] [--dtype fp32,bf16] ...

is the same as ``gatattn bench ...``; see docs/benchmarks.md for the cases and the results.
"""

from __future__ import annotations

import sys

from gatattn.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
