"""Analyses of attention graphs: rollout, flow, entropy, normalisation, top edges, centrality.

Orientation: ``A[i, j] = Attn_ij`` with row i the query (target) and column j the key (source), as
in the rows of the attention matrix of Abnar & Zuidema (2020). In the exported ``nx.DiGraph`` the
same value sits on the edge j → i (token i attended to token j).

Multi-layer analyses (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020)
use the residual-adjusted matrix of each layer,

    Â_l = rownorm(0.5·A_l + 0.5·I)                     (eq. R1)
    rollout = Â_L · Â_{L-1} ··· Â_1                     (eq. R2)
    flow[i, j] = max-flow from input j to output i in the layered DAG, capacities Â_l   (eq. R3)

NetworkX (and scipy, for PageRank) are imported inside the functions that need them.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from .nn import Attention

if TYPE_CHECKING:
    import networkx as nx

__all__ = [
    "adjusted_matrices",
    "attention_entropy",
    "attention_flow",
    "attention_matrix",
    "attention_rollout",
    "check_weights_sum",
    "pagerank",
    "strength",
    "top_edges",
]

#: ``"mean"`` over heads, one head index, or ``"all"`` heads (where a function allows it)
HeadSpec = int | Literal["mean", "all"]
LayerInput = Attention | Tensor | np.ndarray


def _check_head(head: Any, num_heads: int, *, allow_all: bool = True) -> None:
    """Raise ValueError/TypeError for a head spec that does not fit ``num_heads``."""
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


def _merge_duplicates(
    keys: np.ndarray, scores: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge edges with equal ``keys`` [E], head by head: weights add, scores add in exp domain.

    .. math::
        \\mathrm{Attn} = \\sum_d \\mathrm{Attn}_d, \\qquad \\alpha = \\log \\sum_d \\exp \\alpha_d

    (the one score whose softmax is the summed weight). Returns the unique keys [E'], scores and
    weights [E', H] and the multiplicity ``count`` [E'].
    """
    uniq, inverse, count = np.unique(keys, return_inverse=True, return_counts=True)
    if uniq.size == keys.size:  # the usual case: no duplicates, keep the edge order
        return keys, scores, weights, np.ones(keys.size, dtype=np.int64)
    new_w = np.zeros((uniq.size, weights.shape[1]))  # [E', H]
    np.add.at(new_w, inverse, weights)
    top = np.full((uniq.size, scores.shape[1]), -np.inf)  # [E', H] group max
    np.maximum.at(top, inverse, scores)
    shift = np.where(np.isfinite(top), top, 0.0)  # [E', H]; a group of -inf stays -inf
    total = np.zeros_like(new_w)  # [E', H]
    np.add.at(total, inverse, np.exp(scores - shift[inverse]))
    with np.errstate(divide="ignore"):
        new_s = np.log(total) + shift  # [E', H]
    return uniq, new_s, new_w, count


def _num_nodes(attention: Attention) -> tuple[int, int]:
    g = attention.graph
    if g is not None:
        return g.num_dst, g.num_src
    n = int(attention.edge_index.max()) + 1 if attention.edge_index.numel() else 0
    return n, n


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
    num_dst, num_src = _num_nodes(attention)
    _check_head(head, attention.num_heads)
    ei = attention.edge_index.cpu().numpy()  # [2, E]
    keys = ei[1] * num_src + ei[0]  # [E]
    keys, scores, weights, _ = _merge_duplicates(
        keys,
        attention.scores.detach().double().cpu().numpy(),  # [E, H]
        attention.weights.detach().double().cpu().numpy(),  # [E, H]
    )
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


def adjusted_matrices(
    attentions: Sequence[LayerInput], *, residual: bool = True, head: HeadSpec = "mean"
) -> list[np.ndarray]:
    """Each layer's matrix, residual-adjusted (eq. R1): Â = rownorm(0.5·A + 0.5·I).

    With ``residual=False`` the matrices are returned as they are. Inputs are ``Attention``
    results (reduced with ``head``: ``"mean"`` or an int) or matrices [N, N] (row = query).

    Shapes:
        L inputs -> L arrays [N, N] (float64).

    Raises:
        ValueError: no layers, a non-square matrix, or layers of different sizes.
    """
    if isinstance(attentions, (Attention, Tensor, np.ndarray)):
        raise TypeError("attentions must be a list with one entry per layer (bottom first)")
    if len(attentions) == 0:
        raise ValueError("attentions is empty: pass one Attention or matrix per layer")
    mats: list[np.ndarray] = []
    for layer, a in enumerate(attentions):
        if isinstance(a, Attention):
            _check_head(head, a.num_heads, allow_all=False)
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
        if residual:
            m = 0.5 * m + 0.5 * np.eye(m.shape[0])  # [N, N]  (eq. R1)
            rows = m.sum(1, keepdims=True)  # [N, 1]
            m = m / np.where(rows > 0, rows, 1.0)
        mats.append(m)
    return mats


