"""Backends compute the same attention (docs/math.md, eqs. 1-3); ``dispatch`` picks one.

The edge backend is the literal formula and the ground truth; every other backend is proven equal
to it (tests/test_backends.py) before dispatch may choose it.
"""

from .dispatch import BACKENDS, BackendOutput, run_backend, select_backend
from .edge import edge_attention

__all__ = ["BACKENDS", "BackendOutput", "edge_attention", "run_backend", "select_backend"]
