"""The complete graph is dense attention (docs/math.md, eq. 4), proven against PyTorch itself.

References: ``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention`` with copied weights.
Outputs, per-edge weights and gradients (input and every parameter) are compared; fp64 <= 1e-10;
fp32, fp16 and bf16 against an fp64 golden, within a multiple of torch's own error. Sizes are pairwise distinct (N=5, H=3, D=7).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gatattn as ga

N, H, D = 5, 3, 7
C = H * D


def _layer(dtype: torch.dtype = torch.float64, **kw: object) -> ga.GraphAttention:
    layer = ga.GraphAttention(C, H, **kw).to(dtype)  # type: ignore[arg-type]
    with torch.no_grad():  # non-zero biases so that a bias bug cannot hide
        for p in layer.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.2)
    return layer


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


Results = dict[str, torch.Tensor]


def _compare(run, dtype: torch.dtype, within) -> None:  # type: ignore[no-untyped-def]
    """``run(dtype) -> (ours, torch's)``, dicts of tensors computed from the same seeded fp64
    inputs cast to ``dtype``. fp64: equal to 1e-10. fp32: both against the fp64 golden (torch's
    result in fp64), gatattn's error within a small multiple of torch's own (``within``);
    parameter gradients, sums over every edge, get a larger multiple (see
    test_patterns_equivalence.py)."""
    ours, theirs = run(dtype)
    assert ours.keys() == theirs.keys()
    if dtype == torch.float64:
        for name in ours:
            torch.testing.assert_close(ours[name], theirs[name], atol=1e-10, rtol=0, msg=name)
        return
    _, gold = run(torch.float64)
    for name in ours:
        factor = 64.0 if name.startswith("param ") else 4.0
        within(ours[name], theirs[name], gold[name], factor=factor, what=name)


def _params(module: nn.Module) -> Results:
    return {f"param {n}": g for n, g in _grads(module).items()}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_complete_graph_equals_sdpa(dtype: torch.dtype, within_torch_error) -> None:
    def run(dtype: torch.dtype) -> tuple[Results, Results]:
        torch.manual_seed(0)
        layer = _layer(torch.float64).to(dtype)
        ref = copy.deepcopy(layer)
        x = torch.randn(N, C, dtype=torch.float64).to(dtype).requires_grad_(True)
        x_ref = x.detach().clone().requires_grad_(True)
        grad = torch.randn(N, C, dtype=torch.float64).to(dtype)

        res = layer(x, ga.complete_graph(N), return_attention=True)
        res.out.backward(grad)

        q = ref.q_proj(x_ref).view(N, H, D).transpose(0, 1)  # [H, N, D]
        k = ref.k_proj(x_ref).view(N, H, D).transpose(0, 1)
        v = ref.v_proj(x_ref).view(N, H, D).transpose(0, 1)
        want = ref.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(0, 1).reshape(N, C))
        want.backward(grad)
        logits = (q @ k.transpose(-1, -2) / D**0.5).detach()  # [H, N, N]
        ours = {
            "out": res.out,
            "scores": res.scores.view(N, N, H).permute(2, 0, 1),
            "weights": res.weights.view(N, N, H).permute(2, 0, 1),
            "x.grad": x.grad,
            **_params(layer),
        }
        theirs = {
            "out": want,
            "scores": logits,
            "weights": logits.softmax(-1),
            "x.grad": x_ref.grad,
            **_params(ref),
        }
        return ours, theirs  # type: ignore[return-value]

    _compare(run, dtype, within_torch_error)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_complete_graph_equals_multihead_attention(
    dtype: torch.dtype, bias: bool, within_torch_error
) -> None:
    def run(dtype: torch.dtype) -> tuple[Results, Results]:
        torch.manual_seed(1)
        mha = nn.MultiheadAttention(C, H, bias=bias, dtype=torch.float64)
        if bias:
            with torch.no_grad():
                mha.in_proj_bias.normal_()
                mha.out_proj.bias.normal_()
        mha = mha.to(dtype)
        layer = ga.GraphAttention.from_torch(mha)
        x = torch.randn(N, C, dtype=torch.float64).to(dtype).requires_grad_(True)
        x_ref = x.detach().clone().requires_grad_(True)
        grad = torch.randn(N, C, dtype=torch.float64).to(dtype)

        res = layer(x, ga.complete_graph(N), return_attention=True)
        res.out.backward(grad)
        y, w = mha(x_ref[:, None], x_ref[:, None], x_ref[:, None], average_attn_weights=False)
        y[:, 0].backward(grad)
        ours = {
            "out": res.out,
            "weights": res.weights.view(N, N, H).permute(2, 0, 1),
            "x.grad": x.grad,
            **_params(layer),
        }
        theirs = {"out": y[:, 0], "weights": w[0], "x.grad": x_ref.grad, **_params(mha)}
        return ours, theirs  # type: ignore[return-value]

    _compare(run, dtype, within_torch_error)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batched_complete_graph_equals_padded_mha(dtype: torch.dtype, within_torch_error) -> None:
    lengths = [3, 6, 1, 4]

    def run(dtype: torch.dtype) -> tuple[Results, Results]:
        torch.manual_seed(2)
        mha = nn.MultiheadAttention(C, H, batch_first=True, dtype=torch.float64).to(dtype)
        layer = ga.GraphAttention.from_torch(mha)
        seqs = [torch.randn(n, C, dtype=torch.float64).to(dtype) for n in lengths]
        x = torch.cat(seqs).requires_grad_(True)
        res = layer(x, ga.complete_graph(lengths=lengths), return_attention=True)
        res.out.sum().backward()

        padded = nn.utils.rnn.pad_sequence(seqs, batch_first=True).requires_grad_(True)  # [B, L, C]
        pad = torch.arange(padded.size(1))[None] >= torch.tensor(lengths)[:, None]  # [B, L]
        y, w = mha(padded, padded, padded, key_padding_mask=pad, average_attn_weights=False)
        sum(y[b, :n].sum() for b, n in enumerate(lengths)).backward()
        assert x.grad is not None and padded.grad is not None
        ours, theirs = _params(layer), _params(mha)
        offsets = [0, *torch.tensor(lengths).cumsum(0).tolist()]
        edge = 0
        for b, n in enumerate(lengths):  # sequence by sequence
            rows = slice(offsets[b], offsets[b] + n)
            ours[f"out {b}"], theirs[f"out {b}"] = res.out[rows], y[b, :n]
            ours[f"weights {b}"] = res.weights[edge : edge + n * n].view(n, n, H).permute(2, 0, 1)
            theirs[f"weights {b}"] = w[b, :, :n, :n]
            ours[f"x.grad {b}"], theirs[f"x.grad {b}"] = x.grad[rows], padded.grad[b, :n]
            edge += n * n
        return ours, theirs

    _compare(run, dtype, within_torch_error)


@pytest.mark.parametrize("kdim_vdim", [(C, C), (4, 9)])
def test_cross_attention_with_kdim_vdim_equals_mha(kdim_vdim: tuple[int, int]) -> None:
    kdim, vdim = kdim_vdim
    n_src = 6
    torch.manual_seed(3)
    mha = nn.MultiheadAttention(C, H, kdim=kdim, vdim=vdim, dtype=torch.float64)
    layer = ga.GraphAttention.from_torch(mha)
    q = torch.randn(N, C, dtype=torch.float64, requires_grad=True)
    k = torch.randn(n_src, kdim, dtype=torch.float64, requires_grad=True)
    v = torch.randn(n_src, vdim, dtype=torch.float64, requires_grad=True)
    graph = ga.from_mask(torch.ones(N, n_src, dtype=torch.bool))  # bipartite complete
    x_src = (k, v) if kdim != vdim else k
    if kdim == vdim:
        v = k
    res = layer(q, graph, x_src=x_src, return_attention=True)
    y, w = mha(q[:, None], k[:, None], v[:, None], average_attn_weights=False)
    torch.testing.assert_close(res.out, y[:, 0], atol=1e-10, rtol=0)
    torch.testing.assert_close(
        res.weights.view(N, n_src, H).permute(2, 0, 1), w[0], atol=1e-10, rtol=0
    )
    (gq,) = torch.autograd.grad(res.out.sum(), q)
    (gq_ref,) = torch.autograd.grad(y.sum(), q)
    torch.testing.assert_close(gq, gq_ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize(("dtype", "bound"), [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_half_precision_is_bounded_by_fp64_golden(dtype: torch.dtype, bound: float) -> None:
    layer64 = _layer(torch.float64)
    x = torch.randn(N, C, dtype=torch.float64)
    g = ga.complete_graph(N)
    q = layer64.q_proj(x).view(N, H, D).transpose(0, 1)
    k = layer64.k_proj(x).view(N, H, D).transpose(0, 1)
    v = layer64.v_proj(x).view(N, H, D).transpose(0, 1)
    golden = layer64.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(0, 1).reshape(N, C))

    half = copy.deepcopy(layer64).to(dtype)
    xh = x.to(dtype).requires_grad_(True)
    out = half(xh, g)
    out.float().sum().backward()
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert xh.grad is not None and torch.isfinite(xh.grad).all()
    rel = (out.double() - golden).abs().max() / golden.abs().max().clamp_min(1)
    assert rel <= bound


def test_from_torch_to_torch_round_trip_and_errors() -> None:
    mha = nn.MultiheadAttention(C, H, kdim=4, vdim=9, bias=False)
    back = ga.GraphAttention.from_torch(mha).to_torch()
    for (na, a), (nb, b) in zip(mha.named_parameters(), back.named_parameters()):
        assert na == nb and torch.equal(a, b)
    with pytest.raises(ValueError, match="add_bias_kv=True or add_zero_attn=True"):
        ga.GraphAttention.from_torch(nn.MultiheadAttention(C, H, add_bias_kv=True))
    with pytest.raises(TypeError, match="needs an nn.MultiheadAttention, got Linear"):
        ga.GraphAttention.from_torch(nn.Linear(3, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs the scaled_dot score; this layer uses 'gatv2'"):
        ga.GraphAttention(C, H, score="gatv2").to_torch()


def test_dropout_acts_on_weights_in_training_only() -> None:
    layer = _layer(torch.float64, dropout=0.5)
    x = torch.randn(N, C, dtype=torch.float64)
    g = ga.complete_graph(N)
    layer.eval()
    eval_out = layer(x, g)
    ref = _layer(torch.float64)
    ref.load_state_dict(layer.state_dict())
    torch.testing.assert_close(eval_out, ref(x, g), atol=1e-12, rtol=0)  # no dropout in eval
    layer.train()
    res = layer(x, g, return_attention=True)
    assert not torch.allclose(res.out, eval_out)  # dropout changed the output
    # returned weights are Attn before dropout: each target's weights still sum to 1
    sums = torch.zeros(N, H, dtype=torch.float64).index_add_(0, res.edge_index[1], res.weights)
    torch.testing.assert_close(sums, torch.ones_like(sums))
