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

import weakref
from typing import Any

import torch
from torch import Tensor

from ..graph import TokenGraph
from ..scores import Dot, ScaledDot, ScoreFunction
from .types import BackendOutput

__all__ = ["flex_attention_graph", "flex_unsupported", "has_duplicates"]

FLEX_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MASKS: weakref.WeakKeyDictionary[TokenGraph, tuple[str, Any]] = weakref.WeakKeyDictionary()
_DUPS: weakref.WeakKeyDictionary[TokenGraph, bool] = weakref.WeakKeyDictionary()
_COMPILED: dict[str, Any] = {}


def has_duplicates(graph: TokenGraph) -> bool:
    """True when some (j, i) pair has more than one edge (cached per graph)."""
    if graph not in _DUPS:
        keys = graph.edge_index[1] * graph.num_src + graph.edge_index[0]  # [E]
        _DUPS[graph] = bool(torch.unique(keys).numel() != keys.numel())
    return _DUPS[graph]


def flex_available() -> bool:
    """FlexAttention importable in this torch."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def flex_unsupported(score: ScoreFunction, graph: TokenGraph, q: Tensor) -> str | None:
    """Why the flex backend cannot run ``score`` on ``graph`` with queries like ``q`` (or None)."""
    if "flex" not in score.backends or type(score) not in (ScaledDot, Dot):
        return f"score {score.name!r} has no FlexAttention form (flex runs scaled_dot and dot)"
    if q.device.type != "cuda":
        return f"FlexAttention needs CUDA (has no CPU backward); the input is on {q.device.type}"
    if q.dtype not in FLEX_DTYPES:
        return f"FlexAttention runs fp16/bf16/fp32, not {q.dtype}"
    if not flex_available():
        return f"torch {torch.__version__} has no torch.nn.attention.flex_attention"
    if graph.num_edges == 0:
        return "graph has no edges"
    if has_duplicates(graph):
        return "graph has duplicate edges, which FlexAttention's mask cannot count"
    return None


def block_mask_for(graph: TokenGraph, device: torch.device) -> Any:
    """FlexAttention BlockMask of the graph (cached per graph and device).

    The mask_mod reads ``mask[q_idx, kv_idx]`` from the SDPA-convention dense mask [N_t, N_s].
    """
    from torch.nn.attention.flex_attention import create_block_mask

    hit = _MASKS.get(graph)
    if hit is not None and hit[0] == str(device):
        return hit[1]
    dense = graph.to(device).to_dense_mask()  # [N_t, N_s] bool

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return dense[q_idx, kv_idx]

    bm = create_block_mask(mask_mod, None, None, graph.num_dst, graph.num_src, device=str(device))
    _MASKS[graph] = (str(device), bm)
    return bm


def flex_attention_graph(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    graph: TokenGraph,
    score: ScoreFunction,
    *,
    compiled: bool = True,
) -> BackendOutput:
    """Graph attention by FlexAttention over the graph's BlockMask.

    Args:
        q: queries [N_t, H, D].  k, v: keys and values [N_s, H, D].
        graph: any TokenGraph without duplicate edges.
        score: scaled_dot (scale 1/√D) or dot (scale 1).
        compiled: run the ``torch.compile``d kernel (False: eager, for CPU forward tests only).

    Shapes:
        -> out [N_t, H, D]; scores and weights are None (the layer recovers them per edge).
    """
    from torch.nn.attention.flex_attention import flex_attention

    if type(score) not in (ScaledDot, Dot):
        raise ValueError(f"flex backend cannot run score {score.name!r}")
    fn = flex_attention
    if compiled:
        if "fn" not in _COMPILED:
            _COMPILED["fn"] = torch.compile(flex_attention, dynamic=False)
        fn = _COMPILED["fn"]
    bm = block_mask_for(graph, q.device)
    scale = 1.0 if type(score) is Dot else None
    out = fn(
        q.transpose(0, 1).unsqueeze(0),  # [1, H, N_t, D]
        k.transpose(0, 1).unsqueeze(0),  # [1, H, N_s, D]
        v.transpose(0, 1).unsqueeze(0),
        block_mask=bm,
        scale=scale,
    )  # [1, H, N_t, D]
    out = out[0].transpose(0, 1)  # [N_t, H, D]
    if _has_isolated(graph):  # a target with no edges outputs 0 (docs/math.md), whatever the kernel
        deg = graph.in_degree().to(out.device)  # [N_t]
        out = torch.where((deg > 0)[:, None, None], out, torch.zeros_like(out))
    return BackendOutput(out, None, None)


_ISOLATED: weakref.WeakKeyDictionary[TokenGraph, bool] = weakref.WeakKeyDictionary()


def _has_isolated(graph: TokenGraph) -> bool:
    if graph not in _ISOLATED:
        _ISOLATED[graph] = bool((graph.in_degree() == 0).any())
    return _ISOLATED[graph]
