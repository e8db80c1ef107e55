"""Analyses of attention graphs: rollout, flow, entropy, normalisation, top edges, centrality.

The third layer of ``gatattn.inspect``: it builds on ``matrices`` (dense and residual-adjusted
matrices) and ``export`` (the layered DAG that attention flow runs on).

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

from ..result import Attention
from .graphs import layered_graph
from .matrices import HeadSpec, LayerInput, adjusted_matrices, node_counts

if TYPE_CHECKING:
    import networkx as nx

__all__ = [
    "attention_entropy",
    "attention_flow",
    "attention_rollout",
    "check_weights_sum",
    "pagerank",
    "strength",
    "top_edges",
]


def attention_rollout(
    attentions: Sequence[LayerInput], *, residual: bool = True, head: HeadSpec = "mean"
) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020, eq. R2).

    .. math::
        R = \\hat A_L \\hat A_{L-1} \\cdots \\hat A_1, \\qquad
        \\hat A_l = \\mathrm{rownorm}(0.5\\,A_l + 0.5\\,I) \\quad (A_l \\text{ if not residual})

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

    .. math::
        F_{ij} = \\mathrm{maxflow}\\big((0, j) \\to (L, i)\\big), \\qquad
        \\mathrm{cap}\\big((l-1, k) \\to (l, m)\\big) = \\hat A_l[m, k]

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
    num_dst = node_counts(attention)[0]
    return -scatter(plogp, attention.edge_index[1], dim=0, dim_size=num_dst, reduce="sum")


def check_weights_sum(graph: Attention | nx.DiGraph, *, atol: float = 1e-6) -> float:
    """Check that the weights entering every target sum to 1 (eq. 2), and return the max error.

    .. math::
        \\mathrm{err} = \\max_{i, h} \\Big| \\sum_{j \\in N(i)} \\mathrm{Attn}_{ij}^{(h)} - 1 \\Big|

    Targets with no incoming edges, or whose scores are all -inf, are exempt (they output 0).
    For an ``nx.DiGraph`` the ``weight`` attributes of each node's in-edges are summed.

    Args:
        graph: an ``Attention`` result, or an ``nx.DiGraph`` from ``ga.to_networkx``.
        atol: the largest error accepted (default 1e-6).

    Shapes:
        weights [E, H] (or a DiGraph with E edges) -> a float.

    Returns:
        max_i |Σ_j Attn_ij − 1| over the checked targets (and heads).

    Raises:
        ValueError: a target whose weights miss 1 by more than ``atol`` (named with its sum).
    """
    import networkx as nx

    if isinstance(graph, Attention):
        from torch_geometric.utils import scatter

        num_dst = node_counts(graph)[0]
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

    .. math::
        \\mathrm{top}_k = \\operatorname{arg\\,top\\text{-}k}_{(u \\to v) \\in E}\\; w(u \\to v)

    Args:
        G: an attention graph (``ga.to_networkx``, ``ga.layered_graph``).
        k: how many edges (default 10).
        weight: the edge attribute to rank by.

    Shapes:
        DiGraph with E edges -> min(k, E) tuples.

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

    Args:
        G: an attention graph from ``ga.to_networkx``.
        follow: ``"attention"`` (query -> key, default) or ``"information"`` (u -> v).
        alpha: the damping factor (default 0.85).
        weight: the edge attribute that weights the walk.

    Shapes:
        DiGraph with N nodes -> N floats summing to 1.

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

    .. math::
        s^{\\mathrm{out}}_u = \\sum_v w(u \\to v), \\qquad s^{\\mathrm{in}}_v = \\sum_u w(u \\to v)

    ``out``: the total attention that token u receives from all queries.
    ``in``: the attention that token v pays (1 for every normal target).

    Args:
        G: an attention graph from ``ga.to_networkx``.
        direction: ``"out"`` (default) or ``"in"``.
        weight: the edge attribute to sum.

    Shapes:
        DiGraph with N nodes -> N floats.

    Raises:
        ValueError: an unknown ``direction``.
    """
    if direction == "out":
        return {node: float(s) for node, s in G.out_degree(weight=weight)}
    if direction == "in":
        return {node: float(s) for node, s in G.in_degree(weight=weight)}
    raise ValueError(f"direction must be 'in' or 'out', got {direction!r}")
