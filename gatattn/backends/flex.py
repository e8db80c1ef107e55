"""The flex backend: ``torch.nn.attention.flex_attention`` with a BlockMask built from the graph.

    out = softmax(s · Q Kᵀ + M) V,   M_ij = 0 if (j, i) is an edge else −∞        (eqs. 1-3)

FlexAttention (Dong et al. 2024, "Flex Attention: A Programming Model for Generating Optimized
Attention Kernels") skips the tiles of M that are fully masked, like the block backend, in fused
Triton kernels. The mask is looked up in the graph's dense boolean mask (``to_dense_mask``,
[N_t, N_s], cached per graph), so any graph works and the tag is not trusted. Each (i, j) pair
is attended once, so a graph with duplicate edges is refused (the edge or block backend counts
them). CUDA only: on CPU FlexAttention has no backward. torch imports happen inside functions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..graph import TokenGraph
from .base import Backend, BackendOutput, Problem

__all__ = ["FlexBackend", "flex_available", "has_duplicates"]

FLEX_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def has_duplicates(graph: TokenGraph) -> bool:
    """True when some (j, i) pair has more than one edge (cached in the graph)."""

    def find() -> bool:
        keys = graph.edge_index[1] * graph.num_src + graph.edge_index[0]  # [E]
        return bool(torch.unique(keys).numel() != keys.numel())

    return graph.derived("has_duplicates", find)


def flex_available() -> bool:
    """FlexAttention importable in this torch."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def block_mask_for(graph: TokenGraph, device: torch.device) -> Any:
    """FlexAttention BlockMask of the graph (cached in the graph, per device).

    The mask_mod reads ``mask[q_idx, kv_idx]`` from the SDPA-convention dense mask [N_t, N_s].
    """
    from torch.nn.attention.flex_attention import create_block_mask

    def build() -> Any:
        dense = graph.to(device).to_dense_mask()  # [N_t, N_s] bool

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return dense[q_idx, kv_idx]

        return create_block_mask(
            mask_mod, None, None, graph.num_dst, graph.num_src, device=str(device)
        )

    return graph.derived("flex_block_mask", build, device)


class FlexBackend(Backend):
    """Graph attention by FlexAttention over the graph's BlockMask (CUDA; scores with an
    ``sdpa_scale``; graphs without duplicate edges; no attention dropout).

    ``compiled=False`` runs the eager kernel (CPU forward tests only).
    Returns out [N_t, H, D]; scores and weights are None.
    """

    name = "flex"

    def __init__(self, compiled: bool = True) -> None:
        self.compiled = compiled
        self._fn: Any = None

    def supports(self, p: Problem) -> str | None:
        why = self.score_support(p)
        if why is not None:
            return why
        base, biases = p.score.parts()
        if base.sdpa_scale(p.q.size(-1)) is None or biases:
            return f"score {p.score.name!r} has no FlexAttention form (flex runs s·<q_i, k_j>)"
        if p.sinks is not None:
            return "attention sinks: the edge and dense backends add the sink"
        if p.q.device.type != "cuda":
            return (
                f"FlexAttention needs CUDA (has no CPU backward); the input is on {p.q.device.type}"
            )
        if p.q.dtype not in FLEX_DTYPES:
            return f"FlexAttention runs fp16/bf16/fp32, not {p.q.dtype}"
        if not flex_available():
            return f"torch {torch.__version__} has no torch.nn.attention.flex_attention"
        if p.training and p.dropout > 0:
            return "FlexAttention here has no attention dropout (the layer is training with dropout > 0)"
        if p.graph.num_edges == 0:
            return "graph has no edges"
        if has_duplicates(p.graph):
            return "graph has duplicate edges, which FlexAttention's mask cannot count"
        return None

    def _kernel(self) -> Any:
        from torch.nn.attention.flex_attention import flex_attention

        if not self.compiled:
            return flex_attention
        if self._fn is None:
            self._fn = torch.compile(flex_attention, dynamic=False)
        return self._fn

    def run(self, p: Problem) -> BackendOutput:
        why = self.supports(p) if self.compiled else None  # eager: CPU forward tests only
        if why is not None:
            raise ValueError(f"flex backend cannot run score {p.score.name!r}: {why}")
        q, k, v, graph = p.q, p.k, p.v, p.graph
        scale = p.score.parts()[0].sdpa_scale(p.q.size(-1))
        out = self._kernel()(
            q.transpose(0, 1).unsqueeze(0),  # [1, H, N_t, D]
            k.transpose(0, 1).unsqueeze(0),  # [1, H, N_s, D]
            v.transpose(0, 1).unsqueeze(0),
            block_mask=block_mask_for(graph, q.device),
            scale=scale,
        )  # [1, H, N_t, D]
        out = out[0].transpose(0, 1)  # [N_t, H, D]
        isolated = graph.derived("has_isolated", lambda: bool((graph.in_degree() == 0).any()))
        if isolated:  # a target with no edges outputs 0 (docs/math.md), whatever the kernel does
            deg = graph.in_degree().to(out.device)  # [N_t]
            out = torch.where((deg > 0)[:, None, None], out, torch.zeros_like(out))
        return BackendOutput(out, None, None)
