"""Past one process: a banded graph over one long sequence, sharded by sequence across ranks.

    banded    BandedGraph: a window, causal-window or block-banded graph by its parameters,
              its halo for any slice, and the slice's graph from the ordinary builders
    halo      halo_exchange: neighbours swap their halo rows (torch.distributed point-to-point);
              the backward sends the halo gradients back to their owners
    sequence  ShardedSequence: rows per rank, the checks, and the sharded layer call
              y = crop(module(exchange(x_local), local_graph))

Data parallelism (DDP) and sharded parameters (FSDP2's ``fully_shard``) need nothing from here:
gatattn models are ordinary modules (docs/distributed.md). This package only uses
``torch.distributed``'s point-to-point and object collectives, which ``import torch`` loads anyway.
"""

from .banded import KINDS, BandedGraph
from .halo import HaloPlan, halo_exchange
from .sequence import ShardedSequence, ShardPlan, plan_shards, shard_sizes

__all__ = [
    "KINDS",
    "BandedGraph",
    "HaloPlan",
    "ShardPlan",
    "ShardedSequence",
    "halo_exchange",
    "plan_shards",
    "shard_sizes",
]
