"""Interop with PyTorch's attention modules (docs/interop.md).

* ``GraphMultiheadAttention``: nn.MultiheadAttention's interface; masks become a graph.
* ``GraphTransformerEncoderLayer``: nn.TransformerEncoderLayer, dense or on [N, C] + a graph.
* ``convert(model)``: a copy of a model with every nn.MultiheadAttention made graph attention.
* ``ShapeAssertionError``, ``ShapeRuntimeError``, ``DtypeAssertionError``, ``DeviceRuntimeError``:
  the drop-ins' errors, ValueErrors / TypeErrors that are also the AssertionError /
  RuntimeError torch raises.
"""

from ..scores import AttnMaskBias  # the per-edge bias of float masks, re-exported
from .convert import convert
from .encoder import GraphTransformerEncoderLayer
from .errors import (
    DeviceRuntimeError,
    DtypeAssertionError,
    ShapeAssertionError,
    ShapeRuntimeError,
)
from .mha import GraphMultiheadAttention

__all__ = [
    "AttnMaskBias",
    "DeviceRuntimeError",
    "DtypeAssertionError",
    "GraphMultiheadAttention",
    "GraphTransformerEncoderLayer",
    "ShapeAssertionError",
    "ShapeRuntimeError",
    "convert",
]
