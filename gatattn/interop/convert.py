"""``convert(model)``: a copy of any model with every nn.MultiheadAttention made graph attention."""

from __future__ import annotations

import copy

from torch import nn

from .mha import GraphMultiheadAttention

__all__ = ["convert"]


def convert(model: nn.Module, *, backend: str = "auto") -> nn.Module:
    """Deep-copy ``model`` and replace each ``nn.MultiheadAttention`` with its graph twin.

    The twins hold copies of the same weights (``GraphMultiheadAttention.from_torch``), so the
    converted model computes the same function; ``model`` itself is left untouched. Attention
    modules shared between several parents stay shared. The layers that call them
    (``nn.TransformerEncoderLayer``, ``nn.TransformerDecoderLayer``, ``nn.Transformer``) keep
    working: the twin has nn.MultiheadAttention's call signature and the attributes they read,
    and torch's fused encoder fast paths are switched off in the copy, since they would bypass
    the attention module.

    Args:
        model: any module (an ``nn.MultiheadAttention`` itself is converted too).
        backend: GraphAttention backend for every twin.

    A Hugging Face ``transformers`` model goes to ``gatattn.hf.convert`` instead (a copy too;
    its attention modules stay and call gatattn's attention function, docs/hf.md).

    Raises:
        TypeError: ``model`` is not an nn.Module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert needs an nn.Module, got {type(model).__name__}")
    from ..hf.families import is_hf_model  # Hugging Face models: docs/hf.md

    if is_hf_model(model):
        from ..hf import convert as convert_hf

        return convert_hf(model, backend=backend)
    if isinstance(model, nn.MultiheadAttention):
        return GraphMultiheadAttention.from_torch(model, backend=backend)
    new = copy.deepcopy(model)
    twins: dict[int, GraphMultiheadAttention] = {}
    for parent in list(new.modules()):
        for name, child in list(parent._modules.items()):  # named_children() skips repeats
            if isinstance(child, nn.MultiheadAttention):
                if id(child) not in twins:
                    twins[id(child)] = GraphMultiheadAttention.from_torch(child, backend=backend)
                setattr(parent, name, twins[id(child)])
        if isinstance(parent, nn.TransformerEncoder):
            # Its nested-tensor fast path feeds the layers NestedTensors; the twin takes dense input.
            parent.use_nested_tensor = False
    return new
