"""The halo exchange between neighbouring ranks, and its backward.

Rank r holds the rows [a_r, b_r) of x. Its layer needs h_l(r) rows of rank r − 1 on the left
and h_r(r) rows of rank r + 1 on the right. One exchange, with torch.distributed point-to-point
calls (``batch_isend_irecv``), in both directions at once:

    send  x[:h_r(r − 1)]           to r − 1   (the right halo of r − 1)
    send  x[n − h_l(r + 1):]       to r + 1   (the left halo of r + 1)
    recv  h_l(r) rows from r − 1,  h_r(r) rows from r + 1
    x_ext = cat(left halo, x, right halo)                          [h_l + n + h_r, ...]

The halo rows are copies of rows that another rank owns, so their gradients belong to that rank.
The backward sends them home and adds what comes back (the adjoint of the copy):

    g_x = g_ext[h_l : h_l + n]
    g_x[:h_r(r − 1)]      += gradient of r − 1's right halo     (received from r − 1)
    g_x[n − h_l(r + 1):]  += gradient of r + 1's left halo      (received from r + 1)

Bytes sent per rank and exchange: (h_r(r − 1) + h_l(r + 1)) · row bytes, forward and backward
alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["HaloPlan", "halo_exchange"]


@dataclass(eq=False)
class HaloPlan:
    """Who sends how many rows to whom in one halo exchange, seen from one rank.

    Attributes:
        rows: n, this rank's rows.
        recv_left: h_l(r), rows received from the left neighbour.
        recv_right: h_r(r), rows received from the right neighbour.
        send_left: h_r(r − 1), this rank's first rows that the left neighbour needs.
        send_right: h_l(r + 1), this rank's last rows that the right neighbour needs.
        left: global rank of the left neighbour (None on the first rank).
        right: global rank of the right neighbour (None on the last rank).
        group: the process group (None: the default group).
        bytes_sent: bytes this rank has sent, ``{"forward": int, "backward": int}``, summed over
            every exchange made with this plan.
    """

    rows: int
    recv_left: int
    recv_right: int
    send_left: int
    send_right: int
    left: int | None
    right: int | None
    group: Any = None
    bytes_sent: dict[str, int] = field(default_factory=lambda: {"forward": 0, "backward": 0})

    def swap(
        self, to_left: Tensor, to_right: Tensor, from_left: int, from_right: int, phase: str
    ) -> tuple[Tensor, Tensor]:
        """Send ``to_left`` / ``to_right`` to the neighbours and receive ``from_left`` /
        ``from_right`` rows from them (empty tensors where there is nothing), all at once, with
        one ``batch_isend_irecv``; adds the bytes sent to ``bytes_sent[phase]``.

        Shapes:
            to_left [s_l, ...], to_right [s_r, ...] -> ([from_left, ...], [from_right, ...])
        """
        like = to_left if to_left.numel() else to_right
        tail = tuple(like.shape[1:])
        got_left = like.new_empty((from_left, *tail))  # [h, ...]
        got_right = like.new_empty((from_right, *tail))  # [h, ...]
        ops: list[dist.P2POp] = []
        for peer, send, recv in ((self.left, to_left, got_left), (self.right, to_right, got_right)):
            if peer is None:
                continue
            if recv.shape[0]:
                ops.append(dist.P2POp(dist.irecv, recv, peer, self.group))
            if send.shape[0]:
                ops.append(dist.P2POp(dist.isend, send, peer, self.group))
                self.bytes_sent[phase] += send.numel() * send.element_size()
        if ops:
            for work in dist.batch_isend_irecv(ops):
                work.wait()
        return got_left, got_right


class _HaloExchange(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, plan: HaloPlan) -> Tensor:
        ctx.plan = plan
        n = plan.rows
        to_left = x[: plan.send_left].contiguous()  # [h_r(r-1), ...]
        to_right = x[n - plan.send_right :].contiguous()  # [h_l(r+1), ...]
        left, right = plan.swap(to_left, to_right, plan.recv_left, plan.recv_right, "forward")
        return torch.cat([left, x, right])  # [h_l + n + h_r, ...]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        plan: HaloPlan = ctx.plan
        n, hl = plan.rows, plan.recv_left
        g_left = grad[:hl].contiguous()  # [h_l, ...] belongs to rank r - 1
        g_right = grad[hl + n :].contiguous()  # [h_r, ...] belongs to rank r + 1
        back_left, back_right = plan.swap(
            g_left, g_right, plan.send_left, plan.send_right, "backward"
        )
        g_x = grad[hl : hl + n].clone()  # [n, ...]
        g_x[: plan.send_left] += back_left
        g_x[n - plan.send_right :] += back_right
        return g_x, None


def halo_exchange(x: Tensor, plan: HaloPlan) -> Tensor:
    """Extend this rank's rows with its neighbours' halo rows (differentiable).

    .. math:: x_{\\mathrm{ext}} = [\\, x^{(r-1)}_{n - h_l:} \\,;\\, x^{(r)} \\,;\\,
        x^{(r+1)}_{:h_r} \\,]

    A collective: every rank of the plan's group calls it with its own rows, in the same order
    of calls. The backward sends the halo gradients to the ranks that own the rows.

    Args:
        x: this rank's rows [n, ...].
        plan: the ``HaloPlan`` of this rank.

    Returns:
        x_ext [h_l + n + h_r, ...].

    Raises:
        ValueError: x has not ``plan.rows`` rows.

    Shapes:
        x [n, ...] -> [h_l + n + h_r, ...]
    """
    if x.dim() == 0 or x.shape[0] != plan.rows:
        shape = tuple(x.shape)
        raise ValueError(f"halo_exchange: x must have this rank's {plan.rows} rows, got {shape}")
    out: Tensor = _HaloExchange.apply(x, plan)
    return out
