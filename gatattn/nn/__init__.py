"""Layers: ``GraphAttention`` (validate -> project -> attend -> out-project) and ``Attention``,
its typed result."""

from .attention import Attention, GraphAttention

__all__ = ["Attention", "GraphAttention"]
