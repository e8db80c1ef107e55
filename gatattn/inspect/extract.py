"""Sparse attention graphs of long inputs, kept block by block as the weights are computed.

The weights come a block of target (query) rows at a time, each target with its whole
neighbourhood (``gatattn.backends.attention_rows``: α and Attn of eqs. 1-2 over all of N(i)),
so they are the model's exact weights. Of each block, only the pairs of the selection rule
(``gatattn.inspect.sparse``) are kept:

    K_h(i) = the top_k largest Attn^h_ij of those >= τ,   j ∈ N(i)

and the block is dropped before the next one is computed: peak memory O(N·k·H + one block),
never the [E, H] weights of the layer nor a dense [H, L, L]. This module computes nothing
itself; it consumes the blocks, in either of their two layouts:

``grid``   scores and weights [H', R, W] over the keys of the block, with the edge mask
           [R, W]: the k-th largest weight of each row by ``torch.topk``, ties resolved
           towards the lower key (= the earlier edge), as ``select_rows``.
``edges``  scores and weights [e, H'] on the block's edges: ``keep_chunk``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import torch
from torch import Tensor

from .sparse import (
    SparseAttention,
    assemble,
    check_sparsify,
    keep_chunk,
)

__all__ = ["RowSource", "extract_sparse", "keep_grid"]


class _Block(Protocol):
    """One block of rows (``gatattn.backends.RowBlock``): grid or edge-list layout."""

    @property
    def rows(self) -> range: ...
    @property
    def src(self) -> Tensor: ...
    @property
    def dst(self) -> Tensor | None: ...
    @property
    def scores(self) -> Tensor: ...
    @property
    def weights(self) -> Tensor: ...
    @property
    def edge(self) -> Tensor | None: ...


class RowSource(Protocol):
    """What ``extract_sparse`` reads: blocks of rows and the facts of the layer (the type of
    ``gatattn.backends.attention_rows``)."""

    num_nodes: int
    num_heads: int
    num_kv_heads: int
    heads: tuple[int, ...] | None
    lengths: tuple[int, ...] | None
    structure: str | None

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def __iter__(self) -> Iterator[_Block]: ...


def keep_grid(
    block: _Block,
    heads: Sequence[int],
    top_k: int | None,
    threshold: float | None,
    renormalize: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The kept (edge, head) pairs of a grid block (the rule of ``gatattn.inspect.sparse``).

    .. math::
        K_h(i) = \\mathrm{top}_k \\{ j : \\mathrm{edge}[i, j],\\;
        \\mathrm{Attn}^h_{ij} \\ge \\tau \\}

    ``torch.topk`` gives each row's k-th largest weight v_k; where more edges tie at v_k than
    topk kept, the row is redone with ``select_rows``' rule (the ties at the lowest keys).

    Returns:
        (src [K], dst [K], head [K], scores [K], weights [K]), sorted by target, head, key.

    Shapes:
        block.scores, block.weights [H', R, W], block.edge [R, W], block.src [W] (the keys).
    """
    assert block.edge is not None
    w, a = block.weights, block.scores  # [H', R, W]; non-edges have weight 0
    W = w.size(-1)
    if top_k is None or top_k >= W:
        cand = _candidates(w, block.edge, threshold)  # [H', R, W]
        r, h, c = cand.permute(1, 0, 2).ge(0).nonzero(as_tuple=True)  # [K] by row, head, key
        kept = cand[h, r, c]  # [K]
        if renormalize:
            total = cand.clamp_min(0).sum(-1)  # [H', R]
            kept = kept / torch.where(total > 0, total, torch.ones_like(total))[h, r]
    else:
        # the k + 1 largest: when the (k+1)-th equals the k-th, topk chose among ties (or
        # among weights 0, which non-edges have too): those rows follow the rule exactly
        vals, idx = w.topk(top_k + 1, dim=-1)  # [H', R, k + 1] descending
        vals, idx, unsure = vals[..., :top_k], idx[..., :top_k], vals[..., top_k] == vals[..., -2]
        if bool(unsure.any()):
            th, tr = unsure.nonzero(as_tuple=True)  # [T] each
            sub = _candidates(w[th, tr], block.edge[tr], None)  # [T, W]
            v = sub.topk(top_k, dim=-1).values[:, -1:]  # [T, 1] the k-th largest
            above, tie = sub > v, sub == v  # [T, W]
            room = top_k - above.sum(-1, keepdim=True)  # [T, 1]
            pick = above | (tie & (tie.cumsum(-1) <= room) & (v >= 0))  # [T, W]
            # the picked keys first (ascending), then unpicked ones as -1 fillers: k per row
            cols = torch.argsort((~pick).byte(), dim=-1, stable=True)[:, :top_k]  # [T, k]
            got = sub.gather(1, cols).masked_fill_(~pick.gather(1, cols), -1.0)  # [T, k]
            idx[th, tr], vals[th, tr] = cols, got
        idx, order = idx.sort(-1)  # [H', R, k] by key
        vals = vals.gather(-1, order)
        ok = vals >= (0.0 if threshold is None else threshold)  # [H', R, k] kept
        if renormalize:
            total = torch.where(ok, vals, torch.zeros_like(vals)).sum(-1, keepdim=True)
            vals = vals / torch.where(total > 0, total, torch.ones_like(total))
        r, h, s = ok.permute(1, 0, 2).nonzero(as_tuple=True)  # [K] by row, head, key
        c = idx[h, r, s]  # [K]
        kept = vals[h, r, s]  # [K]
    head_ids = h if list(heads) == list(range(len(heads))) else _lut(heads, w.device)[h]  # [K]
    return block.src[c], r + block.rows.start, head_ids, a[h, r, c], kept