def attention_rollout(
    attentions: Sequence[LayerInput], *, residual: bool = True, head: HeadSpec = "mean"
) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020, eq. R2): R = Â_L ··· Â_1.

    ``R[i, j]`` is the share of output token i (after the last layer) that comes from input
    token j, following attention through every layer. With one layer and ``residual=False``
    it is that layer's attention matrix.

    Args:
        attentions: one per layer, bottom first: ``Attention`` results or matrices [N, N]
            with row i the query and column j the key.
        residual: use Â = rownorm(0.5·A + 0.5·I) (default True), else A itself.
        head: ``"mean"`` or an int head index, for ``Attention`` inputs.

    Shapes:
        L × [N, N] -> [N, N].
    """
    mats = adjusted_matrices(attentions, residual=residual, head=head)
    out = mats[0]  # [N, N]
    for m in mats[1:]:
        out = m @ out  # [N, N]: later layers multiply from the left
    return out


def attention_flow(
    attentions: Sequence[LayerInput],
    *,
    residual: bool = True,
    head: HeadSpec = "mean",
    targets: Sequence[int] | None = None,
) -> np.ndarray:
    """Attention flow (Abnar & Zuidema 2020, eq. R3), computed with ``nx.maximum_flow_value``.

    ``F[i, j]`` is the maximum flow from input node (layer 0, token j) to output node
    (layer L, token i) in ``ga.layered_graph(...)``, with edge capacity = ``weight`` = Â_l[i, j].
    It costs one max-flow per (i, j) pair: restrict the outputs with ``targets`` for long inputs.

    Args:
        attentions: one per layer, bottom first (``Attention`` results or matrices [N, N]).
        residual: residual-adjust each layer (default True).
        head: ``"mean"`` or an int head index.
        targets: output tokens i to compute (default all); other rows are 0.

    Shapes:
        L × [N, N] -> [N, N].

    Raises:
        ValueError: a target index out of range.
    """
    import networkx as nx

    from .export import layered_graph

    mats = adjusted_matrices(attentions, residual=residual, head=head)
    G = layered_graph(mats, residual=False)
    n, top = mats[0].shape[0], len(mats) * mats[0].shape[0]
    rows = range(n) if targets is None else list(targets)
    for i in rows:
        if isinstance(i, bool) or not 0 <= i < n:
            raise ValueError(f"target {i!r} is out of range for {n} tokens")
    flow = np.zeros((n, n))  # [N, N]
    for i in rows:
        for j in range(n):
            flow[i, j] = nx.maximum_flow_value(G, j, top + i, capacity="weight")
    return flow


def attention_entropy(attention: Attention) -> Tensor:
    """Entropy of each target's attention distribution, per head.

    .. math::
        H_i = -\\sum_{j \\in N(i)} \\mathrm{Attn}_{ij} \\log \\mathrm{Attn}_{ij}  \\quad (0 \\log 0 = 0)

    Duplicate edges count separately (the softmax runs over edges). A target without edges has 0.

    Shapes:
        weights [E, H] -> [N_t, H].
    """
    from torch_geometric.utils import scatter

    if not isinstance(attention, Attention):
        raise TypeError(f"expected a gatattn.Attention, got {type(attention).__name__}")
    w = attention.weights.detach()  # [E, H]
    plogp = torch.special.xlogy(w, w)  # [E, H]
    num_dst = _num_nodes(attention)[0]
    return -scatter(plogp, attention.edge_index[1], dim=0, dim_size=num_dst, reduce="sum")


def check_weights_sum(graph: Attention | nx.DiGraph, *, atol: float = 1e-6) -> float:
    """Check that the weights entering every target sum to 1 (eq. 2), and return the max error.

    Targets with no incoming edges, or whose scores are all -inf, are exempt (they output 0).
    For an ``nx.DiGraph`` the ``weight`` attributes of each node's in-edges are summed.

    Returns:
        max_i |Σ_j Attn_ij − 1| over the checked targets (and heads).

    Raises:
        ValueError: a target whose weights miss 1 by more than ``atol`` (named with its sum).
    """
    import networkx as nx

    if isinstance(graph, Attention):
        from torch_geometric.utils import scatter

        num_dst = _num_nodes(graph)[0]
        dst = graph.edge_index[1]  # [E]
        sums = scatter(graph.weights.detach().double(), dst, 0, dim_size=num_dst)  # [N_t, H]
        live = scatter(torch.isfinite(graph.scores).double(), dst, 0, dim_size=num_dst) > 0
        err = torch.where(live, (sums - 1).abs(), torch.zeros_like(sums))  # [N_t, H]
        if err.numel() == 0:  # no targets
            return 0.0
        worst = int(err.argmax())
        node, h = divmod(worst, sums.size(1))
        value, total = float(err.view(-1)[worst]), float(sums.view(-1)[worst])
        where = f"target {node} (head {h})"
    elif isinstance(graph, nx.DiGraph):
        value, total, where = 0.0, 1.0, ""
        for node, s in graph.in_degree(weight="weight"):
            if graph.in_degree(node) and abs(s - 1) > value:
                value, total, where = abs(s - 1), s, f"node {node!r}"
    else:
        raise TypeError(f"expected an Attention or an nx.DiGraph, got {type(graph).__name__}")
    if value > atol:
        raise ValueError(f"weights entering {where} sum to {total:.9g}, not 1 (atol={atol:g})")
    return value


def top_edges(
    G: nx.DiGraph, k: int = 10, *, weight: str = "weight"
) -> list[tuple[Any, Any, float]]:
    """The ``k`` edges with the largest ``weight``, as ``(u, v, value)``, largest first.

    Raises:
        ValueError: ``k`` < 1, or an edge without the attribute.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    edges = list(G.edges(data=weight))
    missing = next(((u, v) for u, v, w in edges if w is None), None)
    if missing is not None:
        raise ValueError(f"edge {missing[0]!r} -> {missing[1]!r} has no {weight!r} attribute")
    return [(u, v, float(w)) for u, v, w in heapq.nlargest(k, edges, key=lambda e: e[2])]


