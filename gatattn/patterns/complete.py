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
    num = sum(seq)
    count = sum(m * m for m in seq) if self_loops else sum(m * (m - 1) for m in seq)

    def build() -> Tensor:  # deferred: the dense backend never reads these edges
        lens = torch.tensor(seq, device=device)  # [B]
        starts = torch.cumsum(lens, 0) - lens  # [B]
        node_len = lens.repeat_interleave(lens, output_size=num)  # [N] its sequence's length
        node_start = starts.repeat_interleave(lens, output_size=num)  # [N]
        square = sum(m * m for m in seq)  # edges with self-loops: a size known without data
        dst = torch.arange(num, device=device).repeat_interleave(node_len, output_size=square)
        edge_start = torch.cumsum(node_len, 0) - node_len  # [N] first edge of each target
        src = node_start[dst] + torch.arange(dst.numel(), device=device) - edge_start[dst]  # [E]
        edge_index = torch.stack([src, dst])
        return edge_index if self_loops else edge_index[:, src != dst]

    return TokenGraph._deferred(
        build,
        num,
        num,
        count,
        device=device,
        structure="complete",
        lengths=seq if lengths is not None else None,
        params={"self_loops": self_loops},
    )


def from_mask(mask: Tensor) -> TokenGraph:
    """Build a TokenGraph from a boolean mask in the SDPA convention (True = may attend).

    .. math:: N(i) = \\{ j : mask[i, j] \\}  \\qquad  N(b, i) = \\{ (b, j) : mask[b, i, j] \\}

    A 2-D mask [N_t, N_s] is one sequence; a full square one is tagged ``"complete"``. A 3-D
    mask [B, L_q, L_k] is a block-diagonal batch: query (b, i) is node b·L_q + i, key (b, j) is
    node b·L_k + j, ``lengths = [L_q] * B`` and ``params["kv_lengths"] = [L_k] * B``. Any mask
    that is not a full square one is tagged ``"masked"``: the graph keeps (a copy of) the mask,
    ``dense_mask()``, which the dense backend hands to SDPA as it is, and edge_index is made from
    it only when something reads it. So a padded batch, or any mask, stays one SDPA call.

    Edges come out sorted by target, then source.

    Raises:
        TypeError: the mask is not a boolean tensor (float masks are additive biases).
        ValueError: the mask is not 2-D or 3-D, or has an empty dimension.

    Shapes:
        mask [N_t, N_s] or [B, L_q, L_k] -> edge_index [2, E], E = mask.sum().
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"mask must be boolean (True = may attend), got dtype {mask.dtype}; an additive "
            "float mask is a score bias, not a graph"
        )
    if mask.dim() not in (2, 3):
        raise ValueError(
            f"mask must have shape [N_t, N_s] or [B, L_q, L_k], got {list(mask.shape)}"
        )
    if mask.dim() == 2 and mask.size(0) == mask.size(1) and mask.numel() > 0:
        if not torch.compiler.is_compiling() and bool(mask.all()):
            return complete_graph(mask.size(0), device=mask.device)
    if mask.dim() == 3 and 0 in mask.shape:
        raise ValueError(f"mask [B, L_q, L_k] must have no empty dimension, got {list(mask.shape)}")
    batched = mask.dim() == 3
    m = mask if batched else mask.unsqueeze(0)  # [B, L_q, L_k]
    Lq = m.size(1)
    if m.stride(1) == 0:  # an expanded [B, 1, L_k] (a key padding mask): keep it compact
        m = m[:, :1]
    return masked_graph(m.clone(), Lq, batched)  # a copy: the caller's tensor may change


def masked_graph(m: Tensor, num_queries: int, batched: bool) -> TokenGraph:
    """The graph of a mask ``m`` [B, L_q, L_k] or [B, 1, L_k] (every query of sequence b
    attends to the keys ``m[b, 0]``), which the graph keeps: the caller hands it over and
    must not change it. Edges are made from it only when read; tag ``"masked"``."""
    B, Lq, Lk = m.size(0), num_queries, m.size(2)

    def build() -> Tensor:
        b, i, j = m.expand(B, Lq, Lk).nonzero(as_tuple=True)  # sorted by (b, i, j)
        return torch.stack([b * Lk + j, b * Lq + i])  # [2, E] by target, then source

    return TokenGraph._deferred(
        build,
        B * Lk,
        B * Lq,
        None,
        device=m.device,
        structure="masked",
        lengths=(Lq,) * B if batched else None,
        params={"kv_lengths": (Lk,) * B} if batched else None,
        mask=m,
    )
