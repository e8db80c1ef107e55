"""Padding per length bucket: the dense backend's scatter plan on sequences of mixed lengths.

One padded grid [B, H, L_max, L_max] spends most of its passes on padding when the lengths
vary (graphs of 30-60 nodes: 44 % of every cell). Sorted by length and cut into a few buckets,
each padded only to its own longest sequence, the same attention runs as one SDPA (or
``biased_sdpa``) call per bucket:

    out_b = softmax(s · Q_b K_bᵀ + M_b) V_b        Q_b [n_b, H, L_q^b, D]      (docs/math.md, eq. 5)

with M_b the bucket's part of the mask: its edges (and biases), −∞ elsewhere. The cut minimises

    Σ_b n_b · L_q^b · L_k^b  +  BUCKET_CELLS · (number of buckets)

(the cells computed, plus a fixed cost per call) over cuts of the sorted lengths, by dynamic
programming; when one bucket is best the plain grid runs. On CPU only: the cost per call was
measured there (on a GPU, where a call is several kernel launches, the single grid runs). Everything here depends only on the
graph and is kept on it (``TokenGraph.derived``): the plan, the tokens' rows in the buckets'
padded buffers, each edge's cell, and per bucket the scattered inputs and closed cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..graph import TokenGraph
from .base import Problem
from .bias_sdpa import biased_sdpa, use_biased_sdpa
from .dense_mask import (
    closed_cells,
    edge_values,
    grid_mask,
    guard_empty_rows,
    scatter_values,
    scattered_inputs,
)
from .sdpa import sdpa

__all__ = ["BUCKET_CELLS", "Bucket", "bucket_plan", "run_buckets", "split_lengths"]

#: The fixed cost of one more bucket, in grid cells: about what the calls of one more SDPA
#: forward and backward cost on CPU next to the passes over its cells.
BUCKET_CELLS = 4096

#: Distinct sizes beyond this are merged into as many runs of equal count first (the cut's
#: dynamic programme is quadratic in them).
_MAX_UNITS = 256


@dataclass(frozen=True)
class Bucket:
    """Sequences padded together: ``count`` of them on an [L_q, L_k] grid.

    Attributes:
        count, Lq, Lk: the grid [count, L_q, L_k].
        q_start, k_start: its first row in the padded query and key buffers.
        keys: [E_b] each of its edges' cell in its grid, (s · L_q + i) · L_k + j.
        edges: [E_b] those edges' ids.
        lengths: [count] its sequences' query lengths.
    """

    count: int
    Lq: int
    Lk: int
    q_start: int
    k_start: int
    keys: Tensor
    edges: Tensor
    lengths: Tensor


@dataclass(frozen=True)
class BucketPlan:
    """The buckets, and every token's row in the padded buffers ([N_t] and [N_s])."""

    buckets: tuple[Bucket, ...]
    q_index: Tensor
    k_index: Tensor
    q_rows: int
    k_rows: int
    overhead: int  # the BUCKET_CELLS the cut was made with (names its caches on the graph)


