"""Attention graphs for NetworkX: export, import and the multi-layer DAG.

The second layer of ``gatattn.inspect``: it builds on ``matrices`` (head choice, duplicate merge,
residual adjustment) and is imported by ``export`` (the graph files) and ``analysis``, never the
other way round.

One layer's result ``ga.Attention`` holds two directed graphs over the tokens, both on the edges
of the TokenGraph (docs/math.md, eqs. 1-2):

    α_ij    = w(i, j)                                  edge attribute ``score``
    Attn_ij = exp(α_ij) / Σ_{k ∈ N(i)} exp(α_ik)       edge attribute ``weight``

An edge u → v of the exported ``nx.DiGraph`` means token v attended to token u (PyG's
source→target flow: information moves from u to v), so the ``weight``s entering each target sum to 1.

Duplicate edges (the same (j, i) pair listed twice in edge_index) become ONE NetworkX edge: the
weights are summed, Attn = Σ_d Attn_d, and the scores are summed in the exponential domain,
α = log Σ_d exp(α_d), which is the one score whose softmax gives that summed weight. The edge
attribute ``count`` says how many edges were merged.

NetworkX is imported inside the functions (it is a dependency, but ``import gatattn`` stays light).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..graph import TokenGraph
from ..result import Attention
from .matrices import HeadSpec, LayerInput, adjusted_matrices, check_head, merged_edges

if TYPE_CHECKING:
    import networkx as nx

__all__ = [
    "EdgeArrays",
    "from_networkx",
    "layered_graph",
    "to_networkx",
]


class EdgeArrays(NamedTuple):
    """What ``from_networkx`` returns.

    Attributes:
        edge_index: LongTensor [2, E], row 0 source j, row 1 target i.
        scores: α [E, H] (float64).
        weights: Attn [E, H] (float64).
        graph: a TokenGraph over the N nodes (``lengths`` restored from the ``sequence`` node
            attribute); its structure tag is left unset, since the edges may have been filtered.
    """

    edge_index: Tensor
    scores: Tensor
    weights: Tensor
    graph: TokenGraph


def _token_graph(attention: Attention, graph: TokenGraph | None) -> TokenGraph:
    if not isinstance(attention, Attention):
        raise TypeError(
            f"expected a gatattn.Attention (layer(..., return_attention=True)), "
            f"got {type(attention).__name__}"
        )
    g = graph if graph is not None else attention.graph
    if g is None:
        g = TokenGraph(attention.edge_index)
    if g.num_edges != attention.edge_index.size(1) or g.num_src != g.num_dst:
        if g.num_src != g.num_dst:
            raise ValueError(
                f"to_networkx exports self-attention graphs; this one is bipartite with "
                f"num_src={g.num_src} != num_dst={g.num_dst}"
            )
        raise ValueError(
            f"graph has {g.num_edges} edges but the attention result has "
            f"{attention.edge_index.size(1)}"
        )
    return g


def _check_tokens(tokens: Sequence[Any] | None, n: int) -> list[str] | None:
    if tokens is None:
        return None
    if isinstance(tokens, str):
        raise TypeError(f"tokens must be a list of strings, got the string {tokens!r}")
    out = [str(t) for t in tokens]
    if len(out) != n:
        raise ValueError(f"got {len(out)} tokens but the graph has {n} nodes")
    return out


def to_networkx(
    attention: Attention,
    *,
    tokens: Sequence[Any] | None = None,
    head: HeadSpec = "mean",
    graph: TokenGraph | None = None,
) -> nx.DiGraph:
    """The attention graph of one layer as an ``nx.DiGraph``, built in bulk from arrays.

    Edge u → v (token v attended to token u) carries ``score`` α_vu and ``weight`` Attn_vu
    (eqs. 1-2) and ``count`` (how many duplicate edges were merged, see the module docstring):

    .. math::
        \\mathrm{weight}(u \\to v) = \\sum_{d:\\,(u, v)} \\mathrm{Attn}_{vu}^{(d)}, \\qquad
        \\mathrm{score}(u \\to v) = \\log \\sum_{d:\\,(u, v)} \\exp \\alpha_{vu}^{(d)}

    Nodes 0..N-1 carry ``index``, ``position`` (within its sequence), ``sequence`` (the batch
    entry of a block-diagonal graph) and ``token`` when ``tokens`` is given. ``G.graph`` records
    ``heads``, ``head``, ``pattern`` (the structure tag, or ``"custom"``) and ``num_sequences``.

    Args:
        attention: the result of ``GraphAttention(..., return_attention=True)``.
        tokens: one label per node (length N).
        head: ``"mean"`` (average over heads), an int head index, or ``"all"`` (the mean as
            ``score``/``weight`` plus per-head ``score_h0``, ``weight_h0``, ...).
        graph: the TokenGraph, when ``attention.graph`` is unset.

    Shapes:
        attention.edge_index [2, E], scores/weights [E, H] -> DiGraph with N nodes, <= E edges.

    Raises:
        TypeError: ``attention`` is not an Attention, or ``tokens`` is a string.
        ValueError: a bad ``head``, a token list of the wrong length, a bipartite graph.
    """
    import networkx as nx

    g = _token_graph(attention, graph)
    n, num_heads = g.num_dst, attention.num_heads
    check_head(head, num_heads)
    labels = _check_tokens(tokens, n)
    keys, scores, weights, count = merged_edges(attention, n)  # [E'], [E', H], [E', H], [E']
    columns: dict[str, np.ndarray] = {}
    if isinstance(head, int):
        columns["score"], columns["weight"] = scores[:, head], weights[:, head]  # [E']
    else:
        columns["score"], columns["weight"] = scores.mean(1), weights.mean(1)  # [E']
    if head == "all":
        for h in range(num_heads):
            columns[f"score_h{h}"], columns[f"weight_h{h}"] = scores[:, h], weights[:, h]
    src, dst = keys % n, keys // n  # [E'] each

    G = nx.DiGraph(
        heads=num_heads,
        head=str(head),
        pattern=g.structure or "custom",
        num_sequences=len(g.lengths) if g.lengths else 1,
    )
    positions, sequence = g.positions().tolist(), g.sequence().tolist()  # [N] each
    node_keys: tuple[str, ...] = ("index", "position", "sequence")
    node_cols: list[list[Any]] = [list(range(n)), positions, sequence]
    if labels is not None:
        node_keys += ("token",)
        node_cols.append(labels)
    G.add_nodes_from(zip(range(n), (dict(zip(node_keys, row)) for row in zip(*node_cols))))
    # one attribute dict per edge, as NetworkX stores them; a dict literal is about twice as fast
    # as dict(zip(keys, row)), which is needed only for the per-head columns of head="all"
    count_list = count.tolist()
    if head == "all":
        names = (*columns, "count")
        rows = zip(*(col.tolist() for col in columns.values()), count_list)
        attrs = [dict(zip(names, row)) for row in rows]  # [E']
    else:
        score, weight = columns["score"].tolist(), columns["weight"].tolist()
        attrs = [
            {"score": a, "weight": w, "count": c} for a, w, c in zip(score, weight, count_list)
        ]  # [E']
    _add_edges_in_bulk(G, src, dst, attrs)
    return G


def _add_edges_in_bulk(
    G: nx.DiGraph,
    src: np.ndarray,
    dst: np.ndarray,
    attrs: list[dict[str, Any]],
) -> None:
    """Add the edges src[e] → dst[e] with attribute dicts ``attrs[e]`` to a new DiGraph G.

    Hand-written, because ``G.add_edges_from`` costs about 2 µs per edge: it copies every
    attribute dict into a fresh one and looks up both endpoints per edge in Python. Here each
    node's successor and predecessor dicts are filled with one C-level ``dict.update(zip(...))``
    over a contiguous slice, a loop over nodes instead of edges, into the same dict-of-dicts
    layout that ``add_edges_from`` builds (``G._succ[u][v] is G._pred[v][u]``, one attribute dict
    per edge). The nodes must exist and the (src, dst) pairs must be unique. A DiGraph without
    that layout falls back to ``add_edges_from``. tests/inspect/test_export.py checks both give equal
    graphs; benchmarks/bench_export.py measures the difference.

    Shapes:
        src, dst [E]; attrs: E dicts.
    """
    succ, pred = getattr(G, "_succ", None), getattr(G, "_pred", None)
    if type(G) is not _digraph_type() or not isinstance(succ, dict) or not isinstance(pred, dict):
        G.add_edges_from(zip(src.tolist(), dst.tolist(), attrs))
        return
    for fill, by, other in ((pred, dst, src), (succ, src, dst)):
        order = np.argsort(by, kind="stable")  # [E] edges grouped by this endpoint
        nodes, starts = np.unique(by[order], return_index=True)  # [U], [U]
        ends = np.append(starts[1:], order.size).tolist()
        ordered_other = other[order].tolist()  # [E]
        ordered_attrs = [attrs[e] for e in order.tolist()]  # [E]
        for node, lo, hi in zip(nodes.tolist(), starts.tolist(), ends):
            fill[node].update(zip(ordered_other[lo:hi], ordered_attrs[lo:hi]))


def _digraph_type() -> type:
    import networkx as nx

    return nx.DiGraph


def _node_order(G: nx.DiGraph) -> dict[Any, int]:
    """Node -> index: the ``index`` attribute when every node has one, else integer node ids."""
    nodes = list(G.nodes(data="index"))
    if nodes and all(idx is not None for _, idx in nodes):
        order = {node: int(idx) for node, idx in nodes}
    else:
        bad = [node for node, _ in nodes if isinstance(node, bool) or not isinstance(node, int)]
        if bad:
            raise ValueError(
                f"node {bad[0]!r} has no 'index' attribute and is not an int; from_networkx needs "
                "integer nodes 0..N-1 or an 'index' attribute on every node"
            )
        order = {node: node for node, _ in nodes}
    if sorted(order.values()) != list(range(len(order))):
        raise ValueError(
            f"node indices must be 0..{len(order) - 1}, each once; got {sorted(order.values())[:10]}"
        )
    return order


def from_networkx(G: nx.DiGraph) -> EdgeArrays:
    """The inverse of ``to_networkx``: edge_index [2, E], scores and weights [E, H] back.

    H is the number of ``weight_h<k>`` attributes when the graph was exported with
    ``head="all"``, else 1 (the ``score``/``weight`` attributes). Nodes are ordered by their
    ``index`` attribute (files read back from GraphML/GEXF have string ids), or must be the
    integers 0..N-1. Edges come out sorted by target, then source (the order of
    ``ga.complete_graph``), whatever order NetworkX holds them in.

    Shapes:
        G with N nodes, E edges -> edge_index [2, E], scores [E, H], weights [E, H].

    Raises:
        TypeError: ``G`` is not a directed NetworkX graph.
        ValueError: an edge lacks ``weight`` or ``score`` (or a per-head one), or bad node ids.
    """
    import networkx as nx

    if not isinstance(G, nx.DiGraph) or G.is_multigraph():
        raise TypeError(f"from_networkx needs an nx.DiGraph, got {type(G).__name__}")
    order = _node_order(G)
    edges = list(G.edges(data=True))
    first = edges[0][2] if edges else {}
    num_heads = sum(1 for k in first if k.startswith("weight_h"))
    names = (
        [(f"score_h{h}", f"weight_h{h}") for h in range(num_heads)]
        if num_heads
        else [("score", "weight")]
    )
    wanted = [name for pair in names for name in pair]
    table = np.empty((len(edges), len(wanted)))  # [E, 2H]
    for e, (u, v, data) in enumerate(edges):  # one dict per edge: NetworkX stores it that way
        try:
            table[e] = [data[name] for name in wanted]
        except KeyError as err:
            raise ValueError(
                f"edge {u!r} -> {v!r} has no {err.args[0]!r} attribute; from_networkx needs "
                f"{wanted} on every edge (export with ga.to_networkx)"
            ) from None
    src = [order[u] for u, _, _ in edges]
    dst = [order[v] for _, v, _ in edges]
    edge_index = torch.tensor([src, dst], dtype=torch.long).view(2, -1)  # [2, E]
    n = len(order)
    perm = torch.argsort(edge_index[1] * n + edge_index[0])  # [E] by target, then source
    edge_index = edge_index[:, perm]  # [2, E]
    t = torch.from_numpy(table)[perm]  # [E, 2H]
    sequence = [0] * n
    for node, seq in G.nodes(data="sequence"):
        sequence[order[node]] = int(seq or 0)
    lengths = np.bincount(sequence).tolist() if n and max(sequence) > 0 else None
    graph = TokenGraph(edge_index, n, n, lengths=lengths)
    return EdgeArrays(edge_index, t[:, 0::2], t[:, 1::2], graph)


def layered_graph(
    attentions: Sequence[LayerInput],
    *,
    residual: bool = True,
    head: HeadSpec = "mean",
    tokens: Sequence[Any] | None = None,
) -> nx.DiGraph:
    """The (L+1)·N-node attention DAG of Abnar & Zuidema (2020), one node per token and layer.

    Layer l's matrix A_l [N, N] (row = query i, column = key j; duplicates summed, heads
    reduced by ``head``) becomes, with the residual connection,

    .. math::
        \\hat A_l = \\mathrm{rownorm}(0.5\\,A_l + 0.5\\,I)  \\quad (\\hat A_l = A_l \\text{ if not residual})

    and the edge (l, j) → (l+1, i) gets ``weight`` \\hat A_l[i, j] for every non-zero entry.
    Node ``l·N + i`` carries ``layer`` l, ``index`` i and ``token``. Layer 0 is the input.
    Max-flow on this graph (capacity = ``weight``) is attention flow (``ga.attention_flow``).

    Reference: S. Abnar and W. Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020.

    Args:
        attentions: one per layer, bottom first: ``Attention`` results or matrices [N, N].
        residual: add the identity and renormalise the rows (default True).
        head: ``"mean"`` or an int head index, for ``Attention`` inputs.
        tokens: one label per token (length N).

    Shapes:
        L matrices [N, N] -> DiGraph with (L+1)·N nodes.
    """
    import networkx as nx

    mats = adjusted_matrices(attentions, residual=residual, head=head)  # L × [N, N]
    n = mats[0].shape[0]
    labels = _check_tokens(tokens, n)
    G = nx.DiGraph(layers=len(mats), residual=residual, head=str(head))
    for layer in range(len(mats) + 1):
        attrs: list[dict[str, Any]] = [{"layer": layer, "index": i} for i in range(n)]
        if labels is not None:
            for a, tok in zip(attrs, labels):
                a["token"] = tok
        G.add_nodes_from(zip(range(layer * n, (layer + 1) * n), attrs))
    for layer, mat in enumerate(mats):
        dst, src = np.nonzero(mat)  # [E_l] each: row = query i, column = key j
        G.add_weighted_edges_from(
            zip(
                (src + layer * n).tolist(),
                (dst + (layer + 1) * n).tolist(),
                mat[dst, src].tolist(),
            )
        )
    return G
