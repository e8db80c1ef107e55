"""Input checks of ``GraphAttention``.

Every check raises an error that names the offending argument and value (tests/nn/test_layer.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..backends import EdgeInput
from ..graph import TokenGraph
from ..result import Attention  # re-exported: its import path before gatattn.result
from ..validation import check_batch_ids, same_device

__all__ = [
    "Attention",
    "Sources",
    "check_dtype",
    "check_edge_inputs",
    "check_features",
    "check_graph_device",
    "check_layer_args",
    "check_num_kv_heads",
    "check_positions",
    "edge_features",
    "split_sources",
    "with_batch",
]

#: Key/value features of cross-attention: one tensor [N_s, kdim] or a pair (keys, values).
Sources = Tensor | tuple[Tensor, Tensor] | None


def check_layer_args(
    embed_dim: object, num_heads: object, dropout: float, edge_dim: object
) -> None:
    """GraphAttention's constructor arguments; each error names the argument and its value."""
    for name, val in (("embed_dim", embed_dim), ("num_heads", num_heads)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    assert isinstance(embed_dim, int) and isinstance(num_heads, int)
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if edge_dim is not None and (
        isinstance(edge_dim, bool) or not isinstance(edge_dim, int) or edge_dim < 1
    ):
        raise ValueError(f"edge_dim must be a positive int or None, got {edge_dim!r}")


def check_num_kv_heads(num_kv_heads: object, num_heads: int) -> int | None:
    """``num_kv_heads``: None, or a positive int dividing ``num_heads`` (grouped-query)."""
    if num_kv_heads is None:
        return None
    if isinstance(num_kv_heads, bool) or not isinstance(num_kv_heads, int) or num_kv_heads < 1:
        raise ValueError(f"num_kv_heads must be a positive int or None, got {num_kv_heads!r}")
    if num_heads % num_kv_heads:
        raise ValueError(
            f"num_heads={num_heads} is not divisible by num_kv_heads={num_kv_heads}: each "
            "key/value head serves num_heads / num_kv_heads query heads"
        )
    return num_kv_heads


def check_positions(
    pos: Tensor | None, pos_src: Tensor | None, n_t: int, n_s: int, self_attention: bool
) -> tuple[Tensor, Tensor] | None:
    """(query positions [N_t] or [N_t, P], key positions [N_s] or [N_s, P]) or None.

    ``pos_src`` defaults to ``pos`` in self-attention; cross-attention needs both."""
    if pos is None and pos_src is None:
        return None
    if pos is None:
        raise ValueError("pos_src is given without pos: pass the query positions as pos")
    if pos_src is None:
        if not self_attention:
            raise ValueError("cross-attention with pos needs the key positions too: pass pos_src")
        pos_src = pos
    for name, t, n in (("pos", pos, n_t), ("pos_src", pos_src, n_s)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor [N] or [N, P], got {type(t).__name__}")
        if t.dim() not in (1, 2) or t.size(0) != n or t.dtype == torch.bool:
            raise ValueError(
                f"{name} must hold one position per node, shape [{n}] or [{n}, P] (int or "
                f"float), got shape {list(t.shape)} and dtype {t.dtype}"
            )
    if pos.dim() != pos_src.dim() or pos.shape[1:] != pos_src.shape[1:]:
        raise ValueError(
            f"pos {list(pos.shape)} and pos_src {list(pos_src.shape)} have different widths"
        )
    return pos, pos_src


def check_features(t: object, name: str, width: int, arg: str) -> Tensor:
    """``t`` must be node features [N, width] (rank 2); returns it."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(
            f"{name} must be node features [N, C] (rank 2), got shape {list(t.shape)}; "
            "concatenate sequences and use a block-diagonal graph, or use "
            "GraphMultiheadAttention for [B, L, C] input"
        )
    if t.size(1) != width:
        raise ValueError(f"{name} has {t.size(1)} channels but {arg}={width}")
    return t


def check_dtype(t: Tensor, name: str, dtype: torch.dtype) -> None:
    """Floating features must have the layer's parameter dtype, unless autocast runs and casts
    both (it casts fp32 and half tensors, never fp64). Raises a TypeError naming ``name``
    instead of torch's "mat1 and mat2 must have the same dtype" from inside the projection."""
    if t.dtype == dtype:
        return
    if torch.is_autocast_enabled(t.device.type) and torch.float64 not in (t.dtype, dtype):
        return
    raise TypeError(
        f"{name} has dtype {t.dtype} but the layer's parameters are {dtype}; convert one of "
        f"them ({name}.to({dtype}) or layer.to({t.dtype})), or run under torch.autocast"
    )


def split_sources(
    x: Tensor, x_src: Tensor | tuple[Tensor, Tensor] | None, dims: tuple[int, int, int]
) -> tuple[Tensor, Tensor]:
    """(key features, value features) from ``x_src`` (None: self-attention on ``x``).

    Args:
        x: query features [N_t, C].
        x_src: None, features [N_s, kdim] (kdim == vdim), or a pair ([N_s, kdim], [N_s, vdim]).
        dims: (embed_dim, kdim, vdim) of the layer.
    """
    embed_dim, kdim, vdim = dims
    if x_src is None:
        if (kdim, vdim) != (embed_dim, embed_dim):
            raise ValueError(
                f"kdim={kdim}, vdim={vdim} differ from embed_dim={embed_dim}: "
                "pass the key/value features as x_src"
            )
        return x, x
    if isinstance(x_src, (tuple, list)):
        kinds = [type(t).__name__ for t in x_src]
        if not all(isinstance(t, Tensor) for t in x_src):
            raise TypeError(
                "x_src must be a Tensor [N_s, kdim] or a pair of Tensors (keys, values), got a "
                f"{type(x_src).__name__} of {len(x_src)} items ({', '.join(kinds[:3])}"
                f"{', ...' if len(kinds) > 3 else ''})"
            )
        if len(x_src) != 2:
            raise ValueError(f"x_src pair must be (keys, values), got {len(x_src)} items")
        xk, xv = x_src
        if xk.size(0) != xv.size(0):
            raise ValueError(f"x_src keys have {xk.size(0)} rows but values have {xv.size(0)}")
        return xk, xv
    if not isinstance(x_src, Tensor):
        raise TypeError(
            "x_src must be a Tensor [N_s, kdim] or a pair of Tensors (keys, values), got "
            f"{type(x_src).__name__}"
        )
    if kdim != vdim:
        raise ValueError(f"kdim={kdim} != vdim={vdim}: pass x_src=(key_features, value_features)")
    return x_src, x_src


def check_graph_device(graph: object, x: Tensor, owner: str = "GraphAttention") -> None:
    """The graph (a TokenGraph or an edge_index) lives on x's device.

    Raises:
        ValueError: it does not (the message names both devices).
    """
    device = graph.device if isinstance(graph, (TokenGraph, Tensor)) else None
    if device is not None and not same_device(device, x.device):
        raise ValueError(
            f"{owner}: the graph is on {device} but the features are on {x.device}; move the "
            f"graph with graph.to({str(x.device)!r}) (or the features to {device})"
        )


def check_edge_inputs(
    edge_attr: EdgeInput | None, num_edges: int, device: torch.device | None = None
) -> EdgeInput | None:
    """Every per-edge input (one tensor, or each value of a mapping) has one row per edge (and
    lives on ``device`` when given)."""
    if edge_attr is None:
        return None
    if not isinstance(edge_attr, (Tensor, Mapping)):
        raise TypeError(
            "edge_attr must be a Tensor [E, ...] or a mapping of named Tensors, got "
            f"{type(edge_attr).__name__}"
        )
    items = edge_attr.items() if isinstance(edge_attr, Mapping) else [("edge_attr", edge_attr)]
    for key, t in items:
        if not isinstance(t, Tensor):
            raise TypeError(f"edge_attr[{key!r}] must be a Tensor, got {type(t).__name__}")
        name = "edge_attr" if not isinstance(edge_attr, Mapping) else f"edge_attr[{key!r}]"
        if device is not None and not same_device(t.device, device):
            raise ValueError(f"{name} is on {t.device} but the features are on {device}")
        if t.dim() == 0 or t.size(0) != num_edges:
            rows = "no" if t.dim() == 0 else t.size(0)
            raise ValueError(
                f"{name} has {rows} rows but the graph has {num_edges} edges (one row per edge)"
            )
    return edge_attr


def edge_features(edge_attr: EdgeInput | None, edge_dim: int | None) -> Tensor:
    """The edge features e [E, F] that ``edge_dim=F`` modulation reads ([E] becomes [E, 1])."""
    if not isinstance(edge_attr, Tensor):
        raise ValueError(
            f"edge_dim={edge_dim} is set, so forward needs edge_attr [E, {edge_dim}] (a tensor), "
            f"got {type(edge_attr).__name__}"
        )
    attr = edge_attr.unsqueeze(-1) if edge_attr.dim() == 1 else edge_attr  # [E, F]
    if attr.dim() != 2 or attr.size(1) != edge_dim:
        raise ValueError(f"edge_attr has shape {list(edge_attr.shape)} but edge_dim={edge_dim}")
    return attr


def with_batch(g: TokenGraph, batch: Tensor) -> TokenGraph:
    """Attach per-graph lengths from PyG's sorted ``batch`` vector [N] to a self-attention graph.

    The lengths only restart positions (for position biases); the edges alone keep graphs
    apart. The new graph keeps the tag as an unverified claim, so a fast backend uses it only
    when it still holds with these lengths.
    """
    if isinstance(batch, Tensor) and (batch.is_floating_point() or batch.dtype == torch.bool):
        raise TypeError(f"batch must be a LongTensor [N] of graph ids, got dtype {batch.dtype}")
    if not isinstance(batch, Tensor) or batch.dim() != 1 or batch.numel() != g.num_dst:
        shape = list(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
        raise ValueError(f"batch must be a LongTensor [N={g.num_dst}], got {shape}")
    check_batch_ids(batch, "GraphAttention")
    if g.lengths is not None or g.num_src != g.num_dst or batch.numel() == 0:
        return g
    if not torch.compiler.is_compiling() and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError("batch must be sorted (nodes of each graph contiguous), as Batch gives it")
    counts = torch.bincount(batch)  # [B]
    lengths = [int(n) for n in counts.tolist() if n > 0]
    return TokenGraph(
        g.edge_index,
        g.num_src,
        g.num_dst,
        structure=g.structure,
        lengths=lengths,
        params=g.params,
        validate=False,
    )
