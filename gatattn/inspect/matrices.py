"""Attention -> arrays: head choice, duplicate-edge merge, residual adjustment, dense matrices.

The base layer of ``gatattn.inspect``: it imports nothing else from the package's inspection
modules. Orientation: ``A[i, j] = Attn_ij`` with row i the query (target) and column j the key
(source), as in the rows of the attention matrix of Abnar & Zuidema (2020).

One layer's result holds, per edge j → i and head h (docs/math.md, eqs. 1-2),

    α_ij    = w(i, j)                                  ``Attention.scores`` [E, H]
    Attn_ij = exp(α_ij) / Σ_{k ∈ N(i)} exp(α_ik)       ``Attention.weights`` [E, H]

Duplicate edges (the same (j, i) pair listed twice) merge into one entry: weights add, and
scores add in the exponential domain, α = log Σ_d exp(α_d), the one score whose softmax is the
summed weight. Multi-layer analyses use the residual-adjusted matrix of each layer,

    Â_l = rownorm(0.5·A_l + 0.5·I)                     (eq. R1)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..result import Attention

__all__ = [
    "HeadSpec",
    "LayerInput",
    "MergedEdges",
    "adjusted_matrices",
    "attention_matrix",
    "check_head",
    "merge_duplicates",
    "merged_edges",
    "node_counts",
    "residual_adjust",
]

#: ``"mean"`` over heads, one head index, or ``"all"`` heads (where a function allows it)
HeadSpec = int | Literal["mean", "all"]
#: one layer of a multi-layer analysis: an ``Attention`` result or a matrix [N, N] (row = query)
LayerInput = Attention | Tensor | np.ndarray


class MergedEdges(NamedTuple):
    """What ``merge_duplicates`` and ``merged_edges`` return (unpacks as a 4-tuple).

    Attributes:
        keys: the unique edge keys [E'] (``target · num_src + source`` for ``merged_edges``).
        scores: α [E', H] (float64), merged as log Σ exp.
        weights: Attn [E', H] (float64), summed.
        multiplicity: how many edges were merged into each one [E'] (int64).
    """

    keys: np.ndarray
    scores: np.ndarray
    weights: np.ndarray
    multiplicity: np.ndarray


def check_head(head: Any, num_heads: int, *, allow_all: bool = True) -> None:
    """Check a head spec: ``"mean"``, ``"all"`` (if ``allow_all``) or an int in [0, num_heads).

    Raises:
        TypeError: ``head`` is neither one of the names nor an int (a bool is not an int here).
        ValueError: an unknown name, or an index out of range (the message names the range).
    """
    named = ("mean", "all") if allow_all else ("mean",)
    if isinstance(head, str):
        if head not in named:
            raise ValueError(f"head must be one of {named} or an int, got {head!r}")
        return
    if isinstance(head, bool) or not isinstance(head, (int, np.integer)):
        raise TypeError(f"head must be one of {named} or an int, got {type(head).__name__}")
    if not 0 <= head < num_heads:
        raise ValueError(
            f"head {head} is out of range: the layer has {num_heads} heads (0..{num_heads - 1})"
        )


def merge_duplicates(keys: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> MergedEdges:
    """Merge edges with equal ``keys``, head by head: weights add, scores add in exp domain.

    .. math::
        \\mathrm{Attn} = \\sum_d \\mathrm{Attn}_d, \\qquad \\alpha = \\log \\sum_d \\exp \\alpha_d

    (the one score whose softmax is the summed weight). A group whose scores are all -inf
    stays -inf. Without duplicates the inputs come back unchanged, in their order; otherwise
    the keys come back sorted.

    Shapes:
        keys [E], scores [E, H], weights [E, H] -> keys [E'], scores [E', H], weights [E', H],
        multiplicity [E'].
    """
    uniq, inverse, count = np.unique(keys, return_inverse=True, return_counts=True)
    if uniq.size == keys.size:  # the usual case: no duplicates, keep the edge order
        return MergedEdges(keys, scores, weights, np.ones(keys.size, dtype=np.int64))
    new_w = np.zeros((uniq.size, weights.shape[1]))  # [E', H]
    np.add.at(new_w, inverse, weights)
    top = np.full((uniq.size, scores.shape[1]), -np.inf)  # [E', H] group max
    np.maximum.at(top, inverse, scores)
    shift = np.where(np.isfinite(top), top, 0.0)  # [E', H]; a group of -inf stays -inf
    total = np.zeros_like(new_w)  # [E', H]
    np.add.at(total, inverse, np.exp(scores - shift[inverse]))
    with np.errstate(divide="ignore"):
        new_s = np.log(total) + shift  # [E', H]
    return MergedEdges(uniq, new_s, new_w, count)


def node_counts(attention: Attention) -> tuple[int, int]:
    """``(num_dst, num_src)``: from ``attention.graph``, else 1 + the largest index in edge_index.

    Shapes:
        edge_index [2, E] -> two ints (N_t, N_s).
    """
    g = attention.graph
    if g is not None:
        return g.num_dst, g.num_src
    n = int(attention.edge_index.max()) + 1 if attention.edge_index.numel() else 0
    return n, n


def merged_edges(attention: Attention, num_src: int) -> MergedEdges:
    """One layer's edges as float64 arrays, duplicates merged (``merge_duplicates``).

    Edge j → i gets the key ``i · num_src + j`` (target-major), so ``key % num_src`` is the
    source and ``key // num_src`` the target.

    Shapes:
        edge_index [2, E], scores/weights [E, H] -> keys [E'], scores/weights [E', H],
        multiplicity [E'].
    """
    ei = attention.edge_index.cpu().numpy()  # [2, E]
    return merge_duplicates(
        ei[1] * num_src + ei[0],  # [E] target-major key of (source, target)
        attention.scores.detach().double().cpu().numpy(),  # [E, H]
        attention.weights.detach().double().cpu().numpy(),  # [E, H]
    )


def attention_matrix(
    attention: Attention,
    *,
    head: HeadSpec = "mean",
    which: Literal["weight", "score"] = "weight",
    fill: float | None = None,
) -> np.ndarray:
    """The dense matrix of one layer: ``M[i, j]`` for query (target) i and key (source) j.

    ``which="weight"`` gives Attn_ij (eq. 2), summing duplicate edges; ``which="score"`` gives
    α_ij (eq. 1), merging duplicates as log Σ exp. Entries with no edge hold ``fill`` (default
    0 for weights, NaN for scores). ``head="mean"`` averages the heads' matrices.

    Shapes:
        edge_index [2, E], weights [E, H] -> [N_t, N_s], or [H, N_t, N_s] for ``head="all"``.

    Raises:
        TypeError: ``attention`` is not an Attention.  ValueError: a bad ``head`` or ``which``.
    """
    if not isinstance(attention, Attention):
        raise TypeError(f"expected a gatattn.Attention, got {type(attention).__name__}")
    if which not in ("weight", "score"):
        raise ValueError(f"which must be 'weight' or 'score', got {which!r}")
    num_dst, num_src = node_counts(attention)
    check_head(head, attention.num_heads)
    keys, scores, weights, _ = merged_edges(attention, num_src)  # [E'], [E', H], [E', H]
    values = weights if which == "weight" else scores  # [E', H]
    if fill is None:
        fill = 0.0 if which == "weight" else float("nan")
    flat = np.full((values.shape[1], num_dst * num_src), fill)  # [H, N_t·N_s]
    flat[:, keys] = values.T
    dense = flat.reshape(-1, num_dst, num_src)  # [H, N_t, N_s]
    if head == "all":
        return dense
    if head == "mean":
        return dense.mean(0)  # [N_t, N_s]
    return dense[int(head)]  # [N_t, N_s]


def residual_adjust(matrix: np.ndarray) -> np.ndarray:
    """The residual-adjusted matrix of one layer (eq. R1).

    .. math::
        \\hat A = \\mathrm{rownorm}(0.5\\,A + 0.5\\,I), \\qquad
        \\mathrm{rownorm}(M)_{ij} = M_{ij} / \\textstyle\\sum_k M_{ik}

    A row that sums to 0 is left as it is (never NaN).

    Shapes:
        [N, N] -> [N, N] (float64).
    """
    m = 0.5 * np.asarray(matrix, dtype=np.float64) + 0.5 * np.eye(matrix.shape[0])  # [N, N]
    rows = m.sum(1, keepdims=True)  # [N, 1]
    return m / np.where(rows > 0, rows, 1.0)  # [N, N]


def adjusted_matrices(
    attentions: Sequence[LayerInput], *, residual: bool = True, head: HeadSpec = "mean"
) -> list[np.ndarray]:
    """Each layer's matrix, residual-adjusted (eq. R1): Â = rownorm(0.5·A + 0.5·I).

    With ``residual=False`` the matrices are returned as they are. Inputs are ``Attention``
    results (reduced with ``head``: ``"mean"`` or an int) or matrices [N, N] (row = query).

    Shapes:
        L inputs -> L arrays [N, N] (float64).

    Raises:
        TypeError: a single layer instead of a list.
        ValueError: no layers, a bad ``head``, a non-square matrix, or layers of different sizes.
    """
    if isinstance(attentions, (Attention, Tensor, np.ndarray)):
        raise TypeError("attentions must be a list with one entry per layer (bottom first)")
    if len(attentions) == 0:
        raise ValueError("attentions is empty: pass one Attention or matrix per layer")
    mats: list[np.ndarray] = []
    for layer, a in enumerate(attentions):
        if isinstance(a, Attention):
            check_head(head, a.num_heads, allow_all=False)
            m = attention_matrix(a, head=head)  # [N, N]
        else:
            m = torch.as_tensor(a).detach().double().cpu().numpy()  # [N, N]
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(
                f"layer {layer}: attention matrix must be square [N, N], got {list(m.shape)}"
            )
        if mats and m.shape != mats[0].shape:
            raise ValueError(
                f"layer {layer} has {m.shape[0]} tokens but layer 0 has {mats[0].shape[0]}"
            )
        mats.append(residual_adjust(m) if residual else m)  # [N, N]  (eq. R1)
    return mats