def _lut(heads: Sequence[int], device: torch.device) -> Tensor:
    return torch.tensor(list(heads), dtype=torch.long, device=device)  # [H'] head of each slot


def _candidates(weights: Tensor, edge: Tensor, threshold: float | None) -> Tensor:
    """The weights of the edges (>= τ), -1 elsewhere. Shapes: [.., R, W], edge [R, W]."""
    cand = weights.masked_fill(~edge, -1.0)
    return cand if threshold is None else cand.masked_fill_(cand < threshold, -1.0)


def extract_sparse(
    rows: RowSource,
    *,
    top_k: int | None = None,
    threshold: float | None = None,
    renormalize: bool = False,
    layer: int | None = None,
) -> SparseAttention:
    """One layer's sparse attention graph from its weights computed a block of rows at a time.

    .. math::
        K_h(i) = \\mathrm{top}_k \\{ j \\in N(i) : \\mathrm{Attn}^h_{ij} \\ge \\tau \\}, \\quad
        \\mathrm{Attn}^h_{ij} = \\mathrm{softmax}_{j \\in N(i)} w_h(i, j)

    ``rows`` is ``ga.backends.attention_rows(q, k, graph, score, heads=...)``; each of its
    blocks keeps only its selected pairs: peak memory O(one block + N·k·H) for top-k, whatever
    E is. The kept scores and weights equal the full computation's (the edge backend's) for
    those edges; weights are not renormalised unless ``renormalize=True``.

    Args:
        rows: the blocks of rows and the layer's facts (``RowSource``).
        top_k: keep the k largest weights per target and head.  threshold: keep weights >= τ.
        renormalize: rescale the kept weights to sum to 1 per target and head.
        layer: recorded in the result.

    Shapes:
        blocks over N_t targets and H heads -> SparseAttention with K <= N_t·k·H rows.

    Raises:
        ValueError: a bad ``top_k`` or ``threshold`` (``check_sparsify``).
    """
    H = rows.num_heads
    check_sparsify(top_k, threshold, None, H)
    chosen = rows.heads if rows.heads is not None else tuple(range(H))
    sel = list(chosen)
    parts = []
    for block in rows:
        if block.edge is not None:
            parts.append(keep_grid(block, sel, top_k, threshold, renormalize))
        else:
            assert block.dst is not None
            parts.append(
                keep_chunk(
                    block.rows,
                    block.src,
                    block.dst,
                    block.scores,
                    block.weights,
                    sel,
                    top_k,
                    threshold,
                    renormalize,
                )
            )
    return assemble(
        parts,
        torch.empty(0, dtype=rows.dtype, device=rows.device),
        num_nodes=rows.num_nodes,
        num_heads=H,
        num_kv_heads=rows.num_kv_heads,
        lengths=rows.lengths,
        heads=rows.heads,
        top_k=top_k,
        threshold=threshold,
        renormalized=renormalize,
        layer=layer,
        structure=rows.structure,
    )
