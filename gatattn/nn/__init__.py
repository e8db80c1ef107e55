"""Layers: ``GraphAttention`` (validate -> project -> attend -> out-project) and ``Attention``,
its typed result (defined in ``gatattn.result``, re-exported here)."""

from ..result import Attention
from .attention import GraphAttention

__all__ = ["Attention", "GraphAttention"]
