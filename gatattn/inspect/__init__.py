"""Inspecting attention: matrices, NetworkX graphs and files, analyses, pictures.

The modules import one way only::

    matrices  ->  graphs  ->  export, analysis        html -> plot (read matrices; imported by none)

- ``matrices``: Attention -> arrays: head choice, duplicate-edge merge, residual adjustment
  Â = rownorm(0.5·A + 0.5·I) (eq. R1), dense matrices A[i, j] = Attn_ij (row = query).
- ``graphs``: ``to_networkx`` / ``from_networkx`` and ``layered_graph``, the (L+1)·N-node DAG
  of Abnar & Zuidema (2020).
- ``export``: the graph files, ``write_graph`` / ``read_graph`` (GraphML, GEXF, JSON); it also
  re-exports the conversions of ``graphs`` (their import path before the split).
- ``xmltext``: the lossless escape of strings that XML cannot hold (``write_graph`` and
  ``read_graph`` apply it to GraphML and GEXF files).
- ``sparse`` -> ``extract``, ``stream``: long contexts: ``SparseAttention`` (per head, only the
  top-k / above-threshold edges of each query), ``sparsify`` (of a computed Attention),
  ``extract_sparse`` (keeps the pairs of each block of query rows that
  ``gatattn.backends.attention_rows`` computes, never the [E, H] weights)
  and ``write_sparse`` (GraphML, JSON or an edge list, written as the edges come).
- ``analysis``: rollout (eq. R2), flow (eq. R3), entropy, weight sums, top edges, PageRank,
  strength.
- ``plot``: ``heatmap`` and ``graph`` pictures (matplotlib is imported inside them); they stay
  under ``plot.`` (``gatattn.inspect.plot.heatmap``, like ``ga.plot.heatmap``).
- ``html``: ``attention_html``, an interactive view in one self-contained HTML file (head and
  model views); re-exported by ``plot`` (``ga.plot.attention_html``).

``gatattn.analysis``, ``gatattn.export`` and ``gatattn.plot`` re-export these names for the
import paths that existed before this package.
"""

from . import analysis, export, extract, graphs, html, matrices, plot, sparse, stream, xmltext
from .analysis import (
    attention_entropy,
    attention_flow,
    attention_rollout,
    check_weights_sum,
    pagerank,
    strength,
    top_edges,
)
from .export import (
    MAX_WRITE_EDGES,
    EdgeArrays,
    check_write_size,
    from_networkx,
    layered_graph,
    read_graph,
    to_networkx,
    write_graph,
)
from .extract import extract_sparse
from .matrices import (
    HeadSpec,
    LayerInput,
    MergedEdges,
    adjusted_matrices,
    attention_matrix,
    check_head,
    merge_duplicates,
    merged_edges,
    node_counts,
    residual_adjust,
)
from .sparse import SparseAttention, sparsify
from .stream import SparseGraphWriter, write_sparse
from .xmltext import XML_ESCAPE_PREFIX, escape_xml_text, unescape_xml_text

__all__ = [
    "MAX_WRITE_EDGES",
    "XML_ESCAPE_PREFIX",
    "EdgeArrays",
    "HeadSpec",
    "LayerInput",
    "MergedEdges",
    "SparseAttention",
    "SparseGraphWriter",
    "adjusted_matrices",
    "analysis",
    "attention_entropy",
    "attention_flow",
    "attention_matrix",
    "attention_rollout",
    "check_head",
    "check_weights_sum",
    "check_write_size",
    "escape_xml_text",
    "export",
    "extract",
    "extract_sparse",
    "from_networkx",
    "graphs",
    "html",
    "layered_graph",
    "matrices",
    "merge_duplicates",
    "merged_edges",
    "node_counts",
    "pagerank",
    "plot",
    "read_graph",
    "residual_adjust",
    "sparse",
    "sparsify",
    "stream",
    "strength",
    "to_networkx",
    "top_edges",
    "unescape_xml_text",
    "write_graph",
    "write_sparse",
    "xmltext",
]
