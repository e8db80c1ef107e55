"""The drop-in's masks as a dense grid (interop/masks.py, ``GridInput``): float and per-head masks
reach SDPA straight from the masks, without the full graph's edges or a per-edge copy, and equal
torch and the edge backend (fp64, 1e-10: outputs and every gradient, in training mode).

Sizes are pairwise distinct: B=2, L=5, S=7, H=3, D=4 (C=12).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import gatattn as ga
from gatattn.backends import Problem, attend
from gatattn.backends.dense_mask import bias_grid
from gatattn.interop import AttnMaskBias
from gatattn.interop import masks as masks_mod
from gatattn.interop.masks import additive_mask, attention_graph, mask_grid
from gatattn.scores import Edges, ScaledDot
from gatattn.scores.grid import GridInput

from .test_mha import MASKS, B, C, H, L, S, make_masks, to_float

GRID_MASKS = [m for m in MASKS if m != "none" and "causal" not in m]


def results(model: nn.Module, q: Tensor, k: Tensor, v: Tensor, **kw: object) -> list[Tensor]:
    """out and the gradients of q, k, v and every parameter (need_weights=False, training)."""
    qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
    model.zero_grad(set_to_none=True)
    out, w = model(qq, kk, vv, need_weights=False, **kw)
    assert w is None
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)).sum().backward()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    return [out, qq.grad, kk.grad, vv.grad, *grads]  # type: ignore[list-item]


def check_three_ways(cross: bool, kw: dict[str, object]) -> None:
    """torch, the drop-in on auto (dense, from the grid) and forced onto the edge backend."""
    kdim, vdim = (9, 11) if cross else (None, None)
    src = S if cross else L
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(C, H, kdim=kdim, vdim=vdim, batch_first=True).double().train()
    auto = ga.GraphMultiheadAttention.from_torch(mha)
    edge = ga.GraphMultiheadAttention.from_torch(mha, backend="edge")
    q = torch.randn(B, L, C, dtype=torch.float64)
    k = torch.randn(B, src, kdim or C, dtype=torch.float64) if cross else q
    v = torch.randn(B, src, vdim or C, dtype=torch.float64) if cross else q
    ref, ours, slow = (results(m, q, k, v, **kw) for m in (mha, auto, edge))
    for a, b, c in zip(ours, ref, slow, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
        torch.testing.assert_close(a, c, atol=1e-10, rtol=0)


@pytest.mark.parametrize("mask", GRID_MASKS)
@pytest.mark.parametrize("cross", [False, True])
def test_training_without_weights_equals_torch_and_the_edge_backend(mask: str, cross: bool) -> None:
    check_three_ways(cross, make_masks(mask, L, S if cross else L))


@pytest.mark.parametrize("kind", ["float", "heads_bool", "heads_bool+kpm", "float+kpm"])
def test_fully_masked_rows_give_zero_and_equal_torch(kind: str) -> None:
    # a query whose every key is masked (in one head, or by the float mask itself): out 0 there,
    # finite gradients, equal to torch's SDPA path and to the edge backend
    g = torch.Generator().manual_seed(4)
    kpm = torch.tensor([[False] * (L - 1) + [True], [False] * L])
    if kind.startswith("float"):
        am = torch.randn(L, L, generator=g, dtype=torch.float64)
        am[3] = float("-inf")  # query 3 may attend to nothing
        kw: dict[str, object] = {"attn_mask": am}
    else:
        banned = torch.rand(B * H, L, L, generator=g) < 0.3
        banned[4, 1] = True  # sequence 1, head 1, query 1 may attend to nothing
        kw = {"attn_mask": banned}
    if kind.endswith("kpm"):  # the same type as attn_mask (torch warns otherwise)
        kw["key_padding_mask"] = to_float(kpm) if kind.startswith("float") else kpm
    check_three_ways(False, kw)


@pytest.mark.parametrize("mask", ["attn_float", "attn_bool_heads", "heads_bool+kpm_bool"])
def test_the_dense_path_makes_no_edges(mask: str, monkeypatch: pytest.MonkeyPatch) -> None:
    graphs: list[ga.TokenGraph] = []

    def spy(*args: object, **kwargs: object) -> tuple[ga.TokenGraph, GridInput | None]:
        graph, bias = attention_graph(*args, **kwargs)  # type: ignore[arg-type]
        graphs.append(graph)
        return graph, bias

    monkeypatch.setattr("gatattn.interop.mha.attention_graph", spy)
    mha = ga.GraphMultiheadAttention(C, H, batch_first=True).double()
    x = torch.randn(B, L, C, dtype=torch.float64, requires_grad=True)
    out, _ = mha(x, x, x, need_weights=False, **make_masks(mask, L, L))  # type: ignore[arg-type]
    out.sum().backward()
    assert len(graphs) == 1 and graphs[0]._edge_index is None  # no [2, B·L·S] edge_index
    _, w = mha(x, x, x, **make_masks(mask, L, L))  # type: ignore[arg-type]
    assert w is not None and graphs[1]._edge_index is not None  # weights: made, when asked


@pytest.mark.parametrize("mask", GRID_MASKS)
def test_the_grid_and_the_per_edge_bias_hold_the_same_values(mask: str) -> None:
    kw = make_masks(mask, L, S)
    args = {"key_padding_mask": kw.get("key_padding_mask"), "attn_mask": kw.get("attn_mask")}
    graph, bias = attention_graph(
        B, H, L, S, **args, causal=False, need_weights=True,  # type: ignore[arg-type]
        dtype=torch.float64, device=torch.device("cpu"),
    )  # fmt: skip
    assert isinstance(bias, GridInput) and list(bias) == ["attn_mask"] and len(bias) == 1
    grid = bias.grid("attn_mask")
    assert grid is not None and bias.grid("distance") is None
    merged = additive_mask(B, H, L, S, **args, dtype=torch.float64)  # type: ignore[arg-type]
    dense = grid if grid.dtype != torch.bool else torch.zeros(grid.shape, dtype=torch.float64)
    if grid.dtype == torch.bool:
        dense = dense.masked_fill(~grid, float("-inf"))
    torch.testing.assert_close(dense.expand(merged.shape), merged, atol=0, rtol=0)
    per_edge = bias["attn_mask"]  # [E, 1 | H] in edge order, made now
    assert per_edge is bias["attn_mask"] and per_edge.shape[0] == graph.num_edges
    ei = graph.edge_index
    b, i, j = ei[1] // L, ei[1] % L, ei[0] % S
    torch.testing.assert_close(per_edge, merged[b, :, i, j], atol=0, rtol=0)
    assert "attn_mask" in repr(bias)
    with pytest.raises(KeyError):
        bias["distance"]


def test_grid_of_boolean_masks_stays_boolean_and_broadcast() -> None:
    kpm = torch.tensor([[False] * 6 + [True], [False] * 7])
    heads = torch.rand(B * H, L, S) < 0.3
    only_pad = mask_grid(B, H, L, S, key_padding_mask=kpm, attn_mask=None, dtype=torch.float64)
    assert only_pad.dtype == torch.bool and only_pad.shape == (B, 1, 1, S)
    both = mask_grid(B, H, L, S, key_padding_mask=kpm, attn_mask=heads, dtype=torch.float64)
    assert both.dtype == torch.bool and both.shape == (B, H, L, S)
    torch.testing.assert_close(both, ~(heads.view(B, H, L, S) | kpm[:, None, None, :]))
    shared = mask_grid(
        B, H, L, S, key_padding_mask=None, attn_mask=torch.randn(L, S), dtype=torch.float64
    )
    assert shared.dtype == torch.float64 and shared.shape == (1, 1, L, S)


def test_bias_grid_sums_several_biases_and_checks_shapes() -> None:
    allowed = torch.rand(1, H, L, S) < 0.7
    additive = torch.randn(B, 1, L, S, dtype=torch.float64)

    class Grid(AttnMaskBias):
        def __init__(self, t: Tensor) -> None:
            super().__init__()
            self.t = t

        def dense_grid(self, edge_attr: object) -> Tensor | None:
            return self.t

    shape = (B, H, L, S)
    total = bias_grid((Grid(allowed), Grid(additive)), None, shape, torch.float64)
    assert total is not None
    want = torch.zeros(1, H, L, S, dtype=torch.float64).masked_fill(~allowed, float("-inf"))
    torch.testing.assert_close(total, want + additive, atol=0, rtol=0)
    assert bias_grid((Grid(allowed),), None, shape, torch.float64) is allowed  # lone bool: as is
    assert bias_grid((Grid(allowed), AttnMaskBias()), None, shape, torch.float64) is None
    for bad in (torch.zeros(B, H, L), torch.zeros(B, H, L, S + 1), torch.zeros(3, H, L, S)):
        with pytest.raises(ValueError, match=r"gave a grid of shape .* \(B, H, L_q, L_k\)"):
            bias_grid((Grid(bad),), None, shape, torch.float64)


def test_attend_with_a_grid_input_on_every_backend_that_runs_it() -> None:
    # GraphAttention's Problem with a GridInput: the dense backend reads the grid, the edge
    # backend the per-edge values (made on demand); both equal.
    g = torch.Generator().manual_seed(5)
    am = torch.randn(B * H, L, S, generator=g, dtype=torch.float64)
    graph, bias = attention_graph(
        B, H, L, S, key_padding_mask=None, attn_mask=am, causal=False, need_weights=False,
        dtype=torch.float64, device=torch.device("cpu"),
    )  # fmt: skip
    q = torch.randn(B * L, H, 4, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B * S, H, 4, generator=g, dtype=torch.float64) for _ in range(2))
    score = ScaledDot() + AttnMaskBias()
    dense = attend(Problem(q, k, v, graph, score, bias), "dense").out
    assert graph._edge_index is None
    edge = attend(Problem(q, k, v, graph, score, bias), "edge").out
    torch.testing.assert_close(dense, edge, atol=1e-10, rtol=0)
    part = Edges(graph.edge_index[0], graph.edge_index[1], graph, bias).slice(2, 5)  # chunks
    torch.testing.assert_close(AttnMaskBias()(part), bias["attn_mask"][2:5], atol=0, rtol=0)
    assert masks_mod.AttnMaskBias().dense_grid({"attn_mask": am}) is None  # a plain mapping
