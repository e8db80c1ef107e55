"""The dense backend: one ``F.scaled_dot_product_attention`` call for graphs that live inside
their sequences.

On the complete graph of one sequence, graph attention is dense attention (docs/math.md, eq. 4):

    out = softmax(s · Q Kᵀ + M) V,   s = 1/√D (scaled_dot) or 1 (dot)      [B, H, L_q, D]

and any graph whose edges stay inside the sequences of a batch is the same formula with the
additive mask (docs/math.md, eq. 5)

    M[b, h, i, j] = Σ_biases b_h(i, j)  if (j → i) is an edge,   −∞ otherwise.

Three plans, chosen per graph (``DenseBackend.plan``):

``tagged``   a complete, causal or bipartite graph whose tag holds (``trusted_structure``),
             with no bias or only position biases (their dense form): SDPA's ``is_causal`` or
             a small [L, L] mask; the edges are never read.
``mask``     a graph built from a dense mask (``from_mask``, ``from_padding_mask``, the
             drop-ins' masks) without biases: SDPA gets that mask as it is.
``scatter``  any other graph inside its sequences, without duplicate edges (checked once per
             graph in O(E), cached): the flat index of every edge in the padded [B, L_q, L_k]
             grid is computed once; M is built by one scatter of the edges (and of the biases'
             per-edge values [E, H], evaluated exactly as on the edge backend, so any
             ``ScoreBias`` runs here: Graphormer's distances, edge features, float masks).

A block-diagonal batch (``graph.lengths``) runs without a Python loop over sequences: tokens are
scattered into a padded [B, H, L_max, D] tensor with one ``index_copy`` (sequences of one length
need no padding at all, and their output is a view), and padded keys are masked out.

A target with no in-edge (or whose every edge has bias −∞) gets out_i = 0, as on the edge
backend (the neighbourhood softmax of an empty or all −∞ set is 0); SDPA alone would give NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..graph import TokenGraph
from ..scores import POSITION, DenseContext
from .base import Backend, BackendOutput, Problem
from .bias_sdpa import biased_sdpa, use_biased_sdpa
from .dense_buckets import run_buckets
from .dense_mask import (
    bias_grid,
    edge_values,
    grid_mask,
    guard_empty_rows,
    no_key,
    scatter_values,
    scattered_inputs,
    sink_mask,
)
from .sdpa import sdpa

__all__ = ["MIN_DENSE_DENSITY", "DenseBackend", "dense_density", "dense_keys"]

#: ``backend="auto"`` takes the scatter plan when the edges fill at least this share of the
#: padded per-sequence grid B·L_q·L_k (SDPA does the whole grid; the edge path only E).
MIN_DENSE_DENSITY = 0.25


def _side(lengths: tuple[int, ...], n: int, device: torch.device) -> tuple[int, Tensor | None]:
    """(L_max, flat index [n] into B·L_max, or None when all lengths are equal: a plain view)."""
    L = max(lengths)
    if all(m == L for m in lengths):
        return L, None
    lens = torch.tensor(lengths, device=device)  # [B]
    # output_size: a size known without reading ``lens`` (no graph break under torch.compile)
    seq = torch.arange(len(lengths), device=device).repeat_interleave(lens, output_size=n)  # [n]
    starts = torch.cumsum(lens, 0) - lens  # [B]
    pos = torch.arange(n, device=device) - starts.repeat_interleave(lens, output_size=n)  # [n]
    return L, seq * L + pos


def _grid(g: TokenGraph) -> tuple[int, int, int]:
    """(B, L_q, L_k): the padded grid of the graph's sequences."""
    q_len, k_len = g.sequence_lengths("dst"), g.sequence_lengths("src")
    # not max(..., default=0): dynamo cannot run that on symbolic lengths (dynamic=True)
    return len(q_len), max(q_len) if q_len else 0, max(k_len) if k_len else 0


