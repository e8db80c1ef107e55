"""The chunked edge primitives (gatattn/ops.py): the CSR fast path equals the plain gather path."""

from __future__ import annotations

import pytest
import torch

from gatattn.kernels import ops

N_T, N_S, H, D = 7, 11, 3, 5


def _edges(duplicates: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    src = torch.randint(0, N_S, (40,), generator=gen)
    dst = torch.randint(0, N_T, (40,), generator=gen)  # unsorted, some targets empty
    if duplicates:
        src, dst = torch.cat([src, src[:6]]), torch.cat([dst, dst[:6]])
    else:
        key = torch.unique(dst * N_S + src)
        src, dst = key % N_S, key // N_S
        perm = torch.randperm(src.numel(), generator=gen)
        src, dst = src[perm], dst[perm]
    return src, dst


def _run(src: torch.Tensor, dst: torch.Tensor) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(6)
    q = torch.randn(N_T, H, D, dtype=torch.float64, generator=gen, requires_grad=True)
    k = torch.randn(N_S, H, D, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.randn(N_S, H, D, dtype=torch.float64, generator=gen, requires_grad=True)
    s = ops.edge_dot(q, k, src, dst)  # [E, H]
    out = ops.edge_aggregate(s.tanh(), v, src, dst, N_T)  # [N_t, H, D]
    out.backward(torch.randn(out.shape, dtype=torch.float64, generator=gen))
    return [s, out, q.grad, k.grad, v.grad]  # type: ignore[list-item]


@pytest.mark.parametrize("duplicates", [False, True])
def test_sparse_path_equals_gather_path(duplicates: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = _edges(duplicates)
    monkeypatch.setattr(ops, "SPARSE_MIN_EDGES", 1)  # take the CSR path on this small graph
    fast = _run(src, dst)
    monkeypatch.setattr(ops, "_sparse_ok", lambda *a: False)
    plain = _run(src, dst)
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_sampled_matmul_gives_parallel_edges_their_own_copy() -> None:
    a, b = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    out = torch.zeros(4, 2)
    ia, ib = torch.tensor([0, 1, 0, 0]), torch.tensor([2, 0, 2, 1])  # edge 0 and 2 are parallel
    ops._sddmm_into(out, a, b, ia, ib)
    want = torch.stack([(a[i] * b[j]).sum(-1) for i, j in zip(ia.tolist(), ib.tolist())])
    torch.testing.assert_close(out, want)


def test_fast_path_only_in_eager_fp32_fp64_on_large_graphs() -> None:
    x = torch.zeros(2, 1, 1)
    big = ops.SPARSE_MIN_EDGES
    assert ops._sparse_ok(x.squeeze(-1), x, big)
    assert not ops._sparse_ok(x.squeeze(-1), x, big - 1)
    assert not ops._sparse_ok(x.squeeze(-1).half(), x.half(), big)
    assert not ops._sparse_ok(x.squeeze(-1).float(), x.double(), big)


@pytest.mark.parametrize(
    "score", ["scaled_dot", "cosine", "bilinear", "neg_distance", "gatv2+alibi"]
)
def test_layer_on_the_csr_path_equals_the_dense_formula(
    score: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gatattn as ga
    from gatattn.reference import dense_reference

    monkeypatch.setattr(ops, "SPARSE_MIN_EDGES", 1)
    src, dst = _edges(duplicates=True)
    graph = ga.TokenGraph(torch.stack([src, dst]), N_S, N_S)  # N_T < N_S: some isolated targets
    layer = ga.GraphAttention(12, 3, score=score, backend="edge").double()
    x = torch.randn(N_S, 12, dtype=torch.float64, requires_grad=True)
    res = layer(x, graph, return_attention=True)
    ref = dense_reference(layer, x, graph)
    torch.testing.assert_close(res.out, ref.out, atol=1e-10, rtol=0)
    torch.testing.assert_close(res.weights, ref.weights, atol=1e-10, rtol=0)
    grads = torch.autograd.grad(res.out.sum(), [x, *layer.parameters()])
    want = torch.autograd.grad(ref.out.sum(), [x, *layer.parameters()])
    for a, b in zip(grads, want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
