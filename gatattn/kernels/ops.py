"""Chunked gather–reduce primitives that never hold an [E, H, D] tensor.

The literal formulas gather per-edge vectors q_i, k_j, v_j ([E, H, D]) and reduce them. In eager
PyTorch that costs O(E·H·D) memory, and autograd keeps the gathered copies until backward
(this is why PyG's TransformerConv needs 8 GB at N=1024). Here each op walks the edges in chunks
of at most ``CHUNK_ELEMENTS`` gathered elements, and a custom autograd.Function recomputes the
gathers chunk by chunk in backward, so memory stays O(E·H + N·H·D). Sums over the edges of a
graph registered by the edge backend (``grouping``) run as one ``embedding_bag`` instead; large
graphs in eager fp32/fp64 use CSR matmuls (``SPARSE_MIN_EDGES``).

    edge_dot:       s_e   = <a_{dst(e)}, b_{src(e)}>                     [E, H]
    edge_aggregate: out_i = Σ_{e: dst(e)=i} w_e · v_{src(e)}             [N, H, D]  (eq. 3)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .grouping import bags

__all__ = ["CHUNK_ELEMENTS", "chunk_bounds", "edge_aggregate", "edge_dot"]

#: Upper bound on gathered elements per chunk (2**22 fp32 values = 16 MiB per gathered tensor).
CHUNK_ELEMENTS = 1 << 22


def chunk_bounds(
    num_edges: int, per_edge: int, elements: int | None = None
) -> list[tuple[int, int]]:
    """Split ``range(num_edges)`` into chunks of at most ``elements`` // per_edge edges
    (default CHUNK_ELEMENTS).

    Under torch.compile it is one chunk: the edge count may be symbolic (``dynamic=True``) or
    data-dependent (edges from a mask), so no Python loop can run over it, and inductor fuses
    the gather with its reduction, so no [E, H, D] tensor is materialised anyway.
    """
    if torch.compiler.is_compiling():
        return [(0, num_edges)]
    step = max(1, (CHUNK_ELEMENTS if elements is None else elements) // max(1, per_edge))
    return [(s, min(s + step, num_edges)) for s in range(0, num_edges, step)]


#: The gathered dot products run in chunks of about this many elements (256 KiB in fp32: the
#: two gathered chunks and their product stay in a core's cache; about 10 % faster on P6's
#: graphs than one chunk), and at most DOT_CHUNKS of them.
DOT_CHUNK_ELEMENTS = 1 << 16
DOT_CHUNKS = 256


def _dot_into(out: Tensor, a: Tensor, b: Tensor, ia: Tensor, ib: Tensor) -> None:
    """out[e] = <a[ia[e]], b[ib[e]]> over the last axis. a, b [N, H, D]; out [E, H].

    Sampled dense-dense matmul (CSR) per head where ``_sparse_ok``; else chunked gathers.
    """
    if _sparse_ok(a, b, ia.numel()):
        _sddmm_into(out, a, b, ia, ib)
        return
    ones = a.new_ones(a.size(2))  # [D]: the sum over D as a matrix-vector product
    per_edge = a.size(1) * a.size(2)
    size = min(CHUNK_ELEMENTS, max(DOT_CHUNK_ELEMENTS, ia.numel() * per_edge // DOT_CHUNKS))
    for s, t in chunk_bounds(ia.numel(), per_edge, size):
        prod = a.index_select(0, ia[s:t]).mul_(b.index_select(0, ib[s:t]))  # [e, H, D]
        # (a sum over the last axis of size D runs far below a vector-width loop on CPU)
        torch.mv(prod.view(-1, a.size(2)), ones, out=out[s:t].view(-1))  # [e·H]


#: Fewer edges than this take the gather path: the CSR set-up (a sort, H sparse tensors) costs
#: more than it saves on small graphs (CPU, H=4: 170 edges 20 vs 13 ms, 32k edges 112 vs 145 ms).
SPARSE_MIN_EDGES = 8192


def _sparse_ok(w: Tensor, b: Tensor, num_edges: int) -> bool:
    """The CSR path runs in eager mode on fp32/fp64 CPU or CUDA tensors for graphs of at least
    SPARSE_MIN_EDGES edges; compiled code keeps the gather/index_add form, which inductor fuses."""
    return (
        num_edges >= SPARSE_MIN_EDGES
        and not torch.compiler.is_compiling()
        and b.dtype in (torch.float32, torch.float64)
        and w.dtype == b.dtype
        and b.device.type in ("cpu", "cuda")
    )


def _csr(rows: Tensor, num_rows: int, cols: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(perm [E], rowptr [M + 1]): edges grouped by ``rows`` (stable; by ``cols`` within a row
    when given), and the CSR row pointer."""
    keys = rows if cols is None else rows * (int(cols.max()) + 1) + cols  # [E]
    perm = torch.argsort(keys, stable=True)
    rowptr = torch.zeros(num_rows + 1, dtype=torch.long, device=rows.device)
    rowptr[1:] = torch.cumsum(torch.bincount(rows, minlength=num_rows), 0)
    return perm, rowptr


