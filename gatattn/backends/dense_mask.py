"""The dense backend's masks: biases read from grids, rows without a key, attention sinks.

    M[b, h, i, j] = Σ_biases b_h(i, j)  on the edges,  −∞ elsewhere      (docs/math.md, eq. 5)

``bias_grid`` sums the biases that read their values from a grid-form edge input
(``ScoreBias.dense_grid``); ``scattered_inputs`` puts per-edge inputs [E] into that form once
per graph and input tensor, and ``edge_base`` is the graph's own 0 / −∞ mask that goes with
it; ``guard_empty_rows`` opens the rows SDPA cannot normalise (their
output is zeroed afterwards, as the graph formula gives 0); ``sink_mask`` appends the sink
column of gpt-oss's attention sinks.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..graph import TokenGraph
from ..scores import Edges, ScoreBias
from ..scores.grid import UNNAMED, GridInput
from .base import Problem

__all__ = [
    "bias_grid",
    "closed_cells",
    "edge_base",
    "edge_values",
    "grid_mask",
    "guard_empty_rows",
    "no_key",
    "scatter_values",
    "scattered_inputs",
    "sink_mask",
]


def bias_grid(
    biases: tuple[ScoreBias, ...],
    edge_attr: object,
    shape: tuple[int, int, int, int],
    dtype: torch.dtype,
) -> Tensor | None:
    """Σ_b b(i, j) on the padded grid when every bias reads it from a grid-form edge input
    (``ScoreBias.dense_grid``), else None. A lone boolean grid stays boolean (SDPA takes it).

    Shapes:
        -> [B | 1, H | 1, L_q | 1, L_k], bool (True = may attend) or ``dtype``.

    Raises:
        ValueError: a grid that does not broadcast to ``shape`` = (B, H, L_q, L_k).
    """
    grids = []
    for b in biases:
        t = b.dense_grid(edge_attr)
        if t is None:
            return None
        fits = t.dim() == 4 and t.size(3) == shape[3]
        for d in range(3 if fits else 0):  # each dimension broadcasts or matches
            fits = fits and (t.size(d) == 1 or t.size(d) == shape[d])
        if not fits:
            raise ValueError(
                f"bias {b.name!r} gave a grid of shape {list(t.shape)}, which is not "
                f"[B | 1, H | 1, L_q | 1, L_k] for (B, H, L_q, L_k) = {shape}"
            )
        grids.append(t)
    if len(grids) == 1 and grids[0].dtype == torch.bool:
        return grids[0]
    total: Tensor | None = None
    for t in grids:
        if t.dtype == torch.bool:
            t = torch.zeros(t.shape, dtype=dtype, device=t.device).masked_fill(~t, float("-inf"))
        total = t.to(dtype) if total is None else total + t.to(dtype)  # no pass for one grid
    assert total is not None
    return total


def scattered_inputs(
    g: TokenGraph,
    keys: Tensor,
    edge_attr: object,
    grid: tuple[int, int, int],
    lengths: Tensor | None = None,
    tag: Hashable = None,
    edges: Tensor | None = None,
) -> GridInput | None:
    """The graph's per-edge inputs of one value per edge ([E] or [E, 1], no gradient) on the
    padded grid, 0 off the edges, kept per graph and input tensor (the same GridInput while
    the tensors are the same objects, unchanged: across layers and steps). None when there
    are none (other inputs are left out: a bias reading them has no grid form). The GridInput
    carries the graph's closed cells (``closed_cells``).

    ``keys`` may cover a subset of the edges (a bucket of the graph's sequences,
    ``dense_buckets``): then ``edges`` [E_b] are their ids, ``lengths`` [B] the query lengths
    of the grid's sequences and ``tag`` names the subset in the graph's cache.

    Shapes:
        keys [E] (``dense_keys``), grid (B, L_q, L_k) -> each input [B, 1, L_q, L_k].
    """
    if edge_attr is None or isinstance(edge_attr, GridInput) or torch.compiler.is_compiling():
        return None
    given = dict(edge_attr) if isinstance(edge_attr, Mapping) else {UNNAMED: edge_attr}
    named: dict[str, Tensor] = {n: t for n, t in given.items() if isinstance(t, Tensor)}
    E = g.num_edges
    flat = {
        n: t.reshape(E)
        for n, t in named.items()
        if not t.requires_grad
        and t.numel() == E
        and (t.dim() == 1 or (t.dim() == 2 and t.size(1) == 1))
    }
    if not flat:
        return None
    memo: dict[str, object] = g.derived(("dense_scattered_inputs", tag), dict, keys.device)
    gen = _values_generation(g, {n: named[n] for n in flat})  # changes on any new value
    seen: list[tuple[str, object, int]] = [
        (n, t, _version(t)) for n, t in named.items() if n in flat
    ]
    seen.append(("", None, gen))  # compared with ==, as the version counters
    last = memo.get("last")
    if isinstance(last, tuple) and len(last[0]) == len(seen):
        if all(a[0] == b[0] and a[1] is b[1] and a[2] == b[2] for a, b in zip(last[0], seen)):
            return last[1]  # type: ignore[no-any-return]
    B, Lq, Lk = grid
    grids = {}
    for n, t in flat.items():
        vals = t if edges is None else t.index_select(0, edges)  # [E | E_b]
        cells = t.new_zeros(B * Lq * Lk).index_copy(0, keys, vals).view(B, 1, Lq, Lk)
        grids[n] = (cells, lambda t=named[n]: t)  # per edge: the tensor itself
    closed, _, edge_cells = _cells(g, keys, grid, lengths, tag)
    made = GridInput(grids, closed, given={n: named[n] for n in flat}, edge_cells=edge_cells)
    memo["last"] = (seen, made)
    return made


def _version(t: Tensor) -> int:
    """``t``'s version counter, or -1 for an inference tensor, which has none (its values are
    compared on every call anyway: ``_values_generation``)."""
    return -1 if t.is_inference() else t._version


def _values_generation(g: TokenGraph, inputs: dict[str, Tensor]) -> int:
    """A number that changes whenever the values of ``inputs`` differ from the last call's on
    this graph: a write through ``.data`` or numpy bumps no version counter, so the values
    themselves are compared (one ``torch.equal`` per input, against a private copy; the
    caller keys on the tensors' identity and version as well)."""
    memo: dict[str, Any] = g.derived(("dense_scattered_values",), dict)
    saved = memo.get("saved")
    same = (
        isinstance(saved, dict)
        and saved.keys() == inputs.keys()
        and all(saved[n].dtype == t.dtype and torch.equal(saved[n], t) for n, t in inputs.items())
    )
    if not same:
        memo["gen"] = int(memo.get("gen", 0)) + 1
        memo["saved"] = {n: t.detach().clone() for n, t in inputs.items()}
    return int(memo["gen"])


def closed_cells(
    g: TokenGraph,
    keys: Tensor,
    grid: tuple[int, int, int],
    lengths: Tensor | None = None,
    tag: Hashable = None,
) -> tuple[Tensor, Tensor]:
    """The grid's cells that are not edges of the graph, in its real rows, and its real
    targets without an edge; once per graph (and ``tag``):

        closed[b, 0, i, j] = (j → i) is not an edge and i < length(b)

    Padding rows (i past its sequence's length) stay open, so SDPA can normalise them (their
    output is never read).

    Shapes:
        keys [E] (or [E_b]), grid (B, L_q, L_k), lengths [B] (default: the graph's query
        lengths) -> closed [B, 1, L_q, L_k], rows [B, 1, L_q, 1], both bool.
    """
    closed, rows, _ = _cells(g, keys, grid, lengths, tag)
    return closed, rows


def _cells(
    g: TokenGraph,
    keys: Tensor,
    grid: tuple[int, int, int],
    lengths: Tensor | None,
    tag: Hashable,
) -> tuple[Tensor, Tensor, Tensor]:
    """``closed_cells``' two grids and the edge cells themselves (True where (j → i) is an
    edge) [B, 1, L_q, L_k], once per graph and ``tag``."""
    B, Lq, Lk = grid

    def build() -> tuple[Tensor, Tensor, Tensor]:
        dev = keys.device
        allowed = torch.zeros(B * Lq * Lk, dtype=torch.bool, device=dev).index_fill(0, keys, True)
        allowed = allowed.view(B, 1, Lq, Lk)
        lens = torch.tensor(g.sequence_lengths("dst"), device=dev) if lengths is None else lengths
        pad = (torch.arange(Lq, device=dev) >= lens[:, None]).view(B, 1, Lq, 1)  # [B, 1, L_q, 1]
        return ~(allowed | pad), no_key(allowed) & ~pad, allowed

    return g.derived(("dense_closed", Lq, Lk, tag), build, keys.device)


def edge_base(
    g: TokenGraph,
    keys: Tensor,
    grid: tuple[int, int, int],
    lengths: Tensor | None = None,
    tag: Hashable = None,
) -> tuple[Tensor, Tensor]:
    """The graph's own additive mask and its rows without a key, once per graph:

        base[b, 0, i, j] = −∞ on the closed cells (``closed_cells``), 0 elsewhere

    Shapes:
        keys [E], grid (B, L_q, L_k) -> base [B, 1, L_q, L_k], rows [B, 1, L_q, 1] bool.
    """
    closed, rows = closed_cells(g, keys, grid, lengths, tag)

    def build() -> Tensor:
        return torch.zeros(closed.shape, device=keys.device).masked_fill(closed, float("-inf"))

    return g.derived(("dense_edge_base", grid[1], grid[2], tag), build, keys.device), rows


def grid_mask(
    biases: tuple[ScoreBias, ...],
    scattered: GridInput | None,
    g: TokenGraph,
    keys: Tensor,
    shape: tuple[int, int, int, int],
    dtype: torch.dtype,
    lengths: Tensor | None = None,
    tag: Hashable = None,
) -> tuple[Tensor, Tensor | None] | None:
    """M from the biases' grid forms on the graph's scattered inputs, or None when a bias has
    none: one bias's ``masked_grid`` (−∞ on the closed cells in the same gather), else
    ``bias_grid`` + ``edge_base``. Also the rows without a key when they are only the graph's
    own edgeless targets (no bias value is −∞), else None.

    Shapes:
        keys [E] (or a bucket's [E_b]), shape (B, H, L_q, L_k) -> M [B, H | 1, L_q, L_k],
        rows [B, 1, L_q, 1] bool.
    """
    grid = (shape[0], shape[2], shape[3])
    if len(biases) == 1 and scattered is not None:
        mask = biases[0].masked_grid(scattered)
        if mask is not None:  # finite on every open cell
            return mask.to(dtype), closed_cells(g, keys, grid, lengths, tag)[1]
    total = bias_grid(biases, scattered, shape, dtype)
    if total is None or total.dtype == torch.bool:
        return None
    base, real_rows = edge_base(g, keys, grid, lengths, tag)
    finite = not torch.compiler.is_compiling() and bool(total.detach().amin() > float("-inf"))
    return total + base.to(total.dtype), real_rows if finite else None


def edge_values(p: Problem) -> tuple[Tensor, bool]:
    """Σ_b b(j → i) on every edge, exactly as the edge backend computes it, in q's dtype, and
    whether no value is −∞ (then the graph's edgeless targets are the only rows without a key;
    not checked under torch.compile).

    Shapes:
        -> [E, 1 | H].
    """
    g, E = p.graph, p.graph.num_edges
    _, biases = p.score.parts()
    edges = Edges(g.edge_index[0], g.edge_index[1], g, p.edge_attr, p.positions)
    vals = sum((b(edges) for b in biases), torch.zeros((), device=g.device)).to(p.q.dtype)
    if vals.dim() < 2:
        vals = vals.expand(E, 1) if vals.dim() == 0 else vals.unsqueeze(-1)
    vals = vals.expand(E, vals.size(-1))  # [E, 1 | H]
    finite = not torch.compiler.is_compiling() and not bool(torch.isneginf(vals).any())
    return vals, finite


def scatter_values(vals: Tensor, keys: Tensor, grid: tuple[int, int, int]) -> Tensor:
    """Per-edge values on the padded grid (differentiably), −∞ off the edges:
    M[b, h, i, j] = vals[e, h] for the edge e whose cell (``keys``) is (b, i, j).

    Shapes:
        vals [E, w], keys [E] in [0, B·L_q·L_k), grid (B, L_q, L_k) -> [B, w, L_q, L_k].
    """
    B, Lq, Lk = grid
    width, size = vals.size(-1), Lq * Lk  # w: 1 or H
    seq, rest = torch.div(keys, size, rounding_mode="floor"), keys % size  # [E]
    heads = torch.arange(width, device=keys.device)  # [w]
    flat = (seq[:, None] * width + heads) * size + rest[:, None]  # [E, w]
    full = torch.full((B * width * size,), float("-inf"), dtype=vals.dtype, device=vals.device)
    return full.index_put((flat.reshape(-1),), vals.reshape(-1)).view(B, width, Lq, Lk)


def no_key(mask: Tensor) -> Tensor:
    """Rows of a bool (True = may attend) or additive mask that allow no key, by a max over the
    keys (on CPU about 100x faster than a bool ``any`` or an ``isneginf(...).all``).

    Shapes:
        mask [.., L_q, L_k] -> [.., L_q, 1] bool.
    """
    if mask.dtype == torch.bool:
        return mask.view(torch.uint8).amax(-1, keepdim=True) == 0
    return mask.amax(-1, keepdim=True) == float("-inf")


def guard_empty_rows(mask: Tensor, rows: Tensor | None = None) -> tuple[Tensor | None, Tensor]:
    """Rows of ``mask`` that allow no key -> (rows [.., L_q, 1] or None, a mask SDPA can run).

    SDPA returns NaN on such rows (and NaN gradients); the graph formula gives 0. The rows are
    opened to every key (any finite row would do) and their output is zeroed afterwards, which
    also zeroes their gradient. ``rows`` gives them when known (from the graph's in-degrees);
    otherwise they are found by a pass over the mask.
    """
    if rows is None:
        rows = no_key(mask)  # [.., L_q, 1]
    if not torch.compiler.is_compiling() and not bool(rows.any()):
        return None, mask
    if mask.dtype == torch.bool:
        return rows, mask | rows
    return rows, mask.masked_fill(rows, 0.0)


def sink_mask(
    mask: Tensor | None,
    causal: bool,
    sinks: Tensor,
    shape: tuple[int, int, int],
    dtype: torch.dtype,
) -> Tensor:
    """The additive mask with one more key column, the sink: [B | 1, H, L_q, L_k + 1].

    Column L_k holds s_h for every query (its key and value are 0, so its logit is the mask
    value alone): softmax over the row is exp(α_ij) / (exp(s_h) + Σ_k exp(α_ik)).
    """
    H, Lq, Lk = shape
    if mask is None:
        base = torch.zeros(1, 1, Lq, Lk, dtype=dtype, device=sinks.device)  # [1, 1, L_q, L_k]
        if causal:
            allowed = torch.ones(Lq, Lk, dtype=torch.bool, device=sinks.device).tril()
            base = base.masked_fill(~allowed, float("-inf"))
    elif mask.dtype == torch.bool:
        base = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        base = base.masked_fill(~mask, float("-inf"))
    else:
        base = mask.to(dtype)
    if base.dim() == 3:  # [H, L_q, L_k] (position biases of a tagged graph)
        base = base.unsqueeze(0)
    rows = base.size(0)
    col = sinks.to(dtype).view(1, H, 1, 1).expand(rows, H, Lq, 1)  # [B | 1, H, L_q, 1]
    return torch.cat([base.expand(rows, H, Lq, Lk), col], -1)  # [B | 1, H, L_q, L_k + 1]
