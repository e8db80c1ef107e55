"""Checks of graph inputs: edge_index, sequence lengths, and structure claims.

Each check raises (or answers) without building anything larger than O(E) (chunked for the
structure check), and names the offending value in its message.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_batch_ids",
    "check_heads",
    "check_lengths",
    "check_node_count",
    "is_int",
    "same_device",
    "structure_holds",
    "validate_edge_index",
]

#: Edges checked per step when a structure claim is verified (bounds the temporaries).
_VERIFY_CHUNK = 1 << 20


def validate_edge_index(edge_index: Any, num_src: int | None, num_dst: int | None) -> None:
    """Check that ``edge_index`` is a LongTensor [2, E] with indices in range.

    Raises:
        TypeError: not a tensor, or not an integer dtype.
        ValueError: wrong shape, a negative index, or an index >= the node count.
    """
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"edge_index must be a torch.Tensor, got {type(edge_index).__name__}")
    if edge_index.dtype != torch.long:
        raise TypeError(
            f"edge_index must have dtype torch.long (int64), got {edge_index.dtype}; "
            "convert it with edge_index.long()"
        )
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}")
    if edge_index.numel() == 0 or torch.compiler.is_compiling():
        return
    lo = int(edge_index.min())
    if lo < 0:
        raise ValueError(f"edge_index contains a negative node index ({lo})")
    for row, name, n in ((0, "source", num_src), (1, "target", num_dst)):
        if n is None:
            continue
        hi = int(edge_index[row].max())
        if hi >= n:
            raise ValueError(
                f"edge_index has {name} index {hi} but there are only {n} {name} nodes "
                f"(valid range 0..{n - 1})"
            )


def check_batch_ids(batch: Tensor, owner: str) -> None:
    """Refuse a negative graph id in PyG's ``batch`` vector [N] (torch.bincount would crash).

    Raises:
        ValueError: ``batch`` holds a negative id (the message names it and its node).
    """
    if batch.numel() and batch.device.type != "meta" and not torch.compiler.is_compiling():
        low = int(batch.min())
        if low < 0:
            node = int((batch < 0).nonzero()[0, 0])
            raise ValueError(
                f"{owner}: batch holds a negative graph id ({low}, first at node {node}); "
                "graph ids are 0, 1, ... as PyG's Batch gives them"
            )


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are one: equal types and indices, where a missing index is the
    current device (``cuda`` matches ``cuda:0`` when device 0 is current; ``cpu`` is one)."""
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        if a.type != "cuda":
            return True
        here = torch.cuda.current_device()
        return (here if a.index is None else a.index) == (here if b.index is None else b.index)
    return a.index == b.index


def is_int(value: Any) -> bool:
    """True for Python and numpy integers (``numbers.Integral``) and torch's symbolic ints;
    False for bools (numpy's bool is no Integral)."""
    return isinstance(value, (numbers.Integral, torch.SymInt)) and not isinstance(value, bool)


def check_node_count(value: Any, name: str) -> int | None:
    """A node count (``num_src``/``num_dst``): None, or an integer >= 0 (Python or numpy),
    returned as an int. A float such as 5.7 is refused, never truncated.

    Raises:
        TypeError: not an integer (a float, a bool, a string, a tensor...).
        ValueError: a negative count.
    """
    if value is None:
        return None
    if not is_int(value):
        raise TypeError(
            f"{name} must be an int >= 0 or None, got {value!r} ({type(value).__name__})"
        )
    if value < 0:
        raise ValueError(f"node counts must be >= 0, got {name}={value}")
    return int(value)