def _sddmm_into(out: Tensor, a: Tensor, b: Tensor, ia: Tensor, ib: Tensor) -> None:
    """out[e, h] = <a[ia[e], h], b[ib[e], h]> as ``torch.sparse.sampled_addmm`` per head.

    Hand-written instead of gathering [e, H, D] chunks: the sampled matmul reads each row of a
    and b once per row block instead of once per edge (~4x faster on CPU for P3's graph).
    sampled_addmm needs distinct (row, column) pairs, so parallel edges are computed once and
    the value is copied to each of them (they have equal scores by definition).
    """
    perm, _ = _csr(ia, a.size(0), ib)  # edges sorted by (row, column)
    rows, col = ia.index_select(0, perm), ib.index_select(0, perm)  # [E]
    first = torch.ones_like(rows, dtype=torch.bool)  # first edge of each distinct pair
    first[1:] = (rows[1:] != rows[:-1]) | (col[1:] != col[:-1])
    pair = torch.cumsum(first, 0) - 1  # [E] distinct-pair id of each sorted edge
    rowptr = torch.zeros(a.size(0) + 1, dtype=torch.long, device=a.device)
    rowptr[1:] = torch.cumsum(torch.bincount(rows[first], minlength=a.size(0)), 0)
    ucol = col[first]  # [U]
    pattern = a.new_zeros(ucol.numel())  # values of the sampling mask; beta=0 ignores them
    with warnings.catch_warnings():  # "sparse CSR support is in beta" / invariant-check notes
        warnings.simplefilter("ignore", UserWarning)
        mask = torch.sparse_csr_tensor(rowptr, ucol, pattern, size=(a.size(0), b.size(0)))
        for h in range(a.size(1)):
            prod = torch.sparse.sampled_addmm(
                mask, a[:, h].contiguous(), b[:, h].transpose(0, 1).contiguous(), beta=0.0
            )
            out[:, h].index_copy_(0, perm, prod.values().index_select(0, pair))  # edge order


def _spmm_into(out: Tensor, w: Tensor, b: Tensor, i_out: Tensor, i_b: Tensor) -> None:
    """out += A_h b_h per head, with A_h the sparse [M, N] matrix of the edges (row i_out[e],
    column i_b[e], value w[e, h]). Parallel edges stay separate entries and add up.

    Hand-written instead of ``index_add_``: a CSR matmul (torch.sparse) runs the same sum
    ~3x faster on CPU (benchmarks P3), and its memory is O(E·H) for the sorted copy of w.
    Autograd never sees the sparse tensor (the callers' backward is explicit), so torch's
    merging of duplicate entries in sparse gradients does not apply.
    """
    m, n = out.size(0), b.size(0)
    perm, rowptr = _csr(i_out, m)  # edges grouped by output row
    col = i_b.index_select(0, perm)  # [E]
    wp = w.index_select(0, perm)  # [E, H]
    with warnings.catch_warnings():  # "sparse CSR support is in beta" / invariant-check notes
        warnings.simplefilter("ignore", UserWarning)
        for h in range(w.size(1)):
            a = torch.sparse_csr_tensor(rowptr, col, wp[:, h].contiguous(), size=(m, n))
            out[:, h] += a @ b[:, h]  # [M, D]


