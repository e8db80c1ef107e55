"""Sums grouped by target or source (gatattn/kernels/grouping.py): one embedding_bag over the
registered edges of a graph equals the gather path and the written-out formula (fp64, 1e-10),
in forward and in gradients of first and second order; any other tensor, or a written one,
takes the gather path."""

from __future__ import annotations

import gc

import pytest
import torch

import gatattn as ga
from gatattn.backends.edge import edge_rows
from gatattn.kernels import edge_aggregate, edge_dot, grouping, ops
from gatattn.reference import dense_reference

N_T, N_S, H, D = 7, 11, 3, 5
pytestmark = pytest.mark.usefixtures("one_thread")


def _edges(duplicates: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    src = torch.randint(0, N_S, (40,), generator=gen)
    dst = torch.randint(0, N_T - 1, (40,), generator=gen)  # target N_T - 1 has no edge
    if duplicates:
        src, dst = torch.cat([src, src[:6]]), torch.cat([dst, dst[:6]])
    return src, dst


def _registered(duplicates: bool) -> tuple[torch.Tensor, torch.Tensor]:
    src, dst = _edges(duplicates)
    grouping.register(src, dst, N_S, N_T)
    return src, dst


def _formula(w: torch.Tensor, v: torch.Tensor, i_in: torch.Tensor, i_out: torch.Tensor, m: int):
    """out_i = Σ_{e: i_out(e)=i} w_e v_{i_in(e)}, one edge at a time."""
    out = torch.zeros(m, v.size(1), v.size(2), dtype=v.dtype)
    for e in range(i_out.numel()):
        out[i_out[e]] += w[e].unsqueeze(-1) * v[i_in[e]]
    return out


@pytest.mark.parametrize("duplicates", [False, True])
def test_grouped_sums_equal_the_formula_both_ways(
    duplicates: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = _registered(duplicates)
    strides: list[int | None] = []
    real = ops.bags
    monkeypatch.setattr(ops, "bags", lambda *a: strides.append(a[-1]) or real(*a))
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(src.numel(), H, dtype=torch.float64, generator=gen)
    v = torch.randn(N_S, H, D, dtype=torch.float64, generator=gen)
    u = torch.randn(N_T, H, D, dtype=torch.float64, generator=gen)
    into_targets = ops._bag_sum(w, v, dst, src, N_T)
    into_sources = ops._bag_sum(w, u, src, dst, N_S)
    assert into_targets is not None and into_sources is not None  # the grouped path ran
    torch.testing.assert_close(into_targets, _formula(w, v, src, dst, N_T), atol=1e-10, rtol=0)
    torch.testing.assert_close(into_sources, _formula(w, u, dst, src, N_S), atol=1e-10, rtol=0)
    assert not into_targets[N_T - 1].any()  # a target without edges sums to 0
    packed = torch.randn(N_S, 3, H, D, dtype=torch.float64, generator=gen)
    views = [
        packed[:, 2],  # a head-split view of a packed projection: read in place
        packed[:, 1],
        packed.view(N_S, 3 * H, D)[:, 1 : H + 1],  # nodes 3H rows apart, from row 1
        torch.randn(N_S, 2 * H, D, dtype=torch.float64, generator=gen)[:, 1::2],  # copied
        torch.randn(N_S, D, H, dtype=torch.float64, generator=gen).transpose(1, 2),  # copied
    ]
    for strided in views:
        got = ops._bag_sum(w, strided, dst, src, N_T)
        assert got is not None
        want = _formula(w, strided, src, dst, N_T)
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    # contiguous tables (H rows apart), the packed views read in place (3H), then copies
    assert strides == [H, H, 3 * H, 3 * H, 3 * H, None, None]


def _run(src: torch.Tensor, dst: torch.Tensor) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(6)
    q = torch.randn(N_T, H, D, dtype=torch.float64, generator=gen, requires_grad=True)
    k = torch.randn(N_S, H, D, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.randn(N_S, H, D, dtype=torch.float64, generator=gen, requires_grad=True)
    s = edge_dot(q, k, src, dst)  # [E, H]
    out = edge_aggregate(s.tanh(), v, src, dst, N_T)  # [N_t, H, D]
    out.backward(torch.randn(out.shape, dtype=torch.float64, generator=gen))
    return [s, out, q.grad, k.grad, v.grad]  # type: ignore[list-item]


@pytest.mark.parametrize("duplicates", [False, True])
def test_grouped_path_equals_gather_path_with_gradients(
    duplicates: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = _registered(duplicates)
    calls = []
    bag_sum = ops._bag_sum
    monkeypatch.setattr(ops, "_bag_sum", lambda *a: calls.append(1) or bag_sum(*a))
    grouped = _run(src, dst)
    assert len(calls) == 4  # forward, dq, dk, dv: each grouped (None would have gathered)
    assert bag_sum(*_probe(src, dst)) is not None
    plain = _run(src.clone(), dst.clone())  # other tensors: not registered, gathered
    for a, b in zip(grouped, plain):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def _probe(src: torch.Tensor, dst: torch.Tensor) -> tuple:
    w = torch.ones(src.numel(), H, dtype=torch.float64)
    return w, torch.ones(N_S, H, D, dtype=torch.float64), dst, src, N_T


@pytest.mark.parametrize("duplicates", [False, True])
def test_second_order_gradients_on_the_grouped_path(duplicates: bool) -> None:
    gen = torch.Generator().manual_seed(7)
    n_t, n_s, h, d = 4, 5, 2, 3  # small: gradgradcheck differentiates every input numerically
    src = torch.randint(0, n_s, (14,), generator=gen)
    dst = torch.randint(0, n_t, (14,), generator=gen)
    if duplicates:
        src, dst = torch.cat([src, src[:4]]), torch.cat([dst, dst[:4]])
    grouping.register(src, dst, n_s, n_t)
    assert grouping.bags(dst, src, n_t, h) is not None
    q, k, v = (
        torch.randn(n, h, d, dtype=torch.float64, generator=gen, requires_grad=True)
        for n in (n_t, n_s, n_s)
    )

    def f(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        s = edge_dot(q, k, src, dst)  # [E, H]
        return edge_aggregate(s.tanh(), v, src, dst, n_t)  # [N_t, H, D]

    assert torch.autograd.gradcheck(f, (q, k, v))
    assert torch.autograd.gradgradcheck(f, (q, k, v))


def test_lookups_need_the_registered_tensors_as_they_were(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    edge_index = torch.stack(_edges(False))  # [2, E]
    src, dst = edge_index[0], edge_index[1]  # views: they share the version counter
    grouping.register(src, dst, N_S, N_T)
    assert grouping.bags(dst, src, N_T, H) is not None
    assert grouping.bags(src, dst, N_S, H) is not None
    assert grouping.bags(dst.clone(), src, N_T, H) is None  # other tensor objects
    assert grouping.bags(edge_index[1], edge_index[0], N_T, H) is None  # new views
    assert grouping.bags(dst, src, N_T + 1, H) is None  # other sizes
    w = torch.ones(src.numel(), H)
    assert ops._bag_sum(w, torch.ones(N_S, H, D), dst, src, N_T) is not None
    assert (
        ops._bag_sum(w.half(), torch.ones(N_S, H, D).half(), dst, src, N_T) is None
    )  # widened first
    assert ops._bag_sum(w.to("meta"), torch.ones(N_S, H, D, device="meta"), dst, src, N_T) is None
    monkeypatch.setattr(grouping, "MAX_GROUPED_PAIRS", src.numel() * H - 1)
    assert grouping.bags(dst, src, N_T, H) is None  # too large: gathered
    monkeypatch.undo()
    edge_index[0, 0] = 3  # an in-place write through the base
    assert grouping.bags(dst, src, N_T, H) is None
    assert grouping.bags(src, dst, N_S, H) is None


def test_entries_leave_with_their_tensors() -> None:
    src, dst = _edges(False)
    grouping.register(src, dst, N_S, N_T)
    keys = {(id(dst), id(src)), (id(src), id(dst))}
    assert keys <= set(grouping._REGISTRY)
    del src, dst
    gc.collect()
    assert not keys & set(grouping._REGISTRY)
    assert all(e.out() is not None and e.inp() is not None for e in grouping._REGISTRY.values())


def test_edge_backend_groups_its_graph_and_stays_exact() -> None:
    """backend="edge" on a TokenGraph: the same registered row tensors on every call, so every
    call runs the same grouped sums (equal bits); output and gradients equal the dense formula,
    and after an in-place write to the graph's edge_index the rows are made again and the
    answer follows the new edges."""
    torch.manual_seed(0)
    layer = ga.GraphAttention(H * D, H, backend="edge").double()
    x = torch.randn(N_T, H * D, dtype=torch.float64, requires_grad=True)
    ei = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 2, 2], [1, 2, 3, 4, 5, 6, 0, 5, 5]])
    g = ga.TokenGraph(ei, N_T)
    outs = []
    for step in range(4):
        got = layer(x, g)
        outs.append(got.detach())
        src, dst = edge_rows(g)
        assert grouping.bags(dst, src, N_T, H) is not None
        want = dense_reference(layer, x, ga.TokenGraph(ei.clone(), N_T)).out
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
        (gx,) = torch.autograd.grad(got.square().sum(), x)
        (wx,) = torch.autograd.grad(want.square().sum(), x)
        torch.testing.assert_close(gx, wx, atol=1e-10, rtol=0)
        if step == 1:
            g.edge_index[0, 7] = 6  # the next rounds run on the written edges
            assert grouping.bags(dst, src, N_T, H) is None
            assert edge_rows(g)[0] is not src
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[2], outs[3])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_on_the_grouped_path(dtype: torch.dtype) -> None:
    """Half inputs are summed in fp32 on both paths; the grouped result is no further from
    the fp64 sum than the gather path's."""
    src, dst = _registered(True)
    gen = torch.Generator().manual_seed(8)
    w = torch.rand(src.numel(), H, generator=gen, dtype=torch.float64)
    v = torch.randn(N_S, H, D, generator=gen, dtype=torch.float64)
    golden = _formula(w, v, src, dst, N_T)
    grouped = edge_aggregate(w.to(dtype), v.to(dtype), src, dst, N_T)
    plain = edge_aggregate(w.to(dtype), v.to(dtype), src.clone(), dst.clone(), N_T)
    assert grouped.dtype == dtype
    err = (grouped.double() - golden).abs().max()
    ref = (plain.double() - golden).abs().max()
    assert err <= 2 * ref + torch.finfo(dtype).eps * golden.abs().max()
