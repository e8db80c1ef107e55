"""The complete graph and graphs from dense masks: the seed idea, N(i) = every token.

complete_graph:  N(i) = { j : seq(j) = seq(i) }          (dense self-attention, docs/math.md eq. 4)
from_mask:       N(i) = { j : mask[i, j] }               (SDPA's boolean mask convention)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..graph import TokenGraph, check_lengths

__all__ = ["complete_graph", "from_mask"]


def complete_graph(
    n: int | None = None,
    *,
    lengths: Sequence[int] | Tensor | None = None,
    self_loops: bool = True,
    device: torch.device | str | None = None,
) -> TokenGraph:
    """The complete token graph: every token attends to every token of its sequence.

    .. math::
        N(i) = \\{ j : \\mathrm{seq}(j) = \\mathrm{seq}(i) \\}  \\;(\\setminus \\{i\\}
        \\text{ if } self\\_loops=False)

    With ``lengths=[L_1, ..., L_B]`` the sequences are concatenated and the graph is
    block-diagonal (no padding). With N(i) = all tokens, graph attention is exactly dense
    self-attention (docs/math.md, eq. 4). Edges are sorted by target, then source, so
    ``scores.view(n, n)[i, j]`` is α_ij for one sequence with self-loops.

    Args:
        n: number of tokens of a single sequence.
        lengths: per-sequence token counts of a batch; give either ``n`` or ``lengths``.
        self_loops: include the edge i → i (default True, as dense attention does).
        device: where edge_index lives.

    Shapes:
        edge_index [2, E] with E = Σ_b L_b² (or Σ_b L_b (L_b − 1) without self-loops).
    """
    if (n is None) == (lengths is None):
        raise ValueError("complete_graph takes either n or lengths=[...], not both and not neither")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        seq: tuple[int, ...] = (n,)
    else:
        assert lengths is not None
        seq = check_lengths(lengths)
    lens = torch.tensor(seq, device=device)  # [B]
    num = int(lens.sum())
    starts = torch.cumsum(lens, 0) - lens  # [B]
    node_len = lens.repeat_interleave(lens)  # [N] length of each node's sequence
    node_start = starts.repeat_interleave(lens)  # [N]
    dst = torch.arange(num, device=device).repeat_interleave(node_len)  # [E]
    edge_start = torch.cumsum(node_len, 0) - node_len  # [N] first edge of each target
    src = node_start[dst] + torch.arange(dst.numel(), device=device) - edge_start[dst]  # [E]
    edge_index = torch.stack([src, dst])
    if not self_loops:
        edge_index = edge_index[:, src != dst]
    return TokenGraph(
        edge_index,
        num,
        num,
        structure="complete",
        lengths=seq if lengths is not None else None,
        params={"self_loops": self_loops},
        validate=False,
        verified=True,
    )


def from_mask(mask: Tensor) -> TokenGraph:
    """Build a TokenGraph from a boolean mask [N_t, N_s] in the SDPA convention.

    .. math:: N(i) = \\{ j : mask[i, j] \\}

    Edges come out sorted by target, then source. A full mask is tagged ``"complete"``.

    Raises:
        TypeError: the mask is not boolean (float masks are additive biases, not graphs).
        ValueError: the mask is not 2-D.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"mask must be boolean (True = may attend), got dtype {mask.dtype}; an additive "
            "float mask is a score bias, not a graph"
        )
    if mask.dim() != 2:
        raise ValueError(f"mask must have shape [N_t, N_s], got {list(mask.shape)}")
    num_dst, num_src = mask.shape
    dst, src = mask.nonzero(as_tuple=True)
    full = bool(mask.all()) and num_dst == num_src and num_src > 0
    return TokenGraph(
        torch.stack([src, dst]),
        num_src,
        num_dst,
        structure="complete" if full else None,
        params={"self_loops": True} if full else None,
        validate=False,
        verified=full,
    )
