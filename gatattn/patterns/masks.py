"""Graphs from PyTorch's masks and shapes: padded batches and cross-attention."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..graph import TokenGraph
from ._common import MAX_EDGES, check_edge_cap, is_int, positive_int, ragged
from .complete import masked_graph

__all__ = ["bipartite_graph", "from_padding_mask"]


def from_padding_mask(key_padding_mask: Tensor, *, max_edges: int | None = MAX_EDGES) -> TokenGraph:
    """The graph of ``nn.MultiheadAttention(..., key_padding_mask=m)`` on a padded batch [B, L].

    ``key_padding_mask[b, l] = True`` marks a padding position, as in nn.MultiheadAttention and
    nn.TransformerEncoder (the opposite of the SDPA mask convention). Nodes are the B·L positions
    in row-major order (flatten x [B, L, C] to [B·L, C]); every query, padded or not, attends to
    the non-padded keys of its own row, exactly as MHA does:

    .. math:: N(i) = \\{ j : \\mathrm{row}(j) = \\mathrm{row}(i),\\; \\lnot m[j] \\}

    A fully padded row gives targets with no edges (output 0). ``lengths = [L] * B``, so
    positions restart in every row. It is ``from_mask`` of the [B, L, L] mask ``¬m[b, j]``
    (tag ``"masked"``): the dense backend runs it as one SDPA call with that mask, and
    edge_index is made only when read.

    Args:
        key_padding_mask: bool [B, L], True = padding.
        max_edges: edge cap checked when edge_index is made (None: no cap).

    Shapes:
        key_padding_mask [B, L] bool -> edge_index [2, E], E = L · Σ_b (valid keys of b),
        sorted by target then source.
    """
    if not isinstance(key_padding_mask, Tensor) or key_padding_mask.dtype != torch.bool:
        dtype = getattr(key_padding_mask, "dtype", type(key_padding_mask).__name__)
        raise TypeError(
            f"key_padding_mask must be a bool tensor [B, L] (True = padding), got {dtype}"
        )
    if key_padding_mask.dim() != 2 or 0 in key_padding_mask.shape:
        raise ValueError(
            "key_padding_mask must have shape [B, L] with B, L >= 1, got "
            f"{list(key_padding_mask.shape)}"
        )
    B, L = key_padding_mask.shape
    if max_edges is not None and B * L * L > max_edges and not torch.compiler.is_compiling():
        check_edge_cap(int((~key_padding_mask).sum()) * L, max_edges, "from_padding_mask")
    allowed = (~key_padding_mask)[:, None, :]  # [B, 1, L_k]: a new tensor, the graph's own
    return masked_graph(allowed, L, True)


def _sizes(value: int | Sequence[int], name: str) -> tuple[int, ...]:
    """One size (a Python or numpy integer) -> (n,); a sequence or 1-D array of sizes -> tuple."""
    if is_int(value) or isinstance(value, bool) or not hasattr(value, "__iter__"):
        return (positive_int(value, name),)
    out = tuple(positive_int(v, f"each of {name}") for v in value)
    if not out:
        raise ValueError(f"{name} must name at least one sequence, got []")
    return out


def bipartite_graph(
    n_q: int | Sequence[int],
    n_kv: int | Sequence[int],
    *,
    device: torch.device | str | None = None,
    max_edges: int | None = MAX_EDGES,
) -> TokenGraph:
    """Complete bipartite graph for cross-attention: every query attends to every key.

    Give ints for one pair of sequences, or equal-length lists for a block-diagonal batch
    (query sequence b attends to key sequence b only):

    .. math:: N(i) = \\{ j \\in \\text{keys} : \\mathrm{seq}(j) = \\mathrm{seq}(i) \\}

    Sources are the N_s = Σ n_kv keys/values (``x_src``), targets the N_t = Σ n_q queries.
    No self-loops (sources and targets are different node sets). Equal to SDPA cross-attention
    (Vaswani et al. 2017, encoder-decoder attention). Tag ``"bipartite"``, params
    ``{"kv_lengths": tuple or None}`` (the key lengths of a batch; ``lengths`` holds the queries').

    Shapes:
        edge_index [2, E], E = Σ_b n_q[b] n_kv[b], sorted by target then source.
    """
    q, kv = _sizes(n_q, "n_q"), _sizes(n_kv, "n_kv")
    batched = not is_int(n_q) or not is_int(n_kv)
    if len(q) != len(kv):
        raise ValueError(
            f"n_q has {len(q)} sequences but n_kv has {len(kv)}: {list(q)} vs {list(kv)}"
        )
    num_edges = sum(a * b for a, b in zip(q, kv, strict=True))
    check_edge_cap(num_edges, max_edges, "bipartite_graph")

    def build() -> Tensor:  # deferred: the dense backend never reads these edges
        lq = torch.tensor(q, device=device)  # [B]
        lkv = torch.tensor(kv, device=device)  # [B]
        kv_start = torch.cumsum(lkv, 0) - lkv  # [B]
        seq = torch.arange(len(q), device=device).repeat_interleave(lq)  # [N_t]
        return ragged(kv_start[seq], lkv[seq])  # [2, E]

    return TokenGraph._deferred(
        build,
        sum(kv),
        sum(q),
        num_edges,
        device=device,
        structure="bipartite",
        lengths=q if batched else None,
        params={"kv_lengths": kv if batched else None},
    )
