"""Streaming writers for sparse attention graphs: edges are appended to the file as they come.

A ``SparseAttention`` (``gatattn.inspect.sparse``) holds one row per kept (edge, head) pair. Its
file is a directed multigraph over the N tokens: edge u → v (token v attended to token u) once
per head that kept it, with the attributes

    head     h, the query head          score    α^h_vu (eq. 1)
    kv_head  h // (H / H_kv)            weight   Attn^h_vu (eq. 2; not renormalised unless asked)

and the graph-level metadata of ``SparseAttention.metadata()`` (layer, heads, num_kv_heads,
kv_group_size, extracted_heads, kv_head_of, top_k, threshold, renormalized, pattern...). Nodes
carry ``index``, ``position``, ``sequence`` and ``token``. Three formats, by suffix:

    .graphml   read with ``nx.read_graphml`` (a MultiDiGraph when a pair is kept by two heads)
    .json      node-link JSON: ``nx.node_link_graph(json.load(f), edges="edges")``
    .tsv       an edge list, "source target head kv_head score weight" per line, after
               ``#`` lines that hold the metadata and the tokens as JSON:
               ``nx.read_edgelist(path, create_using=nx.MultiDiGraph, nodetype=int,
               data=EDGE_COLUMNS[2:], delimiter="\\t")``

Why not NetworkX's writers: ``write_graphml``, ``write_gexf``, ``generate_edgelist`` and
``node_link_data`` all take a whole ``nx.Graph``, which stores one Python dict per edge (a few
hundred bytes each); a long context's graph would be built in memory before the first byte is
written. These writers never build it: they write the header, then each chunk of edges as text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from xml.sax.saxutils import escape as xml_escape
from xml.sax.saxutils import quoteattr

from torch import Tensor

from .sparse import SparseAttention
from .xmltext import escape_xml_text

__all__ = ["EDGE_COLUMNS", "STREAM_FORMATS", "SparseGraphWriter", "write_sparse"]

#: The formats that ``write_sparse`` streams, by suffix.
STREAM_FORMATS = (".graphml", ".json", ".tsv")
#: The columns of the edge-list format, with their types.
EDGE_COLUMNS: tuple[tuple[str, type], ...] = (
    ("source", int),
    ("target", int),
    ("head", int),
    ("kv_head", int),
    ("score", float),
    ("weight", float),
)
_GRAPHML_TYPES = {bool: "boolean", int: "int", float: "double", str: "string"}
_NODE_KEYS: tuple[tuple[str, type], ...] = (
    ("index", int),
    ("position", int),
    ("sequence", int),
    ("token", str),
)


def _positions(n: int, lengths: Sequence[int] | None) -> tuple[list[int], list[int]]:
    """(position within its sequence, sequence id) of each of the n nodes."""
    seq = list(lengths) if lengths else [n]
    pos = [p for m in seq for p in range(m)]
    sid = [s for s, m in enumerate(seq) for _ in range(m)]
    return pos, sid


class SparseGraphWriter:
    """Write one sparse attention graph chunk by chunk (a context manager).

    ``write_edges`` appends edges to the open file; ``close`` writes the closing lines. Memory
    is O(N + chunk), whatever the number of edges.

    Args:
        path: the file; its suffix picks the format (``STREAM_FORMATS``).
        num_nodes: N.  metadata: graph-level values (str, int, float or bool).
        tokens: one label per node (optional).  lengths: tokens per sequence (optional).

    Raises:
        ValueError: an unknown suffix, or a token list that is not N long.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        num_nodes: int,
        metadata: dict[str, Any],
        tokens: Sequence[str] | None = None,
        lengths: Sequence[int] | None = None,
    ) -> None:
        self.path = Path(path)
        self.kind = self.path.suffix.lower()
        if self.kind not in STREAM_FORMATS:
            raise ValueError(
                f"unknown graph file suffix {self.path.suffix!r} in {str(self.path)!r}; the "
                f"streaming writer writes {STREAM_FORMATS}"
            )
        if tokens is not None and len(tokens) != num_nodes:
            raise ValueError(f"got {len(tokens)} tokens for a graph of {num_nodes} nodes")
        self.num_edges = 0
        self._file: IO[str] = self.path.open("w", encoding="utf-8")
        pos, sid = _positions(num_nodes, lengths)
        nodes = [
            {"index": i, "position": pos[i], "sequence": sid[i]}
            | ({} if tokens is None else {"token": str(tokens[i])})
            for i in range(num_nodes)
        ]
        getattr(self, f"_head_{self.kind[1:]}")(metadata, nodes)

    # ------------------------------------------------------------------ headers
    def _head_graphml(self, metadata: dict[str, Any], nodes: list[dict[str, Any]]) -> None:
        f = self._file
        f.write(
            '<?xml version="1.0" encoding="utf-8"?>\n'
            '<graphml xmlns="http://graphml.graphdrawing.org/xmlns" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'xsi:schemaLocation="http://graphml.graphdrawing.org/xmlns '
            'http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd">\n'
        )
        node_keys = [(k, t) for k, t in _NODE_KEYS if not nodes or k in nodes[0]]
        keys = [("graph", k, type(v)) for k, v in metadata.items()]
        keys += [("node", k, t) for k, t in node_keys]
        keys += [("edge", k, t) for k, t in EDGE_COLUMNS[2:]]
        for i, (where, name, typ) in enumerate(keys):
            f.write(
                f'  <key id="d{i}" for="{where}" attr.name={quoteattr(name)} '
                f'attr.type="{_GRAPHML_TYPES[typ]}" />\n'
            )
        self._key = {(where, name): f"d{i}" for i, (where, name, _) in enumerate(keys)}
        f.write('  <graph edgedefault="directed">\n')
        for name, value in metadata.items():
            f.write(f'    <data key="{self._key["graph", name]}">{_xml_value(value)}</data>\n')
        for node in nodes:
            data = "".join(
                f'<data key="{self._key["node", k]}">{_xml_value(v)}</data>'
                for k, v in node.items()
            )
            f.write(f'    <node id="{node["index"]}">{data}</node>\n')
        self._edge_keys = [self._key["edge", name] for name, _ in EDGE_COLUMNS[2:]]

    def _head_json(self, metadata: dict[str, Any], nodes: list[dict[str, Any]]) -> None:
        head = {"directed": True, "multigraph": True, "graph": metadata}
        text = json.dumps(head)[:-1]  # without the closing brace
        nodes_text = ", ".join(json.dumps({"id": n["index"], **n}) for n in nodes)
        self._file.write(f'{text}, "nodes": [{nodes_text}], "edges": [')

    def _head_tsv(self, metadata: dict[str, Any], nodes: list[dict[str, Any]]) -> None:
        f = self._file
        f.write(f"# gatattn sparse attention graph {json.dumps(metadata)}\n")
        f.write(f"# nodes {json.dumps([n.get('token', n['index']) for n in nodes])}\n")
        f.write("# " + "\t".join(name for name, _ in EDGE_COLUMNS) + "\n")

    # ------------------------------------------------------------------ edges
    def write_edges(
        self, edge_index: Tensor, head: Tensor, kv_head: Tensor, scores: Tensor, weights: Tensor
    ) -> None:
        """Append a chunk of edges.

        Shapes:
            edge_index [2, e] (source, target), head [e], kv_head [e], scores [e], weights [e].
        """
        cols = [
            edge_index[0].tolist(),
            edge_index[1].tolist(),
            head.tolist(),
            kv_head.tolist(),
            scores.double().tolist(),  # Python floats: repr() reads back exactly
            weights.double().tolist(),
        ]
        rows = zip(*cols, strict=True)
        if self.kind == ".graphml":
            kh, kk, ka, kw = self._edge_keys
            text = "".join(
                f'    <edge source="{u}" target="{v}"><data key="{kh}">{h}</data>'
                f'<data key="{kk}">{g}</data><data key="{ka}">{a!r}</data>'
                f'<data key="{kw}">{w!r}</data></edge>\n'
                for u, v, h, g, a, w in rows
            )
        elif self.kind == ".json":
            sep = ", " if self.num_edges else ""
            text = sep + ", ".join(
                f'{{"source": {u}, "target": {v}, "key": {h}, "head": {h}, "kv_head": {g}, '
                f'"score": {_json_float(a)}, "weight": {_json_float(w)}}}'
                for u, v, h, g, a, w in rows
            )
        else:
            text = "".join(f"{u}\t{v}\t{h}\t{g}\t{a!r}\t{w!r}\n" for u, v, h, g, a, w in rows)
        self._file.write(text)
        self.num_edges += len(cols[0])

    def close(self) -> None:
        """Write the closing lines and close the file (idempotent)."""
        if self._file.closed:
            return
        if self.kind == ".graphml":
            self._file.write("  </graph>\n</graphml>\n")
        elif self.kind == ".json":
            self._file.write("]}\n")
        self._file.close()

    def __enter__(self) -> SparseGraphWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _xml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return xml_escape(escape_xml_text(str(value)))