def split_lengths(sizes: list[tuple[int, int]], overhead: int) -> list[list[int]]:
    """Cut sequences into buckets minimising Σ_b n_b · max L_q · max L_k + overhead · #buckets.

    The sequences are sorted by (L_q, L_k) and cut into contiguous runs (optimal for L_q = L_k).

    Shapes:
        sizes: (L_q, L_k) per sequence -> the buckets' sequence ids, shortest first.
    """
    order = sorted(range(len(sizes)), key=lambda s: sizes[s])
    units: list[list[int]] = []  # runs of sequences of one size (or merged runs)
    for s in order:
        if units and sizes[units[-1][0]] == sizes[s]:
            units[-1].append(s)
        else:
            units.append([s])
    if len(units) > _MAX_UNITS:
        step = -(-len(order) // _MAX_UNITS)
        units = [order[i : i + step] for i in range(0, len(order), step)]
    U = len(units)
    count = [len(u) for u in units]
    lq = [max(sizes[s][0] for s in u) for u in units]
    lk = [max(sizes[s][1] for s in u) for u in units]
    best = [0] + [0] * U  # best[u]: the cheapest cut of units[:u]
    cut = [0] * (U + 1)
    for end in range(1, U + 1):
        n, kmax, best_cost, best_start = 0, 0, -1, 0
        for start in range(end - 1, -1, -1):  # the last bucket is units[start:end]
            n += count[start]
            kmax = max(kmax, lk[start])
            cost = best[start] + overhead + n * lq[end - 1] * kmax
            if best_cost < 0 or cost < best_cost:
                best_cost, best_start = cost, start
        best[end], cut[end] = best_cost, best_start
    groups: list[list[int]] = []
    end = U
    while end > 0:
        groups.append([s for u in units[cut[end] : end] for s in u])
        end = cut[end]
    return groups[::-1]


def bucket_plan(g: TokenGraph) -> BucketPlan | None:
    """The graph's buckets (``split_lengths``), or None when one grid is best or a sequence is
    empty on one side. Built once per graph, O(N + E); the graph's edges must lie inside its
    sequences (the scatter plan's check, ``dense_keys``).
    """

    overhead = BUCKET_CELLS

    def build() -> BucketPlan | None:
        q_len, k_len = g.sequence_lengths("dst"), g.sequence_lengths("src")
        if len(q_len) < 2 or min(q_len) == 0 or min(k_len) == 0:
            return None
        groups = split_lengths(list(zip(q_len, k_len)), overhead)
        if len(groups) < 2:
            return None
        dev = g.edge_index.device
        B = len(q_len)
        bucket_of, local_of = [0] * B, [0] * B
        q_base, k_base = [0] * B, [0] * B  # each sequence's first row in the buffers
        sizes, q_rows, k_rows = [], 0, 0
        for b, seqs in enumerate(groups):
            Lq, Lk = max(q_len[s] for s in seqs), max(k_len[s] for s in seqs)
            for i, s in enumerate(seqs):
                bucket_of[s], local_of[s] = b, i
                q_base[s], k_base[s] = q_rows + i * Lq, k_rows + i * Lk
            sizes.append((len(seqs), Lq, Lk, q_rows, k_rows))
            q_rows, k_rows = q_rows + len(seqs) * Lq, k_rows + len(seqs) * Lk

        def rows(side: str, base: list[int]) -> Tensor:  # [N]: each token's row
            seq = g.sequence(side)
            return torch.tensor(base, device=dev).index_select(0, seq) + g.positions(side)

        q_index, k_index = rows("dst", q_base), rows("src", k_base)
        src, dst = g.edge_index[0], g.edge_index[1]  # [E]
        seq = g.sequence("dst").index_select(0, dst)  # [E]
        which = torch.tensor(bucket_of, device=dev).index_select(0, seq)  # [E]
        lq = torch.tensor([s[1] for s in sizes], device=dev).index_select(0, which)  # [E]
        lk = torch.tensor([s[2] for s in sizes], device=dev).index_select(0, which)  # [E]
        local = torch.tensor(local_of, device=dev).index_select(0, seq)  # [E]
        pos_i = g.positions("dst").index_select(0, dst)  # [E]
        pos_j = g.positions("src").index_select(0, src)  # [E]
        keys = (local * lq + pos_i) * lk + pos_j  # [E]: the cell in its bucket's grid
        order = torch.argsort(which, stable=True)  # [E]: edges by bucket
        per = torch.bincount(which, minlength=len(groups)).tolist()
        buckets = []
        for (n, Lq, Lk, q0, k0), ids, seqs in zip(sizes, order.split(per), groups, strict=True):
            lengths = torch.tensor([q_len[s] for s in seqs], device=dev)  # [n]
            buckets.append(Bucket(n, Lq, Lk, q0, k0, keys.index_select(0, ids), ids, lengths))
        return BucketPlan(tuple(buckets), q_index, k_index, q_rows, k_rows, overhead)

    return g.derived(("dense_buckets", overhead), build)


def _edgeless(g: TokenGraph, b: Bucket, tag: object) -> Tensor:
    """The bucket's rows without any edge, padding rows included: [n_b, 1, L_q^b, 1] bool
    (all −∞ in a grid of scattered per-edge values), once per graph."""

    def build() -> Tensor:
        rows = torch.ones(b.count * b.Lq, dtype=torch.bool, device=b.keys.device)
        has_edge = torch.div(b.keys, b.Lk, rounding_mode="floor")  # [E_b]: the edges' rows
        return rows.index_fill(0, has_edge, False).view(b.count, 1, b.Lq, 1)

    return g.derived(("dense_edgeless", tag), build, b.keys.device)


def run_buckets(p: Problem, scale: float | None, dropout: float) -> Tensor | None:
    """The scatter plan's attention, one call per bucket -> out [N_t, H, D_v], or None when
    the graph has no buckets (then the single grid runs). Each bucket's mask is made as the
    single grid's is: from the biases' grid forms, else from their per-edge values.

    Shapes:
        p.q [N_t, H, D], p.k [N_s, H_kv, D], p.v [N_s, H_kv, D_v] -> [N_t, H, D_v].
    """
    if torch.compiler.is_compiling() or p.sinks is not None or p.q.dim() != 3:
        return None
    if p.q.device.type != "cpu":  # BUCKET_CELLS is a CPU cost; a GPU call costs more launches
        return None
    g, q, k, v = p.graph, p.q, p.k, p.v
    plan = bucket_plan(g)
    if plan is None:
        return None
    _, biases = p.score.parts()
    H = q.size(1)
    masks: list[tuple[Tensor, Tensor | None]] = []
    values: tuple[Tensor, bool] | None = None
    for i, b in enumerate(plan.buckets):
        tag, grid = ("bucket", plan.overhead, i), (b.count, b.Lq, b.Lk)
        if not biases:  # the edges as a boolean mask
            closed, edgeless = closed_cells(g, b.keys, grid, b.lengths, tag)
            opened: Tensor = g.derived(("dense_open", tag), closed.logical_not)
            masks.append((opened, edgeless))
            continue
        attr = scattered_inputs(g, b.keys, p.edge_attr, grid, b.lengths, tag, b.edges)
        made = grid_mask(biases, attr, g, b.keys, (b.count, H, b.Lq, b.Lk), q.dtype, b.lengths, tag)
        if made is None:  # a bias without a grid form: its per-edge values, scattered
            if values is None:
                values = edge_values(p)  # [E, 1 | H], once for every bucket
            vals, finite = values
            grid_vals = scatter_values(vals.index_select(0, b.edges), b.keys, grid)
            made = grid_vals, _edgeless(g, b, tag) if finite else None
        masks.append(made)

    def pad(t: Tensor, index: Tensor, n: int) -> Tensor:  # [N, h, d] -> [n, h, d]
        return t.new_zeros(n, t.size(1), t.size(2)).index_copy(0, index, t)

    # one split per tensor: its backward is one concatenation, not a padded copy per bucket
    q_sizes = [b.count * b.Lq for b in plan.buckets]
    k_sizes = [b.count * b.Lk for b in plan.buckets]
    qs = pad(q, plan.q_index, plan.q_rows).split(q_sizes)  # [n_b · L_q^b, H, D] each
    ks = pad(k, plan.k_index, plan.k_rows).split(k_sizes)  # [n_b · L_k^b, H_kv, D] each
    vs = pad(v, plan.k_index, plan.k_rows).split(k_sizes)  # [n_b · L_k^b, H_kv, D_v] each
    outs = []
    for b, (bucket_mask, rows), *qkv in zip(plan.buckets, masks, qs, ks, vs, strict=True):
        empty, mask = guard_empty_rows(bucket_mask, rows)  # [n_b, 1, L_q^b, 1] or None
        qq, kk, vv = (  # [n_b, h, L, d]
            t.view(b.count, -1, t.size(1), t.size(2)).transpose(1, 2) for t in qkv
        )
        if scale is not None and use_biased_sdpa(qq, kk, mask, dropout):
            out = biased_sdpa(qq, kk, vv, mask, scale)  # a learned bias
        else:
            out = sdpa(
                qq,
                kk,
                vv,
                attn_mask=mask,
                dropout_p=dropout,
                scale=scale,
                enable_gqa=k.size(1) != H,
            )  # [n_b, H, L_q^b, D_v]
        if empty is not None:
            out = out.masked_fill(empty, 0.0)
        outs.append(out.transpose(1, 2).reshape(b.count * b.Lq, H, -1))  # [n_b · L_q^b, H, D_v]
    return torch.cat(outs).index_select(0, plan.q_index)  # [N_t, H, D_v]
