"""Sparse attention graphs: per head, only the edges worth keeping (docs/export.md, "Long contexts").

For each target (query) i and head h, of the weights Attn_ij (docs/math.md, eq. 2) on the edges
j → i of the token graph, keep

    K_h(i) = { j ∈ N(i) : Attn^h_ij >= τ }                        (threshold τ ∈ [0, 1])
             ∩ the k largest Attn^h_ij of those                   (top-k, k >= 1)

Both are optional; given together, the top-k is taken among the edges at or above τ. The kept
weights are the model's own Attn^h_ij, unchanged: they no longer sum to 1 over K_h(i). With
``renormalize=True`` they are rescaled to Attn^h_ij / Σ_{j' ∈ K_h(i)} Attn^h_ij' (the scores α
stay as they are). Ties: among edges whose weight equals the k-th largest, the ones that come
first in the target's edge order are kept (for the builders' graphs: the lower key index, the
earlier token), so the choice is deterministic.

``SparseAttention`` holds the result in "long" form, one row per kept (edge, head) pair, so each
head keeps its own edges: O(N·k·H) memory for top-k instead of O(E·H).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..graph import TokenGraph
from ..result import Attention
from ..validation import check_heads

__all__ = [
    "ROW_BUDGET",
    "SparseAttention",
    "check_sparsify",
    "iter_row_chunks",
    "select_rows",
    "sparsify",
]

#: Values per block of target rows in ``sparsify``: padded [rows, max in-degree, H'].
#: 2**22 fp32 values are 16 MiB, as ``kernels.CHUNK_ELEMENTS`` (and the blocks of
#: ``gatattn.backends.attention_rows``, which ``extract_sparse`` reads).
ROW_BUDGET = 1 << 22


@dataclass
class SparseAttention:
    """One layer's attention graph, sparsified per head: one row per kept (edge, head) pair.

    Attributes:
        edge_index: the kept edges [2, K], row 0 source j (key), row 1 target i (query); sorted
            by target, then head, then the target's edge order.
        head: the query head h of each row [K] (an index of the model's H heads).
        scores: α^h_ij [K] (eq. 1).
        weights: Attn^h_ij [K] (eq. 2): the model's weights, unless ``renormalized``.
        num_nodes: N, the tokens.
        num_heads: H, the model's query heads.
        num_kv_heads: H_kv, its key/value heads (grouped-query attention: head h reads the
            key/value head h // (H / H_kv); H_kv = H without grouping).
        lengths: tokens per sequence of a block-diagonal batch, or None for one sequence.
        heads: the heads extracted (all of them when None).
        top_k: k, or None.  threshold: τ, or None.
        renormalized: the kept weights were rescaled to sum to 1 per target and head.
        layer: the layer index, when known.
        structure: the token graph's tag (``"causal"``...), when known.
    """

    edge_index: Tensor
    head: Tensor
    scores: Tensor
    weights: Tensor
    num_nodes: int
    num_heads: int
    num_kv_heads: int
    lengths: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    top_k: int | None = None
    threshold: float | None = None
    renormalized: bool = False
    layer: int | None = None
    structure: str | None = None

    @property
    def num_edges(self) -> int:
        """K, the kept (edge, head) pairs."""
        return int(self.head.numel())

    @property
    def group_size(self) -> int:
        """H / H_kv, the query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    @property
    def kv_head(self) -> Tensor:
        """The key/value head of each row [K]: head // (H / H_kv)."""
        return self.head // self.group_size  # [K]

    def head_attention(self, h: int) -> Attention:
        """The kept edges of head ``h`` as a one-head ``ga.Attention`` (scores/weights [E_h, 1])
        for ``ga.to_networkx``, ``ga.plot`` and the analyses; ``out`` is empty [N, 0].

        Raises:
            ValueError: ``h`` is not an extracted head.
        """
        chosen = self.heads if self.heads is not None else tuple(range(self.num_heads))
        if isinstance(h, bool) or not isinstance(h, int) or h not in chosen:
            raise ValueError(f"head must be one of the extracted heads {list(chosen)}, got {h!r}")
        rows = self.head == h  # [K]
        ei = self.edge_index[:, rows]  # [2, E_h]
        n = self.num_nodes
        graph = TokenGraph(ei, n, n, lengths=self.lengths, validate=False)
        out = self.weights.new_zeros(n, 0)  # [N, 0]
        return Attention(out, ei, self.scores[rows, None], self.weights[rows, None], graph)

    def metadata(self) -> dict[str, Any]:
        """The graph-level facts that the files carry (``gatattn.inspect.stream``); ``layer``,
        ``top_k`` and ``threshold`` only when set."""
        heads = self.heads if self.heads is not None else tuple(range(self.num_heads))
        tau = None if self.threshold is None else float(self.threshold)
        optional = {"layer": self.layer, "top_k": self.top_k, "threshold": tau}
        return {
            **{name: value for name, value in optional.items() if value is not None},
            "num_nodes": self.num_nodes,
            "heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "kv_group_size": self.group_size,
            "extracted_heads": " ".join(map(str, heads)),
            "kv_head_of": " ".join(str(h // self.group_size) for h in heads),
            "renormalized": self.renormalized,
            "pattern": self.structure or "custom",
            "num_sequences": len(self.lengths) if self.lengths else 1,
        }


def check_sparsify(
    top_k: object, threshold: object, heads: Sequence[int] | None, num_heads: int
) -> tuple[int, ...] | None:
    """Check the options of a sparse extraction; return the heads as a sorted tuple (or None).

    Raises:
        ValueError: k not a positive int, τ not a number in [0, 1], a head outside 0..H-1,
            a repeated head or an empty list of heads.
    """
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int (or None), got {top_k!r}")
    if threshold is not None:
        ok = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
        if not ok or not (0.0 <= float(threshold) <= 1.0):  # type: ignore[arg-type]
            raise ValueError(f"threshold must be a number in [0, 1] (or None), got {threshold!r}")
    return check_heads(heads, num_heads)


def iter_row_chunks(degree: Tensor, width: int, budget: int = ROW_BUDGET) -> Iterator[range]:
    """Split the targets 0..N-1 into runs whose padded block [rows, max in-degree, width] has
    at most ``budget`` elements (a single target over budget is a run of its own).

    Shapes:
        degree [N] (in-degree of each target) -> ranges of target indices.
    """
    deg = degree.tolist()
    start, widest = 0, 0
    for i, d in enumerate(deg):
        wider = max(widest, int(d))
        if i > start and (i - start + 1) * wider * width > budget:
            yield range(start, i)
            start, wider = i, int(d)
        widest = wider
    if start < len(deg):
        yield range(start, len(deg))


def select_rows(
    weights: Tensor,
    slot_ok: Tensor,
    top_k: int | None,
    threshold: float | None,
) -> Tensor:
    """Which padded edges to keep, per target row and head (the rule of the module docstring).

    ``weights[r, s, h]`` is Attn^h of the s-th edge into target r (in the target's edge order);
    ``slot_ok[r, s]`` says whether that slot holds an edge at all. The k-th largest weight v_k
    is found with ``torch.topk``; every edge above v_k is kept and, of those equal to v_k, the
    first ones in slot order, so exactly min(k, candidates) edges are kept per row and head.

    Shapes:
        weights [R, W, H'], slot_ok [R, W] -> keep [R, W, H'] bool.
    """
    keep = slot_ok.unsqueeze(-1).expand_as(weights)  # [R, W, H']
    if threshold is not None:
        keep = keep & (weights >= threshold)
    if top_k is None or top_k >= weights.size(1):
        return keep
    cand = torch.where(keep, weights, torch.full_like(weights, -1.0))  # [R, W, H'] -1: no edge
    kth = cand.topk(top_k, dim=1).values[:, -1:]  # [R, 1, H'] the k-th largest
    above = cand > kth  # [R, W, H']
    tied = keep & (cand == kth)  # [R, W, H'] (kth = -1: no edge is tied)
    room = top_k - above.sum(1, keepdim=True)  # [R, 1, H'] places left for tied edges
    return above | (tied & (tied.cumsum(1) <= room))


def renormalize_rows(weights: Tensor, keep: Tensor) -> Tensor:
    """Attn / Σ_{kept} Attn per target row and head (rows that keep nothing stay 0).

    Shapes:
        weights [R, W, H'], keep [R, W, H'] -> [R, W, H'].
    """
    kept = torch.where(keep, weights, torch.zeros_like(weights))  # [R, W, H']
    total = kept.sum(1, keepdim=True)  # [R, 1, H']
    return kept / torch.where(total > 0, total, torch.ones_like(total))


def pad_rows(
    rows: range, dst: Tensor, values: Sequence[Tensor], fill: Sequence[float]
) -> tuple[list[Tensor], Tensor, Tensor]:
    """Lay the edges of consecutive targets ``rows`` (sorted by target) out as padded rows.

    Returns:
        (padded values [R, W, H'] each, slot_ok [R, W], position of each edge [e] as r·W + s).

    Shapes:
        dst [e] (targets in ``rows``, sorted), values [e, H'] each.
    """
    R = len(rows)
    local = dst - rows.start  # [e]
    counts = torch.bincount(local, minlength=R)  # [R]
    W = int(counts.max()) if R and local.numel() else 0
    first = torch.cumsum(counts, 0) - counts  # [R]
    slot = torch.arange(local.numel(), device=dst.device) - first[local]  # [e]
    pos = local * W + slot  # [e]
    out = []
    for v, f in zip(values, fill, strict=True):
        block = v.new_full((R * W, v.size(1)), f)  # [R·W, H']
        block[pos] = v
        out.append(block.view(R, W, v.size(1)))  # [R, W, H']
    slot_ok = torch.arange(W, device=dst.device) < counts.unsqueeze(1)  # [R, W]
    return out, slot_ok, pos


def keep_chunk(
    rows: range,
    src: Tensor,
    dst: Tensor,
    scores: Tensor,
    weights: Tensor,
    heads: Sequence[int],
    top_k: int | None,
    threshold: float | None,
    renormalize: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Select the kept (edge, head) pairs among the edges into ``rows``.

    Returns:
        (src [K], dst [K], head [K], scores [K], weights [K]), sorted by target, head, edge order.

    Shapes:
        src, dst [e] sorted by target; scores, weights [e, H'] (H' = len(heads)).
    """
    (w, a), slot_ok, pos = pad_rows(rows, dst, (weights, scores), (-1.0, -math.inf))
    keep = select_rows(w, slot_ok, top_k, threshold)  # [R, W, H']
    if renormalize:
        w = renormalize_rows(w, keep)
    r, h, s = keep.permute(0, 2, 1).nonzero(as_tuple=True)  # [K] each: by row, head, slot
    W = w.size(1)
    edge = torch.empty(max(len(rows) * W, 1), dtype=torch.long, device=dst.device)  # [R·W]
    edge[pos] = torch.arange(pos.numel(), device=dst.device)
    e = edge[r * W + s]  # [K] the chunk's edge of each kept pair
    head_ids = torch.tensor(list(heads), dtype=torch.long, device=dst.device)[h]  # [K]
    return src[e], dst[e], head_ids, a[r, s, h], w[r, s, h]


def sparsify(
    attention: Attention,
    *,
    top_k: int | None = None,
    threshold: float | None = None,
    heads: Sequence[int] | None = None,
    renormalize: bool = False,
    num_kv_heads: int | None = None,
    layer: int | None = None,
) -> SparseAttention:
    """Sparsify an attention result that is already computed (its [E, H] weights exist).

    .. math::
        K_h(i) = \\mathrm{top}_k \\{ j \\in N(i) : \\mathrm{Attn}^h_{ij} \\ge \\tau \\}

    For long inputs, ``gatattn.inspect.extract.extract_sparse`` (on the blocks of rows of
    ``gatattn.backends.attention_rows``) gives the same graph without ever holding the [E, H]
    weights.

    Args:
        attention: ``layer(..., return_attention=True)`` or one of ``attention_graphs``'.
        top_k: keep the k largest weights per target and head (None: no limit).
        threshold: keep weights >= τ (None: no threshold).
        heads: the heads to keep (None: all).
        renormalize: rescale the kept weights to sum to 1 per target and head.
        num_kv_heads: H_kv for grouped-query models (default H).
        layer: recorded in the result.

    Shapes:
        edge_index [2, E], weights [E, H] -> SparseAttention with K <= N·k·H rows.

    Raises:
        ValueError: a bad ``top_k``, ``threshold``, ``heads`` or ``num_kv_heads``.
    """
    H = attention.num_heads
    chosen = check_sparsify(top_k, threshold, heads, H) or tuple(range(H))
    kv = check_kv_heads(num_kv_heads, H)
    g = attention.graph
    n = g.num_dst if g is not None else int(attention.edge_index.max()) + 1
    order = torch.argsort(attention.edge_index[1], stable=True)  # [E] by target
    ei = attention.edge_index[:, order]  # [2, E]
    degree = torch.bincount(ei[1], minlength=n)  # [N]
    bounds = torch.cumsum(degree, 0) - degree  # [N] first edge of each target
    sel = list(chosen)
    parts = []
    for rows in iter_row_chunks(degree, len(sel)):
        lo = int(bounds[rows.start])
        hi = lo + int(degree[rows.start : rows.stop].sum())
        a = attention.scores[order[lo:hi]][:, sel]  # [e, H']
        w = attention.weights[order[lo:hi]][:, sel]  # [e, H']
        src, dst = ei[0, lo:hi], ei[1, lo:hi]  # [e]
        parts.append(keep_chunk(rows, src, dst, a, w, sel, top_k, threshold, renormalize))
    return assemble(
        parts,
        attention.weights,
        num_nodes=n,
        num_heads=H,
        num_kv_heads=kv,
        lengths=None if g is None else g.lengths,
        heads=None if heads is None else chosen,
        top_k=top_k,
        threshold=threshold,
        renormalized=renormalize,
        layer=layer,
        structure=None if g is None else g.structure,
    )


def check_kv_heads(num_kv_heads: object, num_heads: int) -> int:
    """H_kv (default H); it must divide H.

    Raises:
        ValueError: H_kv is not a positive int dividing H.
    """
    if num_kv_heads is None:
        return num_heads
    if (
        isinstance(num_kv_heads, bool)
        or not isinstance(num_kv_heads, int)
        or num_kv_heads < 1
        or num_heads % num_kv_heads
    ):
        raise ValueError(
            f"num_kv_heads must be a positive int dividing the {num_heads} heads, "
            f"got {num_kv_heads!r}"
        )
    return num_kv_heads


def assemble(
    parts: Sequence[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]], like: Tensor, **info: Any
) -> SparseAttention:
    """Concatenate the chunks of ``keep_chunk`` into one ``SparseAttention``."""
    if parts:
        src, dst, head, a, w = (torch.cat(cols) for cols in zip(*parts, strict=True))
    else:
        src = dst = head = torch.zeros(0, dtype=torch.long, device=like.device)
        a = w = like.new_zeros(0)
    return SparseAttention(torch.stack([src, dst]), head, a, w, **info)