def _json_float(x: float) -> str:
    """A float as Python's json writes it (-inf, a score whose weight is 0, as -Infinity)."""
    return json.dumps(x)


def write_sparse(
    sparse: SparseAttention,
    path: str | Path,
    *,
    tokens: Sequence[str] | None = None,
    chunk: int = 1 << 16,
) -> Path:
    """Write a ``SparseAttention`` to ``path`` with ``SparseGraphWriter``, ``chunk`` edges at a
    time (the format by suffix: ``.graphml``, ``.json`` or ``.tsv``; see the module docstring).

    Shapes:
        SparseAttention with N nodes and K rows -> a file with N nodes and K edges.

    Raises:
        ValueError: an unknown suffix, or a token list that is not N long.
    """
    kv = sparse.kv_head  # [K]
    with SparseGraphWriter(
        path,
        num_nodes=sparse.num_nodes,
        metadata=sparse.metadata(),
        tokens=tokens,
        lengths=sparse.lengths,
    ) as out:
        for s in range(0, sparse.num_edges, chunk):
            t = min(s + chunk, sparse.num_edges)
            out.write_edges(
                sparse.edge_index[:, s:t],
                sparse.head[s:t],
                kv[s:t],
                sparse.scores[s:t],
                sparse.weights[s:t],
            )
    return Path(path)
