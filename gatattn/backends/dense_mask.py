"""The dense backend's masks: biases read from grids, rows without a key, attention sinks.

    M[b, h, i, j] = Σ_biases b_h(i, j)  on the edges,  −∞ elsewhere      (docs/math.md, eq. 5)

``bias_grid`` sums the biases that read their values from a grid-form edge input
(``ScoreBias.dense_grid``); ``guard_empty_rows`` opens the rows SDPA cannot normalise (their
output is zeroed afterwards, as the graph formula gives 0); ``sink_mask`` appends the sink
column of gpt-oss's attention sinks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..scores import ScoreBias

__all__ = ["bias_grid", "guard_empty_rows", "no_key", "sink_mask"]


def bias_grid(
    biases: tuple[ScoreBias, ...],
    edge_attr: object,
    shape: tuple[int, int, int, int],
    dtype: torch.dtype,
) -> Tensor | None:
    """Σ_b b(i, j) on the padded grid when every bias reads it from a grid-form edge input
    (``ScoreBias.dense_grid``), else None. A lone boolean grid stays boolean (SDPA takes it).

    Shapes:
        -> [B | 1, H | 1, L_q | 1, L_k], bool (True = may attend) or ``dtype``.

    Raises:
        ValueError: a grid that does not broadcast to ``shape`` = (B, H, L_q, L_k).
    """
    grids = []
    for b in biases:
        t = b.dense_grid(edge_attr)
        if t is None:
            return None
        fits = t.dim() == 4 and t.size(3) == shape[3]
        for d in range(3 if fits else 0):  # each dimension broadcasts or matches
            fits = fits and (t.size(d) == 1 or t.size(d) == shape[d])
        if not fits:
            raise ValueError(
                f"bias {b.name!r} gave a grid of shape {list(t.shape)}, which is not "
                f"[B | 1, H | 1, L_q | 1, L_k] for (B, H, L_q, L_k) = {shape}"
            )
        grids.append(t)
    if len(grids) == 1 and grids[0].dtype == torch.bool:
        return grids[0]
    total = torch.zeros((), dtype=dtype, device=grids[0].device)
    for t in grids:
        if t.dtype == torch.bool:
            t = torch.zeros(t.shape, dtype=dtype, device=t.device).masked_fill(~t, float("-inf"))
        total = total + t.to(dtype)
    return total


def no_key(mask: Tensor) -> Tensor:
    """Rows of a bool (True = may attend) or additive mask that allow no key, by a max over the
    keys (on CPU about 100x faster than a bool ``any`` or an ``isneginf(...).all``).

    Shapes:
        mask [.., L_q, L_k] -> [.., L_q, 1] bool.
    """
    if mask.dtype == torch.bool:
        return mask.view(torch.uint8).amax(-1, keepdim=True) == 0
    return mask.amax(-1, keepdim=True) == float("-inf")


def guard_empty_rows(mask: Tensor, rows: Tensor | None = None) -> tuple[Tensor | None, Tensor]:
    """Rows of ``mask`` that allow no key -> (rows [.., L_q, 1] or None, a mask SDPA can run).

    SDPA returns NaN on such rows (and NaN gradients); the graph formula gives 0. The rows are
    opened to every key (any finite row would do) and their output is zeroed afterwards, which
    also zeroes their gradient. ``rows`` gives them when known (from the graph's in-degrees);
    otherwise they are found by a pass over the mask.
    """
    if rows is None:
        rows = no_key(mask)  # [.., L_q, 1]
    if not torch.compiler.is_compiling() and not bool(rows.any()):
        return None, mask
    if mask.dtype == torch.bool:
        return rows, mask | rows
    return rows, mask.masked_fill(rows, 0.0)


def sink_mask(
    mask: Tensor | None,
    causal: bool,
    sinks: Tensor,
    shape: tuple[int, int, int],
    dtype: torch.dtype,
) -> Tensor:
    """The additive mask with one more key column, the sink: [B | 1, H, L_q, L_k + 1].

    Column L_k holds s_h for every query (its key and value are 0, so its logit is the mask
    value alone): softmax over the row is exp(α_ij) / (exp(s_h) + Σ_k exp(α_ik)).
    """
    H, Lq, Lk = shape
    if mask is None:
        base = torch.zeros(1, 1, Lq, Lk, dtype=dtype, device=sinks.device)  # [1, 1, L_q, L_k]
        if causal:
            allowed = torch.ones(Lq, Lk, dtype=torch.bool, device=sinks.device).tril()
            base = base.masked_fill(~allowed, float("-inf"))
    elif mask.dtype == torch.bool:
        base = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        base = base.masked_fill(~mask, float("-inf"))
    else:
        base = mask.to(dtype)
    if base.dim() == 3:  # [H, L_q, L_k] (position biases of a tagged graph)
        base = base.unsqueeze(0)
    rows = base.size(0)
    col = sinks.to(dtype).view(1, H, 1, 1).expand(rows, H, Lq, 1)  # [B | 1, H, L_q, 1]
    return torch.cat([base.expand(rows, H, Lq, Lk), col], -1)  # [B | 1, H, L_q, L_k + 1]