def check_lengths(lengths: Sequence[int] | Tensor) -> tuple[int, ...]:
    """Per-sequence node counts as a tuple of ints >= 1.

    Accepts a sequence of integers (Python or numpy) or an integer tensor [B]. Nothing is
    coerced: ``[2.5, 3]``, ``"23"``, ``[True, 2]`` and float tensors are refused.

    Raises:
        TypeError: a string, a non-sequence, a non-integer entry or a non-integer tensor.
        ValueError: no sequence, or a length < 1 (the message names it).
    """
    if isinstance(lengths, Tensor):
        if (
            lengths.dtype.is_floating_point
            or lengths.dtype.is_complex
            or lengths.dtype == torch.bool
        ):
            raise TypeError(f"lengths must hold integers, got a tensor of dtype {lengths.dtype}")
        if lengths.dim() != 1:
            raise ValueError(f"lengths must be a 1-D tensor [B], got shape {list(lengths.shape)}")
        items: list[Any] = lengths.tolist()
    elif isinstance(lengths, (str, bytes)) or not isinstance(lengths, Iterable):
        raise TypeError(
            f"lengths must be a sequence of ints (one per sequence), got {lengths!r} "
            f"({type(lengths).__name__})"
        )
    else:
        items = list(lengths)
    bad_type = [n for n in items if not is_int(n)]
    if bad_type:
        raise TypeError(
            f"every sequence length must be an int, got {bad_type[0]!r} "
            f"({type(bad_type[0]).__name__}) in lengths={items!r}"
        )
    out = tuple(int(n) for n in items)
    if len(out) == 0:
        raise ValueError("lengths must name at least one sequence, got []")
    bad = [n for n in out if n < 1]
    if bad:
        raise ValueError(f"every sequence length must be >= 1, got {bad[0]} in lengths={list(out)}")
    return out


def structure_holds(
    tag: str,
    edge_index: Tensor,
    q_len: tuple[int, ...],
    k_len: tuple[int, ...],
    loops: bool,
) -> bool:
    """True when ``edge_index`` [2, E] is exactly the pattern ``tag`` (complete, causal or
    bipartite) over query sequences ``q_len`` and key sequences ``k_len`` (``loops``: self-loops).

    Three O(E) facts prove it: E equals the pattern's edge count; the keys i·N_s + j strictly
    increase (sorted, so no edge repeats); every edge is in the pattern (same sequence; j <= i
    for causal; j != i without self-loops). Distinct members, as many as the pattern has, are
    the pattern. Checked in chunks, so the temporaries stay O(chunk).
    """
    ei, num_src = edge_index, sum(k_len)
    if len(q_len) != len(k_len):
        return False
    if tag == "bipartite":
        want = sum(a * b for a, b in zip(q_len, k_len))
    elif q_len != k_len:
        return False
    elif tag == "complete":
        want = sum(n * n if loops else n * (n - 1) for n in q_len)
    else:  # causal
        want = sum(n * (n + 1) // 2 if loops else n * (n - 1) // 2 for n in q_len)
    if ei.size(1) != want:
        return False
    seq_q, pos_q = _layout(q_len, ei.device)  # [N_t] each
    seq_k, pos_k = _layout(k_len, ei.device)  # [N_s] each
    last = -1
    for s in range(0, ei.size(1), _VERIFY_CHUNK):
        src, dst = ei[0, s : s + _VERIFY_CHUNK], ei[1, s : s + _VERIFY_CHUNK]  # [e]
        key = dst * num_src + src  # [e]
        if int(key[0]) <= last or bool((key[1:] <= key[:-1]).any()):
            return False
        last = int(key[-1])
        ok = seq_q.index_select(0, dst) == seq_k.index_select(0, src)  # [e]
        if tag == "causal":
            before = pos_k.index_select(0, src) <= pos_q.index_select(0, dst)
            ok &= before if loops else before & (src != dst)
        elif tag == "complete" and not loops:
            ok &= src != dst
        if not bool(ok.all()):
            return False
    return True


def _layout(lengths: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """(sequence id, position in the sequence) of every node, LongTensors [N]."""
    lens = torch.tensor(lengths, device=device)  # [B]
    seq = torch.arange(len(lengths), device=device).repeat_interleave(lens)  # [N]
    starts = torch.cumsum(lens, 0) - lens  # [B]
    return seq, torch.arange(int(lens.sum()), device=device) - starts.repeat_interleave(lens)


def check_heads(heads: Sequence[int] | None, num_heads: int) -> tuple[int, ...] | None:
    """Distinct head indices in 0..num_heads-1, sorted (None: every head).

    Raises:
        ValueError: an empty list, a repeated, negative, too large or non-int index.
    """
    if heads is None:
        return None
    chosen: list[object] = list(heads)
    bad = [
        h for h in chosen if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < num_heads
    ]
    if not chosen or bad or len(set(chosen)) != len(chosen):
        raise ValueError(
            f"heads must be distinct head indices in 0..{num_heads - 1} (the model has "
            f"{num_heads} heads), got {list(heads)!r}"
        )
    return tuple(sorted(int(h) for h in heads))
