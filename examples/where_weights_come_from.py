"""Where do W_q, W_k, W_v come from? Watch them being learned (same as ``gatattn demo``).

A tiny transformer built from GraphAttention layers starts from random weights and learns to
copy the previous token. The script prints how far W_q/W_k/W_v moved, how much each head
attends to the previous token before and after, and writes attention heatmaps as PNGs.

    python examples/where_weights_come_from.py --steps 300 --out gatattn-demo
"""

from __future__ import annotations

import argparse
import sys

from gatattn.cli import UsageError, demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    demo.configure(parser)
    try:
        return demo.run(parser.parse_args(argv))
    except UsageError as err:
        parser.error(str(err))  # exits with 2, as the gatattn command does


if __name__ == "__main__":
    sys.exit(main())
