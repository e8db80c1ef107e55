"""Re-exports ``gatattn.inspect.export`` under the old path ``gatattn.export``.

The code lives in ``gatattn.inspect.graphs`` (``to_networkx``, ``from_networkx``,
``layered_graph``) and ``gatattn.inspect.export`` (``write_graph``, ``read_graph``), which
re-exports the former. This module keeps ``ga.export.<name>`` and
``from gatattn.export import <name>`` working; it defines nothing itself. ``MAX_WRITE_EDGES``
here is a copy for reading: ``write_graph`` reads ``gatattn.inspect.export.MAX_WRITE_EDGES``.
"""

from .inspect.export import (
    MAX_WRITE_EDGES,
    WRITERS,
    EdgeArrays,
    from_networkx,
    layered_graph,
    read_graph,
    to_networkx,
    write_graph,
)
from .inspect.matrices import HeadSpec, adjusted_matrices

__all__ = [
    "MAX_WRITE_EDGES",
    "WRITERS",
    "EdgeArrays",
    "HeadSpec",
    "adjusted_matrices",
    "from_networkx",
    "layered_graph",
    "read_graph",
    "to_networkx",
    "write_graph",
]
