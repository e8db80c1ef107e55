"""ShardedSequence: a banded graph over L tokens split by sequence across the ranks of a group.

Rank r holds the rows [a_r, b_r) of x (``shard_sizes``: as even as possible, or given). A
layer call on the shard is

    x_ext = halo_exchange(x[a_r:b_r])                  rows [a_r − h_l, b_r + h_r)      (1)
    y_ext = module(x_ext, G_local)                     G_local = graph of that slice    (2)
    y     = y_ext[h_l : h_l + b_r − a_r]               this rank's outputs              (3)

(2) runs the normal gatattn layers and backends (``GraphAttention``, ``GraphTransformerBlock``,
any module that maps (x [n, C], graph) to [n, C] and mixes tokens only through the graph's
attention). Because target i of a banded graph reads only sources within its halo reach, (3)
equals rows [a_r, b_r) of the same module on the whole sequence, forward and backward: the
exchange's backward sends the halo gradients to their owners (halo.py).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..graph import TokenGraph
from .banded import BandedGraph
from .halo import HaloPlan, halo_exchange

__all__ = ["ShardPlan", "ShardedSequence", "plan_shards", "shard_sizes"]


def shard_sizes(length: int, world_size: int) -> list[int]:
    """Rows per rank when ``length`` rows are split as evenly as possible (the first
    ``length % world_size`` ranks hold one more, as ``torch.tensor_split``).

    .. math:: n_r = \\lfloor L / P \\rfloor + [\\, r < L \\bmod P \\,]

    Raises:
        ValueError: length < world_size (some rank would hold no row), or either is not a
            positive int.
    """
    for name, v in (("length", length), ("world_size", world_size)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    length, world_size = int(length), int(world_size)
    if length < world_size:
        raise ValueError(f"cannot split length={length} rows over {world_size} ranks")
    q, extra = divmod(length, world_size)
    return [q + (r < extra) for r in range(world_size)]


class ShardPlan(NamedTuple):
    """One rank's rows [start, stop) and its halo: h_l rows on the left, h_r on the right."""

    start: int
    stop: int
    halo_left: int
    halo_right: int

    @property
    def halo(self) -> tuple[int, int]:
        """(h_l, h_r)."""
        return self.halo_left, self.halo_right


def plan_shards(graph: BandedGraph, sizes: Sequence[int]) -> list[ShardPlan]:
    """Each rank's rows and halo, checked: every halo must come from the adjacent rank alone.

    .. math:: a_r = \\sum_{s < r} n_s, \\quad b_r = a_r + n_r, \\quad
        h_l(r) \\le n_{r-1}, \\quad h_r(r) \\le n_{r+1}

    Args:
        graph: the ``BandedGraph`` over L tokens.
        sizes: rows per rank, n_0 .. n_{P−1}, summing to L.

    Returns:
        one ``ShardPlan`` per rank.

    Raises:
        ValueError: a size is not a positive int, the sizes do not sum to L, or a halo reaches
            past the neighbouring rank (the window is wider than a shard).
    """
    sizes = list(sizes)
    for r, n in enumerate(sizes):  # Python or numpy integers (the house rule), not bools
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"sizes[{r}] must be a positive int (rows of rank {r}), got {n!r}")
    sizes = [int(n) for n in sizes]
    if sum(sizes) != graph.length:
        raise ValueError(
            f"the shard sizes {sizes} sum to {sum(sizes)}, not to the graph's length {graph.length}"
        )
    bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
    plans = []
    for r in range(len(sizes)):
        start, stop = bounds[r], bounds[r + 1]
        left, right = graph.halo(start, stop)
        for side, h, nb in (("left", left, r - 1), ("right", right, r + 1)):
            if h and h > sizes[nb]:
                raise ValueError(
                    f"{graph.describe()}: rank {r} needs a {side} halo of {h} tokens, more than "
                    f"the {sizes[nb]} tokens of rank {nb}; the window is wider than a shard. "
                    "Use fewer ranks or larger shards"
                )
        plans.append(ShardPlan(start, stop, left, right))
    return plans


