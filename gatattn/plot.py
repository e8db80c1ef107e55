"""Re-exports ``gatattn.inspect.plot`` under the old path ``gatattn.plot``.

The code lives in ``gatattn.inspect.plot`` (``heatmap``, ``graph``; matplotlib is imported
inside them) and ``gatattn.inspect.html`` (``attention_html``, the interactive view). This module
keeps ``ga.plot.heatmap(...)`` and ``from gatattn.plot import heatmap`` working; it defines
nothing itself.
"""

from .inspect.plot import attention_html, graph, heatmap

__all__ = ["attention_html", "graph", "heatmap"]