def _scatter_into(out: Tensor, w: Tensor, b: Tensor, i_out: Tensor, i_b: Tensor) -> None:
    """out[i_out[e]] += w[e] · b[i_b[e]]. w [E, H]; b [N, H, D]; out [M, H, D].

    CSR matmul per head where ``_sparse_ok``; otherwise chunked gather + index_add_.
    """
    if _sparse_ok(w, b, i_out.numel()):
        _spmm_into(out, w, b, i_out, i_b)
        return
    for s, t in chunk_bounds(i_out.numel(), b.size(1) * b.size(2)):
        msg = w[s:t].unsqueeze(-1) * b.index_select(0, i_b[s:t])  # [e, H, D]
        out.index_add_(0, i_out[s:t], msg)


def _bag_sum(w: Tensor, v: Tensor, i_out: Tensor, i_in: Tensor, num_out: int) -> Tensor | None:
    """out_{i,h} = Σ_{e: i_out(e)=i} w_{e,h} v_{i_in(e),h} as one ``embedding_bag`` over the
    registered grouping of the edges (``grouping.bags``), or None where there is none.
    w [E, H] and v [N, H, D] of one dtype, fp32 or fp64, on CPU -> [M, H, D].

    The table is v's own memory when each head's D values are contiguous and nodes lie a
    whole number of rows apart (a head-split view of a packed projection): no copy. (It runs
    inside the kernels' forwards, whose backward is their own: the inputs are detached, so
    torch takes its forward-only kernel.)"""
    N, H, D = v.shape
    if v.dtype not in (torch.float32, torch.float64) or v.device.type != "cpu":
        return None  # (measured and tested on CPU; CUDA keeps its CSR and gather paths)
    rows_apart = v.stride(0) // D if D and v.stride(0) % D == 0 else 0
    in_place = N > 0 and v.stride(2) == 1 and v.stride(1) == D and rows_apart >= H
    if N * max(H, rows_apart if in_place else 0) >= 1 << 31 or D == 0:  # int32 rows
        return None
    found = bags(i_out, i_in, num_out, H, rows_apart if in_place else None)
    if found is None:
        return None
    psw = w.detach().reshape(-1).index_select(0, found.order)  # [E·H], listed bag by bag
    if in_place:  # row j·rows_apart + h is v_{j,h}: a view of v's memory, [R, D]
        table = v.detach().as_strided(((N - 1) * rows_apart + H, D), (D, 1))
    else:
        table = v.detach().reshape(-1, D)  # [N·H, D]: row j·H + h is v_{j,h}
    out = F.embedding_bag(found.rows, table, found.offsets, mode="sum", per_sample_weights=psw)
    return out.view(num_out, H, D)  # [M, H, D]


def _no_autocast(device: torch.device) -> Any:
    """Autocast off inside the kernels: they run in their inputs' dtype (half inputs accumulate
    in fp32 themselves), and autocast would turn the CSR matmuls' fp32 operands into bf16/fp16,
    which torch.sparse does not implement on CPU."""
    return torch.autocast(device.type, enabled=False)