class ShardedSequence:
    """A banded graph over one sequence of L tokens, sharded by sequence over a process group
    (context parallelism for sparse attention).

    .. math::
        y_{[a_r, b_r)} = f\\big(x_{[a_r - h_l,\\, b_r + h_r)},\\; G_{[a_r - h_l,\\, b_r + h_r)}
        \\big)_{[h_l,\\, h_l + n_r)}

    Construction is collective: every rank of ``group`` builds it with the same graph and
    sizes (checked with one ``all_gather_object``; a disagreement raises on every rank). A call
    ``seq(module, x_local)`` exchanges the halos with the neighbouring ranks (point-to-point),
    runs ``module(x_ext, local_graph)`` with the ordinary backends and returns this rank's rows.
    Every rank must make the same calls in the same order (each call is a collective). The
    parameter gradients of a call are each rank's share: sum them over the group
    (``dist.all_reduce``). With NCCL, set the rank's device (``torch.cuda.set_device``) before
    construction, as ``all_gather_object`` and ``batch_isend_irecv`` need it.

    Args:
        graph: the ``BandedGraph`` (window, causal window or block band over L tokens).
        sizes: rows per rank (default ``shard_sizes(L, P)``: as even as possible).
        group: the process group (default: the default group).

    Raises:
        RuntimeError: torch.distributed is not initialised.
        TypeError: ``graph`` is not a ``BandedGraph``.
        ValueError: the ranks disagree on graph or sizes; bad sizes; a window wider than a
            shard (``plan_shards``).

    Shapes:
        x_local [n_r, C] -> y [n_r, C], n_r = b_r − a_r; local_graph over
        n_r + h_l + h_r tokens.
    """

    def __init__(
        self, graph: BandedGraph, *, sizes: Sequence[int] | None = None, group: Any = None
    ) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "ShardedSequence needs torch.distributed: call dist.init_process_group first"
            )
        if not isinstance(graph, BandedGraph):
            raise TypeError(f"graph must be a BandedGraph, got {type(graph).__name__}")
        self.group = group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        mine = (graph, None if sizes is None else list(sizes))
        everyone: list[Any] = [None] * self.world_size
        dist.all_gather_object(everyone, mine, group=group)
        differ = [r for r, other in enumerate(everyone) if other != everyone[0]]
        if differ:  # the same message on every rank: all of them raise, none waits
            raise ValueError(
                "every rank must describe the same graph and sizes; rank 0 has "
                f"{_describe(everyone[0])} but "
                + ", ".join(f"rank {r} has {_describe(everyone[r])}" for r in differ)
            )
        self.graph = graph
        self.sizes = (
            list(sizes) if sizes is not None else shard_sizes(graph.length, self.world_size)
        )
        if len(self.sizes) != self.world_size:
            raise ValueError(
                f"sizes has {len(self.sizes)} entries, one per rank is needed "
                f"(world size {self.world_size})"
            )
        self.plans = plan_shards(graph, self.sizes)
        self.sizes = [plan.stop - plan.start for plan in self.plans]  # Python ints
        self.start, self.stop = self.plans[self.rank].start, self.plans[self.rank].stop
        self.halo = self.plans[self.rank].halo
        r, P = self.rank, self.world_size
        peer = (lambda q: dist.get_global_rank(group, q)) if group is not None else (lambda q: q)
        self.exchange_plan = HaloPlan(
            rows=self.stop - self.start,
            recv_left=self.halo[0],
            recv_right=self.halo[1],
            send_left=self.plans[r - 1].halo[1] if r > 0 else 0,
            send_right=self.plans[r + 1].halo[0] if r + 1 < P else 0,
            left=peer(r - 1) if r > 0 else None,
            right=peer(r + 1) if r + 1 < P else None,
            group=group,
        )
        self._graphs: dict[torch.device, TokenGraph] = {}

    @property
    def bytes_sent(self) -> dict[str, int]:
        """Bytes this rank has sent so far: ``{"forward": ..., "backward": ...}``."""
        return dict(self.exchange_plan.bytes_sent)

    def local_graph(self, device: torch.device | str | None = None) -> TokenGraph:
        """The graph over this rank's slice with its halo, [a_r − h_l, b_r + h_r) (cached per
        device, so backends reuse its derived layouts on every call).

        Shapes:
            edge_index [2, E_local] over n_r + h_l + h_r tokens.
        """
        dev = torch.device(device if device is not None else "cpu")
        if dev not in self._graphs:
            self._graphs[dev] = self.graph.local_graph(self.start, self.stop, dev)
        return self._graphs[dev]

    def shard(self, x: Tensor) -> Tensor:
        """This rank's rows x[a_r:b_r] of a tensor over the whole sequence (a view).

        Raises:
            ValueError: x does not have L rows.

        Shapes:
            x [L, ...] -> [n_r, ...]
        """
        if x.dim() == 0 or x.shape[0] != self.graph.length:
            raise ValueError(
                f"shard: x must have the sequence's {self.graph.length} rows, got {tuple(x.shape)}"
            )
        return x[self.start : self.stop]

    def exchange(self, x_local: Tensor) -> Tensor:
        """x_ext: this rank's rows with the neighbours' halo rows around them (eq. 1;
        differentiable, a collective).

        Raises:
            ValueError: x_local does not have n_r rows.

        Shapes:
            x_local [n_r, ...] -> [h_l + n_r + h_r, ...]
        """
        return halo_exchange(x_local, self.exchange_plan)

    def crop(self, y_ext: Tensor) -> Tensor:
        """This rank's rows of a result over the slice with halo (eq. 3).

        Raises:
            ValueError: y_ext does not have h_l + n_r + h_r rows.

        Shapes:
            y_ext [h_l + n_r + h_r, ...] -> [n_r, ...]
        """
        hl, hr = self.halo
        n = self.stop - self.start
        if y_ext.dim() == 0 or y_ext.shape[0] != hl + n + hr:
            raise ValueError(
                f"crop: expected {hl + n + hr} rows (halo {hl} + shard {n} + halo {hr}), got "
                f"{tuple(y_ext.shape)}"
            )
        return y_ext[hl : hl + n]

    def __call__(self, module: nn.Module, x_local: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """``crop(module(exchange(x_local), local_graph, *args, **kwargs))``, eqs. 1-3.

        Args:
            module: maps (x [n, C], graph) to [n, C'], e.g. ``GraphAttention``,
                ``GraphTransformerBlock``; it must mix tokens only along the graph's edges.
            x_local: this rank's rows [n_r, C].
            *args, **kwargs: passed on to ``module`` after the graph (per-token inputs must
                cover the slice with its halo, not the shard).

        Returns:
            this rank's outputs [n_r, C'].

        Raises:
            ValueError: x_local does not have n_r rows.
            TypeError: the module did not return a Tensor.
        """
        x_ext = self.exchange(x_local)  # [h_l + n_r + h_r, C]
        y_ext = module(x_ext, self.local_graph(x_local.device), *args, **kwargs)
        if not isinstance(y_ext, Tensor):
            raise TypeError(
                f"ShardedSequence: {type(module).__name__} returned {type(y_ext).__name__}, "
                "a Tensor [n, C] is needed"
            )
        return self.crop(y_ext)

    def __repr__(self) -> str:
        return (
            f"ShardedSequence({self.graph.describe()}, rank={self.rank}/{self.world_size}, "
            f"rows=[{self.start}, {self.stop}), halo={self.halo})"
        )


def _describe(entry: tuple[BandedGraph, list[int] | None]) -> str:
    graph, sizes = entry
    return f"{graph.describe()} with sizes {sizes if sizes is not None else 'even'}"
