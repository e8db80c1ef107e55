"""SDPA that can be differentiated twice: the fused kernel forward and first-order backward,
and a differentiable backward when a second derivative is asked for.

    out = softmax(s · Q Kᵀ + M) V                                       (docs/math.md, eq. 4)

torch's fused CPU and CUDA kernels (flash, memory-efficient) have no derivative of their
backward ("derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not
implemented"), so gradient penalties and Hessian-vector products failed on the dense and
block backends. ``sdpa`` wraps the call in an ``autograd.Function``:

* forward: the fused kernel on detached inputs, its autograd graph kept aside;
* backward, first order (``create_graph=False``): that graph's own backward, the fused kernel;
* backward with ``create_graph=True``: the output is recomputed by SDPA's math kernel (plain
  matmul and softmax, which autograd differentiates again) from the saved inputs, and
  differentiated with ``create_graph=True``, so the gradient is itself differentiable.

Dropout (training with p > 0) calls SDPA directly: a recomputation would draw another dropout
mask. On CPU that call runs the math kernel anyway, which is twice differentiable.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["sdpa"]


def _detached(t: Tensor | None) -> Tensor | None:
    if t is None or not t.requires_grad:
        return None if t is None else t.detach()
    return t.detach().requires_grad_()


def _call(inputs: list[Tensor | None], options: tuple[bool, float | None, bool]) -> Tensor:
    q, k, v, mask = inputs
    assert q is not None and k is not None and v is not None
    is_causal, scale, gqa = options
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=gqa
    )  # [.., L_q, D_v]


def _keep(t: Tensor) -> Tensor:
    return t


class _TwiceDifferentiableSDPA(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        is_causal: bool,
        scale: float | None,
        enable_gqa: bool,
    ) -> Tensor:
        ctx.options = (is_causal, scale, enable_gqa)
        inner = [_detached(t) for t in (q, k, v, mask)]
        # the fused kernel, its graph kept for the first-order backward. That graph saves its
        # tensors plainly: the hooks of an enclosing activation checkpoint would otherwise see
        # them unpacked in this Function's own backward pass and recompute the region again
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_keep, _keep):
            ctx.inner = (_call(inner, ctx.options), inner)
        ctx.save_for_backward(q, k, v, mask)
        return ctx.inner[0].detach()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        saved = list(ctx.saved_tensors)
        create_graph = torch.is_grad_enabled()  # backward(create_graph=True) runs with grad on
        if create_graph:  # recompute with the math kernel, which autograd differentiates again
            with sdpa_kernel([SDPBackend.MATH]):
                out, inputs = _call(saved, ctx.options), saved
        else:
            kept, ctx.inner = ctx.inner, None  # freed after use, as autograd frees its own
            if kept is None:  # a second backward (retain_graph=True): the forward again
                inner = [_detached(t) for t in saved]
                with torch.enable_grad():
                    kept = (_call(inner, ctx.options), inner)
            out, inputs = kept
        wanted = [w and t is not None for t, w in zip(inputs, ctx.needs_input_grad[:4])]
        targets = [t for t, w in zip(inputs, wanted) if w]
        found = iter(torch.autograd.grad(out, targets, grad, create_graph=create_graph))
        return (*(next(found) if w else None for w in wanted), None, None, None)


def sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """``F.scaled_dot_product_attention``, differentiable twice (see the module docstring).

    .. math:: \\mathrm{out} = \\mathrm{softmax}(s\\,QK^\\top + M)\\,V

    Args:
        q: [..., H, L_q, D].  k: [..., H_kv, L_k, D].  v: [..., H_kv, L_k, D_v].
        attn_mask: bool (True = may attend) or additive float, broadcast to [..., L_q, L_k].
        dropout_p: dropout on the attention weights (p > 0: a plain SDPA call).
        is_causal: the causal mask.  scale: s (default 1/√D).
        enable_gqa: H_kv divides H, each key/value head serving H / H_kv query heads.

    Shapes:
        q [..., H, L_q, D], k [..., H_kv, L_k, D], v [..., H_kv, L_k, D_v]
        -> out [..., H, L_q, D_v].
    """
    tracked = any(t is not None and t.requires_grad for t in (q, k, v, attn_mask))
    plain = dropout_p > 0 or not tracked or not torch.is_grad_enabled()
    if plain or torch.compiler.is_compiling():  # (compiled graphs take SDPA as it is)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
            enable_gqa=enable_gqa,
        )  # fmt: skip
    out: Tensor = _TwiceDifferentiableSDPA.apply(q, k, v, attn_mask, is_causal, scale, enable_gqa)
    return out
