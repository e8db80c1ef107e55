"""Attention with an additive mask that needs a gradient, on CPU: one autograd Function.

    S = s · Q Kᵀ + M      P = softmax(S)      out = P V                   (docs/math.md, eq. 5)
    dV = Pᵀ dO    dP = dO Vᵀ    dS = P ⊙ (dP − rowsum(dP ⊙ P))    dQ = s · dS K    dK = s · dSᵀ Q
    dM = dS (summed over the dimensions M is broadcast along)

A bias with learned parameters (Graphormer's ``SpatialBias``, edge-feature biases) makes SDPA's
mask need a gradient, and torch then runs its unfused math kernel, which on CPU spends much of
its time outside the matrix products (a guarded softmax, per-batch copies of transposed
operands). This Function runs the same formula with every batched product in a layout CPU's
batched kernels run fast (the [L_q, L_k] operand contiguous on the left; with a narrow head,
D < ``NARROW_HEAD``, the [L_k, D] operand read as the transpose of a contiguous [D, L_k] one),
keeps P as its only [B, H, L_q, L_k] tensor, and returns dM = dS, the softmax gradient
itself: no extra [B, H, L_q, L_k] copy for the bias's gradient.

Under ``backward(create_graph=True)`` the output is recomputed by SDPA's math kernel and
differentiated again, so second derivatives stay exact.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["NARROW_HEAD", "biased_sdpa", "use_biased_sdpa"]


def _t(x: Tensor) -> Tensor:
    """[n, a, b] -> [n, b, a], contiguous (CPU bmm copies a transposed operand batch by batch)."""
    return x.transpose(1, 2).contiguous()


def _reduce_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum ``grad`` [B, H, L_q, L_k] to ``shape``, a mask shape that broadcasts to it (SDPA's
    rule: aligned on the right, missing or 1-sized dimensions broadcast)."""
    full = (1,) * (4 - len(shape)) + tuple(shape)
    dims = [d for d in range(4) if full[d] == 1 and grad.size(d) != 1]
    return (grad.sum(dims, keepdim=True) if dims else grad).view(shape)


#: Below this head size the [L_q, L_k] × [L_k, D] products read their right operand as the
#: transpose of a contiguous [D, L_k] tensor, and Qᵀ dS, dOᵀ P their left one as a transposed
#: view: on CPU about 3x faster for D = 2..7 (the contiguous layout takes a slow kernel there);
#: from D = 8 on the contiguous layout is as fast or faster.
NARROW_HEAD = 8


def _times(a: Tensor, b3: Tensor) -> Tensor:
    """a @ b3 for a [n, L_q, L_k] and b3 [n, L_k, D] contiguous -> [n, L_q, D]."""
    return torch.bmm(a, _t(b3).transpose(1, 2) if b3.size(2) < NARROW_HEAD else b3)


def _t_times(a3: Tensor, b: Tensor) -> Tensor:
    """a3ᵀ @ b for a3 [n, L_q, D] contiguous and b [n, L_q, L_k] -> [n, D, L_k]."""
    return torch.bmm(a3.transpose(1, 2) if a3.size(2) < NARROW_HEAD else _t(a3), b)


class _BiasedSDPA(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float
    ) -> Tensor:
        B, H, Lq, _ = q.shape
        Lk, Dv, n = k.size(2), v.size(3), B * H
        q3, k3, v3 = (t.reshape(n, -1, t.size(-1)).contiguous() for t in (q, k, v))
        m = mask.expand(B, H, Lq, Lk).reshape(n, Lq, Lk)  # [n, L_q, L_k] (a copy if broadcast)
        p = torch.softmax(torch.baddbmm(m, q3, _t(k3), alpha=scale), -1)  # [n, L_q, L_k]
        ctx.save_for_backward(q, k, v, mask, q3, k3, v3, p)
        ctx.scale = scale
        return _times(p, v3).view(B, H, Lq, Dv)  # [B, H, L_q, D_v]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        q, k, v, mask, q3, k3, v3, p = ctx.saved_tensors
        s = ctx.scale
        if torch.is_grad_enabled():  # create_graph=True: a differentiable recomputation
            inputs = [q, k, v, mask]  # the saved inputs: the gradient stays a function of them
            with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=s)
            wanted = [t for t in inputs if t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad, create_graph=True))
            return (*(next(grads) if t.requires_grad else None for t in inputs), None)
        B, H, Lq, _ = q.shape
        n = B * H
        do = grad.reshape(n, Lq, -1).contiguous()  # [n, L_q, D_v]
        dp = torch.bmm(do, _t(v3))  # [n, L_q, L_k]
        ds = torch._softmax_backward_data(dp, p, -1, p.dtype)  # [n, L_q, L_k]
        dq = _times(ds, k3).mul_(s).view(q.shape) if q.requires_grad else None
        # dKᵀ = Qᵀ dS and dVᵀ = dOᵀ P: the [L, L] operand stays on the right, untransposed
        dk = _t(_t_times(q3, ds).mul_(s)).view(k.shape) if k.requires_grad else None
        dv = _t(_t_times(do, p)).view(v.shape) if v.requires_grad else None
        dm = _reduce_to(ds.view(B, H, Lq, -1), mask.shape) if mask.requires_grad else None
        return dq, dk, dv, dm, None


def use_biased_sdpa(q: Tensor, k: Tensor, mask: Tensor | None, dropout: float) -> bool:
    """True when ``biased_sdpa`` should replace SDPA: a float mask that needs a gradient, on
    CPU, without dropout, with one key/value head per query head (q [B, H, L_q, D],
    k [B, H_kv, L_k, D])."""
    return (
        mask is not None
        and mask.requires_grad
        and mask.is_floating_point()
        and torch.is_grad_enabled()
        and q.device.type == "cpu"
        and dropout == 0.0
        and k.size(1) == q.size(1)
        and not torch.compiler.is_compiling()
    )


def biased_sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
    """softmax(s · Q Kᵀ + M) V with a differentiable M (rows of M must allow a key).

    Shapes:
        q [B, H, L_q, D], k [B, H, L_k, D], v [B, H, L_k, D_v],
        mask [B | 1, H | 1, L_q | 1, L_k] -> [B, H, L_q, D_v].
    """
    out: Tensor = _BiasedSDPA.apply(q, k, v, mask, scale)
    return out