def dense_density(g: TokenGraph) -> float:
    """E / (B · L_q · L_k): the share of the padded per-sequence grid the edges fill, O(1)."""
    B, Lq, Lk = _grid(g)
    return g.num_edges / max(B * Lq * Lk, 1)


def dense_keys(g: TokenGraph) -> Tensor | str:
    """Flat index of every edge in the padded grid, LongTensor [E]:

        key(j → i) = (seq(i) · L_q + pos(i)) · L_k + pos(j)

    or, when the graph cannot be one masked SDPA call, the reason (a str): the two sides have
    different numbers of sequences, an edge joins two sequences, or an edge repeats (SDPA
    counts a key once; the edge softmax counts each copy). Cached per graph, O(E).
    """

    def build() -> Tensor | str:
        q_len, k_len = g.sequence_lengths("dst"), g.sequence_lengths("src")
        if len(q_len) != len(k_len):
            return (
                f"queries come in {len(q_len)} sequences but keys in {len(k_len)}: no per-"
                "sequence grid"
            )
        _, Lq, Lk = _grid(g)
        src, dst = g.edge_index[0], g.edge_index[1]  # [E]
        seq = g.sequence("dst").index_select(0, dst)  # [E]
        if not torch.equal(seq, g.sequence("src").index_select(0, src)):
            return "an edge joins two sequences of the batch"
        pos_i = g.positions("dst").index_select(0, dst)  # [E]
        pos_j = g.positions("src").index_select(0, src)  # [E]
        keys = (seq * Lq + pos_i) * Lk + pos_j  # [E]
        if torch.unique(keys).numel() != keys.numel():  # O(E) memory, whatever B·L_q·L_k is
            return "the graph has duplicate edges (SDPA would count them once)"
        return keys

    if _in_grid_order(g):
        return g.derived("dense_keys", lambda: torch.arange(g.num_edges, device=g.device))
    if torch.compiler.is_compiling():
        return "under torch.compile the per-edge grid index is not built"
    return g.derived("dense_keys", build)


def _in_grid_order(g: TokenGraph) -> bool:
    """True when edge e is grid cell e (keys = arange(E), nothing to check): a trusted complete
    graph with self-loops or a bipartite graph, all of whose sequences have one length (the
    builders sort edges by target, then source). Decided from the tag alone: O(1)."""
    tag = g.trusted_structure()
    if tag not in ("complete", "bipartite"):
        return False
    if tag == "complete" and not g.params.get("self_loops", True):
        return False
    q_len, k_len = g.sequence_lengths("dst"), g.sequence_lengths("src")
    return len(q_len) == len(k_len) and len(set(q_len)) == 1 and len(set(k_len)) == 1


