"""Graph swaps on a converted Hugging Face model: ``graph_fn(lengths)`` placed into one call.

A swap names N(i) on the real tokens of each sequence, numbered as ``ga.pretrained.minilm``
numbers them: the sum(lengths) tokens of all sequences, concatenated, padding removed. One
attention call of the model sees a padded batch instead: B rows of L_k keys (padding, and in a
static cache the empty slots, included) and L_q queries, which are

* every key position (L_q = L_k: an uncached forward), or
* the newest tokens of each row (L_q < L_k: a cached decoding step).

``swap_graph`` evaluates the swap on the *full* key sequence of every row and keeps the rows of
this call's queries, so a cached step attends exactly as the uncached forward does at those
positions:

    N_swap(i) = { j : (j → i) ∈ graph_fn(lengths) } ∩ { j : mask[b, i, j] }

with the intersection taken in i's own row b. An edge of ``graph_fn`` between two sequences is
refused (a ValueError naming it): a swap never connects two batch rows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..graph import TokenGraph

__all__ = ["GraphFn", "query_positions", "swap_graph"]

#: ``graph_fn(lengths) -> TokenGraph`` over sum(lengths) tokens (as ``pretrained.GraphFn``).
GraphFn = Callable[[list[int]], TokenGraph]


def query_positions(
    allowed: Tensor | None, B: int, Lq: int, Lk: int, device: torch.device
) -> Tensor:
    """The key position of every query of one call.

    L_q = L_k: query i is key i. A cached step (L_q < L_k): the last key each query may attend
    (itself, under a causal mask; this also finds the queries inside a static cache's empty
    slots), or, without a mask, the last L_q keys (a dynamic cache). A query row that may attend
    nothing gets -1 (no edges).

    Shapes:
        allowed [B, L_q, L_k] bool or None -> positions [B, L_q] (long, -1 for none).
    """
    if Lq == Lk:
        return torch.arange(Lq, device=device).expand(B, Lq)  # [B, L_q]
    if allowed is None:
        return torch.arange(Lk - Lq, Lk, device=device).expand(B, Lq)  # [B, L_q]
    idx = torch.arange(Lk, device=device)  # [L_k]
    last = torch.where(allowed, idx, -1).amax(-1)  # [B, L_q]
    return last


def _sequences(g: TokenGraph, lengths: list[int]) -> None:
    """Refuse an edge of ``g`` between two sequences of ``lengths``, naming the first one."""
    n = sum(lengths)
    if not isinstance(g, TokenGraph) or (g.num_src, g.num_dst) != (n, n):
        raise ValueError(
            f"graph_fn must return a TokenGraph on {n} nodes (lengths={lengths}, the real "
            f"tokens of each sequence that has any), got {g!r}"
        )
    lens = torch.tensor(lengths, device=g.edge_index.device)  # [B']
    seq = torch.repeat_interleave(torch.arange(len(lengths), device=lens.device), lens)  # [n]
    src, dst = g.edge_index  # [E]
    cross = (seq[src] != seq[dst]).nonzero().flatten()  # [E_cross]
    if cross.numel():
        e = int(cross[0])
        s, d = int(src[e]), int(dst[e])
        a, b = int(seq[s]), int(seq[d])
        starts = [sum(lengths[:k]) for k in range(len(lengths))]
        raise ValueError(
            f"graph_fn returned {cross.numel()} edge(s) between different sequences, the first "
            f"from node {s} (token {s - starts[a]} of sequence {a}) to node {d} (token "
            f"{d - starts[b]} of sequence {b}), lengths={lengths}: a swap never connects two "
            "batch rows; build the graph per sequence (e.g. ga.window_graph(w, lengths=lengths))"
        )


def swap_graph(
    graph_fn: GraphFn,
    valid: Tensor,
    allowed: Tensor | None,
    causal: bool,
    Lq: int,
    window: GraphFn | None = None,
) -> TokenGraph:
    """``graph_fn(lengths)`` on the real tokens, placed into one attention call's padded layout
    and intersected, row by row, with the model's own mask.

    .. math::
        N(i) = \\{ j : (j \\to i) \\in \\mathrm{graph\\_fn}(\\mathrm{lengths}) \\}
        \\cap \\{ j : \\mathrm{mask}[b, i, j] \\}

    ``lengths`` are the real keys of each row that has any (rows of padding only are left out:
    their queries get no edge and output 0, as the converted model gives them without a swap).
    Without a mask, the model's mask is every key of the row (``causal``: j ≤ i).

    Args:
        graph_fn: the swap, ``graph_fn(lengths) -> TokenGraph`` on sum(lengths) nodes.
        valid: the real keys of each row.  allowed: the model's mask, or None.
        causal: without a mask, keep only j ≤ i.  Lq: the queries of this call (the last L_q
            key positions when L_q < L_k, a cached step; ``query_positions``).
        window: the layer's own graph on the real tokens (a sliding window), intersected too.

    Shapes:
        valid [B, L_k] bool, allowed [B, L_q, L_k] bool -> a graph over B·L_k sources and
        B·L_q targets (query i of row b is target b·L_q + i).

    Raises:
        ValueError: ``graph_fn`` returned no TokenGraph on sum(lengths) nodes, or an edge
            between two sequences.
    """
    B, Lk = valid.shape
    device = valid.device
    per_row = [int(n) for n in valid.sum(1).tolist()]
    lengths = [n for n in per_row if n > 0]
    if not lengths:  # padding only: no real token, no edge
        empty = torch.empty(2, 0, dtype=torch.long, device=device)
        return TokenGraph(empty, B * Lk, B * Lq, lengths=[Lq] * B, validate=False)
    g = graph_fn(lengths)
    _sequences(g, lengths)
    if window is not None:  # the layer's own sliding window (modern.window_fn)
        g = g & window(lengths)
    g = g.to(device)
    n = sum(lengths)
    pos = valid.flatten().nonzero().flatten()  # [n] padded index b·L_k + j of each real token
    src, dst = pos[g.edge_index[0]], pos[g.edge_index[1]]  # [E]
    row, js, jd = dst // Lk, src % Lk, dst % Lk  # [E] one row per edge (checked above)
    qpos = query_positions(allowed, B, Lq, Lk, device)  # [B, L_q]
    target = torch.full((B, Lk), -1, dtype=torch.long, device=device)  # [B, L_k] query of a key
    b_idx = torch.arange(B, device=device)[:, None].expand(B, Lq)  # [B, L_q]
    has = qpos >= 0  # [B, L_q]
    target[b_idx[has], qpos[has]] = torch.arange(Lq, device=device).expand(B, Lq)[has]
    t = target[row, jd]  # [E] the query of this call that the edge enters, or -1
    keep = t >= 0  # [E]
    if allowed is not None:
        keep &= allowed[row, t.clamp(min=0), js]  # [E] the model's mask, in the edge's own row
    elif causal:
        keep &= js <= jd  # [E]
    if Lq == Lk and n == B * Lk and bool(keep.all()):  # the mask removes nothing: keep the tags
        return (
            g
            if g.lengths == tuple(per_row) or (B == 1 and g.lengths is None)
            else (TokenGraph(g.edge_index, n, n, lengths=per_row, validate=False))
        )
    ei = torch.stack([src[keep], row[keep] * Lq + t[keep]])  # [2, E']
    return TokenGraph(ei, B * Lk, B * Lq, lengths=[Lq] * B, validate=False)