def pagerank(
    G: nx.DiGraph,
    *,
    follow: Literal["attention", "information"] = "attention",
    alpha: float = 0.85,
    weight: str = "weight",
) -> dict[Any, float]:
    """Weighted PageRank of the tokens, through ``nx.pagerank`` (needs scipy).

    ``follow="attention"`` (default) walks from each query to the keys it attends to, i.e. on
    the reversed graph, where a token's out-weights are its attention row and sum to 1: the
    stationary mass lands on tokens that receive much attention from important tokens.
    ``follow="information"`` walks the exported edges u → v as they are (information flow).

    .. math::
        \\pi = \\alpha P^\\top \\pi + (1 - \\alpha) / N, \\qquad P_{vu} = w(v \\to u) / \\sum_x w(v \\to x)

    Raises:
        ValueError: an unknown ``follow``.
    """
    import networkx as nx

    if follow not in ("attention", "information"):
        raise ValueError(f"follow must be 'attention' or 'information', got {follow!r}")
    walk = G.reverse(copy=False) if follow == "attention" else G
    return dict(nx.pagerank(walk, alpha=alpha, weight=weight))


def strength(
    G: nx.DiGraph, *, direction: Literal["in", "out"] = "out", weight: str = "weight"
) -> dict[Any, float]:
    """Weighted in- or out-degree (strength centrality) of each token.

    ``out``: s_u = Σ_v w(u → v), the total attention that token u receives from all queries.
    ``in``: s_v = Σ_u w(u → v), the attention that token v pays (1 for every normal target).

    Raises:
        ValueError: an unknown ``direction``.
    """
    if direction == "out":
        return {node: float(s) for node, s in G.out_degree(weight=weight)}
    if direction == "in":
        return {node: float(s) for node, s in G.in_degree(weight=weight)}
    raise ValueError(f"direction must be 'in' or 'out', got {direction!r}")