class DenseBackend(Backend):
    """Graph attention by one SDPA call on graphs that stay inside their sequences.

    .. math::
        \\mathrm{out} = \\mathrm{softmax}(s\\,QK^\\top + M)\\,V

    with M = the biases on edges and −∞ elsewhere (Vaswani et al. 2017, "Attention Is All You
    Need"; docs/math.md, eqs. 4-5). Runs a score that declares an ``sdpa_scale`` s, plus any
    biases: position biases (``kind="position"``) by their dense form on a tagged graph, any
    bias by its per-edge values otherwise. ``backend="auto"`` picks it only for a tagged graph,
    a graph built from a mask, or one that fills at least MIN_DENSE_DENSITY of its padded grid.
    Returns out [N_t, H, D]; scores and weights are None (``attend`` takes them from the edge
    formula when asked).
    """

    name = "dense"
    grouped_kv = True  # SDPA's enable_gqa: k and v keep their H_kv heads
    sequence_layout = True  # q, k, v per sequence [B, h, L, D] are SDPA's own layout

    def _score_reasons(self, p: Problem) -> list[str]:
        base, _ = p.score.parts()
        why = []
        if base.sdpa_scale(p.q.size(-1)) is None:
            why.append(
                f"score {base.name!r} is not s·<q_i, k_j> (it declares no sdpa_scale), which "
                "SDPA computes"
            )
        return why + self.per_edge_reasons(p)

    def plan(self, p: Problem) -> tuple[str | None, tuple[str, ...]]:
        """("tagged" | "mask" | "scatter", (why,)) when SDPA can run ``p``, else (None, every
        reason it cannot). O(1) on a tagged or mask graph; the scatter plan's O(E) check of
        the edges runs once per graph (cached)."""
        why = self._score_reasons(p)
        if why:
            return None, tuple(why)
        _, biases = p.score.parts()
        g = p.graph
        if g.num_src == 0 or g.num_dst == 0:  # also a batch of no sequences (B = 0)
            return None, (f"the graph has no nodes on one side (N_s={g.num_src}, N_t={g.num_dst})",)
        tag = g.trusted_structure()
        if tag is not None:
            if tag != "bipartite" and g.num_src != g.num_dst:
                return None, (f"graph is bipartite (num_src={g.num_src}, num_dst={g.num_dst})",)
            if not biases:
                return "tagged", (f"{tag} graph: SDPA without reading the edges",)
            position_biases = all(b.kind == POSITION for b in biases)
            if tag != "bipartite" and p.positions is None and position_biases:
                return "tagged", (f"{tag} graph with position biases: SDPA with their dense form",)
        elif g._stored_mask() is not None and not biases:
            return "mask", ("graph built from a dense mask: SDPA with that mask",)
        keys = dense_keys(g)
        if isinstance(keys, str):
            if g.structure in ("complete", "causal", "bipartite") and tag is None:
                keys = f"the graph's {g.structure!r} tag does not match its edges, and {keys}"
            return None, (keys,)
        return "scatter", (
            "graph inside its sequences: SDPA with the edges (and biases) as a mask",
        )

    def supports(self, p: Problem) -> tuple[str, ...]:
        plan, why = self.plan(p)
        return () if plan is not None else why

    def auto_reasons(self, p: Problem) -> tuple[str, ...]:
        """``supports``, after the O(1) cost rule: a graph that is neither tagged nor built
        from a mask must fill at least MIN_DENSE_DENSITY of its padded per-sequence grid (SDPA
        computes the whole grid, the edge backend only E entries). Only a graph that passes
        pays for the scatter plan's O(E) check."""
        g = p.graph
        why = self._score_reasons(p)
        if g.trusted_structure() is None and g._stored_mask() is None:
            fill = dense_density(g)
            if fill < MIN_DENSE_DENSITY:
                why.append(
                    f"the edges fill {100 * fill:.1f} % of the padded per-sequence grid "
                    f"B·L_q·L_k, below {100 * MIN_DENSE_DENSITY:.0f} %: SDPA would compute "
                    "mostly masked entries"
                )
        return tuple(why) if why else self.supports(p)

    def explain(self, p: Problem) -> str:
        return f"{self.plan(p)[1][0]} (score {p.score.name!r})"

    def run(self, p: Problem) -> BackendOutput:
        plan, why = self.plan(p)  # cached per graph: a direct call never trusts an unchecked tag
        if plan is None:
            raise ValueError(f"dense backend cannot run score {p.score.name!r}: {'; '.join(why)}")
        q, k, v, g = p.q, p.k, p.v, p.graph
        base, _ = p.score.parts()
        H, D = q.size(1), q.size(-1)
        B, Lq, Lk = _grid(g)
        dropout, scale = p.dropout if p.training else 0.0, base.sdpa_scale(D)
        if plan == "scatter":  # mixed lengths: one call per length bucket (dense_buckets.py)
            bucketed = run_buckets(p, scale, dropout)
            if bucketed is not None:
                return BackendOutput(bucketed, None, None)
        # [N_t], [N_s] into the padded grid; None: a plain view
        q_index: Tensor | None = None
        k_index: Tensor | None = None
        if q.dim() == 4:  # per sequence, [B, h, L, D] (``Problem``): SDPA's layout already
            if tuple(q.shape[::2]) != (B, Lq) or tuple(k.shape[::2]) != (B, Lk):
                raise ValueError(
                    f"dense backend: per-sequence q {list(q.shape)} and k {list(k.shape)} do not "
                    f"match the graph's grid (B, L_q, L_k) = ({B}, {Lq}, {Lk})"
                )
        else:
            # padding indices depend only on the graph: once per graph, reused by every layer
            (_, q_index), (_, k_index) = g.derived(
                "dense_sides",
                lambda: (
                    _side(g.sequence_lengths("dst"), g.num_dst, q.device),
                    _side(g.sequence_lengths("src"), g.num_src, q.device),
                ),
                q.device,
            )

        def pad(t: Tensor, index: Tensor | None, n: int) -> Tensor:  # [N, h, D] -> [B, h, n, D]
            if t.dim() == 4:  # per sequence already
                return t
            h = t.size(1)  # H, or H_kv for grouped keys and values
            if index is not None:
                t = t.new_zeros(B * n, h, D).index_copy(0, index, t)  # [B·n, h, D]
            return t.view(B, n, h, D).transpose(1, 2)

        causal = False
        mask: Tensor | None = None  # bool (True = may attend) or additive float
        rows: Tensor | None = None  # [B, 1, L_q, 1] targets without an edge, when known
        if plan == "tagged":
            mask, causal = self._tagged_mask(p, Lk, k_index)
        elif plan == "mask":
            m = g._stored_mask()
            assert m is not None
            allowed = m.unsqueeze(1)  # [B, 1, L_q | 1, L_k]
            mask = allowed
            # rows that allow no key depend on the graph only: found once, not on every call
            rows = g.derived("dense_mask_rows", lambda: no_key(allowed), m.device)
        else:
            mask, rows = self._scatter_mask(p, B, Lq, Lk)
        empty: Tensor | None = None  # [B, 1 | H, L_q, 1]: targets with no edge (or all -inf)
        if mask is not None:
            empty, mask = guard_empty_rows(mask, rows)
        kp, vp = pad(k, k_index, Lk), pad(v, k_index, Lk)  # [B, H_kv, L_k, D]
        if p.sinks is not None:  # one more key per sequence: logit s_h (in the mask), value 0
            mask = sink_mask(mask, causal, p.sinks, (H, Lq, Lk), q.dtype)
            causal = False
            kp, vp = (F.pad(t, (0, 0, 0, 1)) for t in (kp, vp))  # [B, H_kv, L_k + 1, D]
        if mask is not None and scale is not None and use_biased_sdpa(q, k, mask, dropout):
            out = biased_sdpa(pad(q, q_index, Lq), kp, vp, mask, scale)  # a learned bias
        else:
            out = sdpa(  # F.scaled_dot_product_attention, differentiable twice
                pad(q, q_index, Lq),
                kp,
                vp,
                attn_mask=mask,
                dropout_p=dropout,
                is_causal=causal,
                scale=scale,
                enable_gqa=k.size(1) != H,
            )  # [B, H, L_q, D]
        if empty is not None:
            out = out.masked_fill(empty, 0.0)
        out = out.transpose(1, 2).reshape(B * Lq, H, D)  # [B·L_q, H, D]
        if q_index is not None:
            out = out.index_select(0, q_index)  # [N_t, H, D]
        return BackendOutput(out, None, None)

    @staticmethod
    def _tagged_mask(p: Problem, L: int, k_index: Tensor | None) -> tuple[Tensor | None, bool]:
        """(mask [.., L_q, L_k] or None, is_causal) of a trusted complete / causal / bipartite
        graph: its own pattern, padded keys, and the dense form of position biases."""
        g, q = p.graph, p.q
        _, biases = p.score.parts()
        causal = g.structure == "causal"
        self_loops = bool(g.params.get("self_loops", True))
        allowed: Tensor | None = None  # [.., L, L] boolean, True = may attend
        if causal and (not self_loops or biases):
            allowed = torch.ones(L, L, dtype=torch.bool, device=q.device).tril(
                0 if self_loops else -1
            )
        elif not self_loops:
            allowed = ~torch.eye(L, dtype=torch.bool, device=q.device)
        if k_index is not None and not causal:  # right padding: causal rows never see padded keys
            lens = torch.tensor(g.sequence_lengths("src"), device=q.device)  # [B]
            keys = (torch.arange(L, device=q.device) < lens[:, None])[:, None, None, :]
            allowed = keys if allowed is None else allowed & keys  # [B, 1, 1, L]
        if not biases:
            return allowed, causal and allowed is None
        pos = torch.arange(L, device=q.device)
        ctx = DenseContext(pos, pos)
        bias = torch.stack([b.dense(ctx) for b in biases]).sum(0).to(q.dtype)  # [H, L, L]
        return (bias if allowed is None else bias.masked_fill(~allowed, float("-inf"))), False

    @staticmethod
    def _scatter_mask(p: Problem, B: int, Lq: int, Lk: int) -> tuple[Tensor, Tensor | None]:
        """M [B, 1 | H, L_q, L_k]: the edges (True) as a bool mask without biases; with biases
        their per-edge values [E, 1 | H] on the edges and −∞ elsewhere (differentiable, and
        contiguous in SDPA's layout). Also the rows without any edge [B, 1, L_q, 1] when no
        bias value is −∞ (then those are the only rows SDPA cannot normalise), else None.

        Biases with a grid form (``ScoreBias.dense_grid``) skip the per-edge values: on a graph
        in grid order they read the edge input's own grid (the drop-in's masks); otherwise
        from the per-edge inputs scattered into the grid once per graph and tensor
        (``scattered_inputs``), plus the graph's 0 / −∞ mask (``edge_base``)."""
        g = p.graph
        _, biases = p.score.parts()
        if biases and _in_grid_order(g):  # the grid is the graph: biases read from grids
            grid = bias_grid(biases, p.edge_attr, (B, p.q.size(1), Lq, Lk), p.q.dtype)
            if grid is not None:
                return grid, None
        keys = dense_keys(g)
        assert isinstance(keys, Tensor)
        dev = keys.device

        def edgeless() -> Tensor:  # [B, 1, L_q, 1], from the in-degrees: once per graph
            rows = torch.ones(B * Lq, dtype=torch.bool, device=dev)
            return rows.index_fill(0, torch.div(keys, Lk, rounding_mode="floor"), False).view(
                B, 1, Lq, 1
            )

        if not biases:

            def allowed() -> Tensor:
                flat = torch.zeros(B * Lq * Lk, dtype=torch.bool, device=dev)
                return flat.index_fill(0, keys, True).view(B, 1, Lq, Lk)

            return g.derived("dense_allowed", allowed, dev), g.derived(
                "dense_edgeless", edgeless, dev
            )
        scattered = scattered_inputs(g, keys, p.edge_attr, (B, Lq, Lk))  # once per graph
        made = grid_mask(biases, scattered, g, keys, (B, p.q.size(1), Lq, Lk), p.q.dtype)
        if made is not None:  # every bias from its grid form
            return made
        vals, finite = edge_values(p)  # [E, 1 | H], as on the edge backend
        rows = g.derived("dense_edgeless", edgeless, dev) if finite else None
        if _in_grid_order(g):  # edge e is grid cell e: the values are the grid already
            width = vals.size(-1)
            return vals.reshape(B, Lq, Lk, width).permute(0, 3, 1, 2).contiguous(), rows
        return scatter_values(vals, keys, (B, Lq, Lk)), rows
