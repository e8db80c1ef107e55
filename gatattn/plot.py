"""Re-exports ``gatattn.inspect.plot`` under the old path ``gatattn.plot``.

The code lives in ``gatattn.inspect.plot`` (``heatmap``, ``graph``; matplotlib is imported
inside them). This module keeps ``ga.plot.heatmap(...)`` and ``from gatattn.plot import heatmap``
working; it defines nothing itself.
"""

from .inspect.plot import graph, heatmap

__all__ = ["graph", "heatmap"]
