"""Attention graphs for NetworkX: export, import, files and the multi-layer DAG.

The second layer of ``gatattn.inspect``: it builds on ``matrices`` (head choice, duplicate merge,
residual adjustment) and is imported by ``analysis`` and ``plot``, never the other way round.

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

import json
from collections.abc import Callable, Sequence
from inspect import signature
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..graph import TokenGraph
from ..nn import Attention
from .matrices import HeadSpec, LayerInput, adjusted_matrices, check_head, merged_edges
from .xmltext import escape_xml_text, unescape_xml_text

if TYPE_CHECKING:
    import networkx as nx

__all__ = [
    "MAX_WRITE_EDGES",
    "EdgeArrays",
    "check_write_size",
    "from_networkx",
    "layered_graph",
    "read_graph",
    "to_networkx",
    "write_graph",
]

#: ``write_graph`` refuses graphs with more edges than this unless ``allow_large=True``
#: (a 316-token complete graph; a GraphML file of 100k edges is about 15 MB).
MAX_WRITE_EDGES = 100_000

WRITERS = (".graphml", ".gexf", ".json")


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


def write_graph(
    graph: nx.DiGraph | Attention,
    path: str | Path,
    *,
    allow_large: bool = False,
    **kwargs: Any,
) -> Path:
    """Write an attention graph with NetworkX's own writers, chosen by the file suffix.

    ``.graphml`` (``nx.write_graphml``), ``.gexf`` (``nx.write_gexf``; GEXF keeps node and
    edge attributes but not ``G.graph``), or ``.json`` (``nx.node_link_data``, read back with
    ``nx.node_link_graph(data, edges="edges")``). An ``Attention`` is exported first with
    ``to_networkx(graph, **kwargs)``. Graphs with more than ``MAX_WRITE_EDGES`` edges are
    refused unless ``allow_large=True``. The file holds the graph as ``to_networkx`` builds it:
    edge u → v with ``score`` α_vu and ``weight`` Attn_vu (eqs. 1-2).

    Args:
        graph: an ``nx.DiGraph`` (``ga.to_networkx``, ``ga.layered_graph``) or an ``Attention``.
        path: the file; its suffix picks the format.
        allow_large: write graphs above ``MAX_WRITE_EDGES`` too.
        **kwargs: passed to ``to_networkx`` when ``graph`` is an ``Attention``.

    Shapes:
        DiGraph with N nodes, E <= MAX_WRITE_EDGES edges -> one file.

    Returns:
        the path written.

    Strings that XML cannot hold (control characters, lone surrogates, ``\r``) are written
    with a lossless escape in GraphML and GEXF (``gatattn.inspect.xmltext``); ``read_graph``
    reverses it, and every other string reads back identical through NetworkX's readers.

    Raises:
        ValueError: an unknown suffix, or a graph above the size limit.
    """
    import networkx as nx

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITERS:
        raise ValueError(
            f"unknown graph file suffix {path.suffix!r} in {str(path)!r}; use one of {WRITERS}"
        )
    G = to_networkx(graph, **kwargs) if isinstance(graph, Attention) else graph
    if not isinstance(G, nx.Graph):
        raise TypeError(f"write_graph needs an nx graph or an Attention, got {type(G).__name__}")
    check_write_size(G.number_of_edges(), allow_large)
    if suffix == ".graphml":
        nx.write_graphml(_map_strings(G, escape_xml_text), path)
    elif suffix == ".gexf":
        nx.write_gexf(_map_strings(G, escape_xml_text), path)
    else:
        params = signature(nx.node_link_data).parameters
        key = {"edges": "edges"} if "edges" in params else {"link": "edges"}  # NetworkX < 3.4
        path.write_text(json.dumps(nx.node_link_data(G, **key)))
    return path


def check_write_size(num_edges: int, allow_large: bool) -> None:
    """Raise the ``write_graph`` size error for ``num_edges`` before anything is computed
    (the CLI checks N·N edges of a complete graph up front)."""
    if num_edges > MAX_WRITE_EDGES and not allow_large:
        raise ValueError(
            f"graph has {num_edges} edges, more than MAX_WRITE_EDGES={MAX_WRITE_EDGES}; "
            "pass allow_large=True to write it anyway, or filter the edges first"
        )


def read_graph(path: str | Path) -> nx.DiGraph:
    """Read a file written by ``write_graph``, with NetworkX's reader for its suffix, and undo
    the XML escape of its strings (``unescape_xml_text``), so every token reads back identical.

    GraphML and GEXF node ids come back as strings ("0", "1", ...), as NetworkX reads them;
    ``from_networkx`` orders nodes by their ``index`` attribute.

    Raises:
        ValueError: an unknown suffix.
    """
    import networkx as nx

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".graphml":
        return _map_strings(nx.read_graphml(path), unescape_xml_text)
    if suffix == ".gexf":
        return _map_strings(nx.read_gexf(path), unescape_xml_text)
    if suffix == ".json":
        return nx.node_link_graph(json.loads(path.read_text()), edges="edges")
    raise ValueError(
        f"unknown graph file suffix {path.suffix!r} in {str(path)!r}; use one of {WRITERS}"
    )


def _map_strings(G: nx.DiGraph, fn: Callable[[str], str]) -> nx.DiGraph:
    """G with ``fn`` applied to every string attribute value and string node id; G itself
    when nothing changes (no copy for the common case of plain tokens)."""

    def attrs(d: dict[str, Any]) -> dict[str, Any] | None:
        new = {k: fn(v) for k, v in d.items() if isinstance(v, str) and fn(v) != v}
        return {**d, **new} if new else None

    nodes = {u: attrs(d) for u, d in G.nodes(data=True)}
    edges = {(u, v): attrs(d) for u, v, d in G.edges(data=True)}
    ids = {u: fn(u) for u in G if isinstance(u, str) and fn(u) != u}
    graph = attrs(G.graph)
    if not ids and graph is None and not any(nodes.values()) and not any(edges.values()):
        return G
    H = G.__class__()
    H.graph.update(graph or G.graph)
    H.add_nodes_from((ids.get(u, u), nodes[u] or d) for u, d in G.nodes(data=True))
    H.add_edges_from(
        (ids.get(u, u), ids.get(v, v), edges[u, v] or d) for u, v, d in G.edges(data=True)
    )
    return H


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
