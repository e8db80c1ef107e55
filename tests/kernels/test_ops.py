"""The chunked edge primitives (gatattn/kernels/ops.py): the CSR fast path equals the plain gather
path."""

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


# ---------------------------------------------------------------- issue 11: higher-order gradients
@pytest.mark.parametrize("duplicates", [False, True])
@pytest.mark.parametrize("csr", [True, False])
def test_second_order_gradients_are_exact_on_every_path(
    duplicates: bool, csr: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gradgradcheck (fp64 finite differences of the backward) on the CSR and gather paths,
    with parallel edges: the CSR path used to return a 44% wrong Hessian-vector product, and
    crashed on a duplicate edge ("SparseCompressedTensorBackward0 returned an invalid gradient")."""
    monkeypatch.setattr(ops, "SPARSE_MIN_EDGES", 1 if csr else 1 << 62)
    gen = torch.Generator().manual_seed(7)
    n_t, n_s, h, d = 4, 5, 2, 3  # small: gradgradcheck differentiates every input numerically
    src = torch.randint(0, n_s, (14,), generator=gen)
    dst = torch.randint(0, n_t, (14,), generator=gen)
    if duplicates:
        src, dst = torch.cat([src, src[:4]]), torch.cat([dst, dst[:4]])
    else:
        key = torch.unique(dst * n_s + src)
        src, dst = key % n_s, key // n_s
    q, k, v = (
        torch.randn(n, h, d, dtype=torch.float64, generator=gen, requires_grad=True)
        for n in (n_t, n_s, n_s)
    )

    def f(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        s = ops.edge_dot(q, k, src, dst)  # [E, H]
        return ops.edge_aggregate(s.tanh(), v, src, dst, n_t)  # [N_t, H, D]

    assert torch.autograd.gradcheck(f, (q, k, v))
    assert torch.autograd.gradgradcheck(f, (q, k, v))


def test_hessian_vector_product_on_a_graph_above_the_csr_threshold() -> None:
    """A real graph of >= SPARSE_MIN_EDGES edges (with parallel edges), through the layer:
    the Hessian-vector product equals central finite differences of the gradient in fp64."""
    import gatattn as ga

    n = 96
    gen = torch.Generator().manual_seed(3)
    ei = torch.randint(0, n, (2, ops.SPARSE_MIN_EDGES), generator=gen)
    ei = torch.cat([ei, ei[:, :7]], 1)  # 7 parallel edges
    graph = ga.TokenGraph(ei, n, n)
    layer = ga.GraphAttention(4, 2, backend="edge").double()
    x = torch.randn(n, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    vec = torch.randn(n, 4, dtype=torch.float64, generator=gen)

    def grad(x: torch.Tensor) -> torch.Tensor:
        (g,) = torch.autograd.grad(layer(x, graph).pow(2).sum(), x, create_graph=True)
        return g

    (hvp,) = torch.autograd.grad((grad(x) * vec).sum(), x)
    eps = 1e-6
    fd = (grad(x + eps * vec) - grad(x - eps * vec)) / (2 * eps)
    torch.testing.assert_close(hvp, fd, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_on_the_csr_path(dtype: torch.dtype) -> None:
    """Under CPU autocast a graph above the CSR threshold used to raise
    ``addmm_out_sparse_csr_impl_mkl not implemented for 'BFloat16'``; the kernels now run with
    autocast off and half inputs accumulate in fp32. Error bound: a small multiple of torch's
    own error (SDPA under the same autocast) against the fp64 golden."""
    import gatattn as ga

    n = 128
    gen = torch.Generator().manual_seed(4)
    key = torch.randperm(n * n, generator=gen)[: ops.SPARSE_MIN_EDGES + 5]  # distinct pairs
    graph = ga.TokenGraph(torch.stack([key % n, key // n]), n, n)  # SDPA's mask is this graph
    layer = ga.GraphAttention(12, 3, backend="edge")
    mha = layer.to_torch()
    mask = graph.to_dense_mask()  # [N, N]
    x = torch.randn(n, 12, generator=gen)

    def run(fn, x: torch.Tensor, autocast: bool) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
        x = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=dtype, enabled=autocast):
            out = fn(x)
        (gx,) = torch.autograd.grad(out.double().pow(2).sum(), x)  # backward ran the CSR kernels
        return [out.double(), gx.double()]

    def torch_attn(x: torch.Tensor) -> torch.Tensor:  # torch's own attention, same graph
        return mha(x[:, None], x[:, None], x[:, None], attn_mask=~mask, need_weights=False)[0][:, 0]

    ours = run(lambda x: layer(x, graph), x, True)
    theirs = run(torch_attn, x, True)
    layer.double(), mha.double()
    gold = run(lambda x: layer(x, graph), x.double(), False)
    for a, b, g in zip(ours, theirs, gold):
        err, torch_err = (a - g).abs().max(), (b - g).abs().max()
        assert torch_err > 0  # torch itself rounds: the bound is meaningful
        assert err <= 3 * torch_err, (err, torch_err)


@pytest.mark.parametrize("duplicates", [False, True])
def test_dot_products_in_small_chunks_equal_one_chunk(
    duplicates: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gathered dots run in cache-sized chunks (DOT_CHUNK_ELEMENTS, at most DOT_CHUNKS of
    them): many chunks give the one-chunk values and gradients."""
    src, dst = _edges(duplicates)
    monkeypatch.setattr(ops, "DOT_CHUNK_ELEMENTS", 1 << 30)
    one = _run(src, dst)
    monkeypatch.setattr(ops, "DOT_CHUNK_ELEMENTS", 3 * H * D)  # 3 edges per chunk
    calls = []
    real = ops.chunk_bounds

    def spy(*a: int) -> list[tuple[int, int]]:
        if len(a) == 3:  # the dots' calls (with a chunk size)
            calls.append(len(real(*a)))
        return real(*a)

    monkeypatch.setattr(ops, "chunk_bounds", spy)
    many = _run(src, dst)
    assert len(calls) == 2 and min(calls) > 2  # the score dots and the weights' gradient
    for a, b in zip(many, one):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    monkeypatch.setattr(ops, "DOT_CHUNKS", 2)  # at most two chunks, whatever the size asks
    calls.clear()
    _run(src, dst)
    assert calls == [2, 2]
