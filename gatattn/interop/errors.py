"""Errors of the drop-ins that code written for torch still catches (docs/interop.md).

nn.MultiheadAttention raises AssertionError for most bad inputs and RuntimeError for a few
(a wrongly shaped ``attn_mask``, ``is_causal`` without a mask). The drop-ins raise these classes
instead: each is also a ValueError or TypeError, gatattn's convention, and its message names the
offending argument and value and keeps torch's wording, so ``except AssertionError`` (or a test
matching torch's message) and ``except ValueError`` both work.
"""

from __future__ import annotations

__all__ = ["DeviceRuntimeError", "DtypeAssertionError", "ShapeAssertionError", "ShapeRuntimeError"]


class ShapeAssertionError(ValueError, AssertionError):
    """A bad shape or rank, where nn.MultiheadAttention raises AssertionError."""


class ShapeRuntimeError(ValueError, RuntimeError):
    """A bad shape or a missing mask, where nn.MultiheadAttention raises RuntimeError."""


class DtypeAssertionError(TypeError, AssertionError):
    """A mask that is neither bool nor floating point (torch: AssertionError)."""


class DeviceRuntimeError(ValueError, RuntimeError):
    """An input, mask or graph on another device than the query (torch: RuntimeError)."""
