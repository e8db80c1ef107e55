"""Attention graphs in files: ``write_graph`` and ``read_graph`` (GraphML, GEXF, JSON).

The third layer of ``gatattn.inspect``: it writes the ``nx.DiGraph`` that ``graphs`` builds
(``to_networkx``, ``layered_graph``) with NetworkX's own writers, and reads it back. It also
re-exports the NetworkX conversions of ``graphs`` under this module's name, the import path
they had before the split (``gatattn.inspect.export.to_networkx``).

Strings that XML cannot hold are escaped losslessly on the way out and unescaped on the way in
(``gatattn.inspect.xmltext``). NetworkX is imported inside the functions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from inspect import signature
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..result import Attention
from .graphs import EdgeArrays, from_networkx, layered_graph, to_networkx
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