def _wide(t: Tensor) -> Tensor:
    """fp16/bf16 -> fp32 (products and sums accumulate in fp32, as the dense kernels do)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class _EdgeDot(torch.autograd.Function):
    """s_e = <a_dst(e), b_src(e)>. Its backward is written with edge_aggregate, itself an
    autograd.Function, so gradients of every order are right on every path (the CSR tensors
    are built inside forwards only, and autograd never sees them)."""

    @staticmethod
    def forward(a: Tensor, b: Tensor, src: Tensor, dst: Tensor) -> Tensor:  # type: ignore[override]
        with _no_autocast(a.device):
            a32, b32 = _wide(a), _wide(b)
            out = a32.new_empty(src.numel(), a.size(1))  # [E, H], fp32 for half inputs
            _dot_into(out, a32, b32, dst, src)
        return out

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        a, b, src, dst = inputs
        ctx.save_for_backward(a, b, src, dst)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:  # type: ignore[override]
        a, b, src, dst = ctx.saved_tensors
        grad = grad.contiguous()
        ga = gb = None
        if ctx.needs_input_grad[0]:  # ∂s_e/∂a_dst = b_src: ga_i = Σ_{e→i} grad_e b_src(e)
            ga = _EdgeAggregate.apply(grad, _wide(b), src, dst, a.size(0)).to(a.dtype)
        if ctx.needs_input_grad[1]:  # ∂s_e/∂b_src = a_dst: the same sum with roles swapped
            gb = _EdgeAggregate.apply(grad, _wide(a), dst, src, b.size(0)).to(b.dtype)
        return ga, gb, None, None


class _EdgeAggregate(torch.autograd.Function):
    """out_i = Σ_{e→i} w_e v_src(e). Backward is written with _EdgeDot and _EdgeAggregate
    (differentiable), so double backward is right on every path, duplicate edges included."""

    @staticmethod
    def forward(w: Tensor, v: Tensor, src: Tensor, dst: Tensor, num_dst: int) -> Tensor:  # type: ignore[override]
        with _no_autocast(v.device):
            v32 = _wide(v)
            out = _bag_sum(w.to(v32.dtype), v32, dst, src, num_dst)  # [N_t, H, D] or None
            if out is None:
                out = v32.new_zeros(num_dst, v.size(1), v.size(2))  # [N_t, H, D], fp32 for half
                _scatter_into(out, w.to(v32.dtype), v32, dst, src)
        return out.to(v.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        w, v, src, dst, _ = inputs
        ctx.save_for_backward(w, v, src, dst)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:  # type: ignore[override]
        w, v, src, dst = ctx.saved_tensors
        grad = grad.contiguous()
        gw = gv = None
        if ctx.needs_input_grad[0]:  # ∂out_i/∂w_e = v_src: gw_e = <grad_dst(e), v_src(e)>
            gw = _EdgeDot.apply(grad, v, src, dst).to(w.dtype)
        if ctx.needs_input_grad[1]:  # ∂out_i/∂v_src = w_e: gv_j = Σ_{e: src(e)=j} w_e grad_dst(e)
            gv = _EdgeAggregate.apply(w, grad, dst, src, v.size(0)).to(v.dtype)
        return gw, gv, None, None, None


def edge_dot(a: Tensor, b: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """Per-edge inner product ``s_e = <a[dst[e]], b[src[e]]>``.

    fp16/bf16 inputs are multiplied and summed in fp32 and the result stays fp32 (as SDPA's
    kernels accumulate), so a dot product beyond the half range does not overflow before the
    caller scales it. Gradients of any order are exact (the backward is itself differentiable).

    Args:
        a: target-side vectors (queries), [N_t, H, D].
        b: source-side vectors (keys), [N_s, H, D].
        src, dst: LongTensor [E], ``edge_index[0]`` and ``edge_index[1]``.

    Shapes:
        -> [E, H] (fp32 for fp16/bf16 inputs). Memory O(E·H) in forward and backward.
    """
    return _EdgeDot.apply(a, b, src, dst)


def edge_aggregate(w: Tensor, v: Tensor, src: Tensor, dst: Tensor, num_dst: int) -> Tensor:
    """Weighted sum of source vectors into targets: ``out_i = Σ_{e→i} w_e · v[src[e]]``.

    Args:
        w: per-edge weights, [E, H].
        v: source vectors (values), [N_s, H, D].
        src, dst: LongTensor [E].
        num_dst: N_t.

    fp16/bf16 values are accumulated in fp32 and the sum is returned in ``v``'s dtype.
    Gradients of any order are exact.

    Shapes:
        -> [N_t, H, D]. Memory O(E·H + N·H·D) in forward and backward.
    """
    return _EdgeAggregate.apply(w, v, src, dst, num_dst)


def chunked_edge_map(fn: Callable[[int, int], Tensor], num_edges: int, per_edge: int) -> Tensor:
    """Apply ``fn(start, stop) -> [e, K]`` over edge chunks and concatenate to [E, K].

    When gradients are needed and there is more than one chunk, each chunk runs under
    activation checkpointing so that autograd keeps no gathered [e, H, D] tensors alive.
    """
    bounds = chunk_bounds(num_edges, per_edge)
    if len(bounds) <= 1:
        return fn(0, num_edges)
    if not torch.is_grad_enabled():
        return torch.cat([fn(s, t) for s, t in bounds])
    from torch.utils.checkpoint import checkpoint

    return torch.cat([checkpoint(fn, s, t, use_reentrant=False) for s, t in bounds])
