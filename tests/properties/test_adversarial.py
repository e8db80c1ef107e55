"""The permanent adversarial suite (issue 11): hypothesis tries hostile inputs on every path.

- random graphs (duplicate edges, isolated targets, self-loops or none) x every backend that
  supports them, in fp64 (equal to the edge backend, 1e-10), fp32/bf16/fp16 and under autocast
  (within a small multiple of torch's own error against an fp64 golden);
- second-order gradients on the gather and the CSR paths (gradgradcheck, fp64);
- in-place mutation of edge_index after a first call (caches never go stale);
- ``batch=`` on every builder of the gallery (never changes the neighbourhoods);
- non-finite inputs (the edge backend keeps a NaN/inf to the rows that read it);
- export round trips of random unicode tokens through GraphML, GEXF and JSON.

The default hypothesis profile keeps each test to a few seconds; ``GATATTN_HYPOTHESIS_PROFILE=
thorough`` runs 2,000 examples per test (tests/conftest.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

import gatattn as ga
from gatattn.backends import BACKENDS, Problem, attend
from gatattn.kernels import ops
from gatattn.patterns import GALLERY

H, D = 2, 3  # distinct from every N below, which starts at 4
C = H * D
FAST = ("dense", "block")  # flex runs only on CUDA (its test module skips without it)
LOW = (torch.float32, torch.bfloat16, torch.float16)

pytestmark = pytest.mark.usefixtures("one_thread")


@st.composite
def graphs(draw: st.DrawFn, *, distinct: bool = False, max_n: int = 9) -> ga.TokenGraph:
    """A self-attention graph on 4..max_n nodes: random edges (parallel ones unless
    ``distinct``), often with isolated targets; sometimes every pair (dense can run it)."""
    n = draw(st.integers(4, max_n))
    if draw(st.booleans()):
        return ga.complete_graph(n) if draw(st.booleans()) else ga.causal_graph(n)
    pairs = st.tuples(st.integers(0, n - 1), st.integers(0, n - 1))
    edges = draw(st.lists(pairs, min_size=1, max_size=3 * n, unique=distinct))
    ei = torch.tensor(edges, dtype=torch.long).t().contiguous()  # [2, E]
    return ga.TokenGraph(ei, n, n)


def _qkv(n: int, dtype: torch.dtype, seed: int, scale: float = 1.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (scale * torch.randn(n, H, D, dtype=torch.float64, generator=gen)).to(dtype)
        for _ in range(3)
    ]  # q, k, v [N, H, D]


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: ga.TokenGraph) -> torch.Tensor:
    """torch's own attention under the graph's mask; rows with no edge output 0, as gatattn."""
    mask = g.to_dense_mask()  # [N_t, N_s]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask
    ).transpose(0, 1)  # [N, H, D]
    return torch.where(mask.any(1)[:, None, None], out, torch.zeros_like(out))


def _supported(name: str, p: Problem) -> bool:
    return BACKENDS[name].supports(p) == ()


# ------------------------------------------------------------------ backends x dtypes
@given(g=graphs(), seed=st.integers(0, 2**16))
def test_every_backend_equals_the_edge_backend_fp64(g: ga.TokenGraph, seed: int) -> None:
    q, k, v = (t.requires_grad_() for t in _qkv(g.num_dst, torch.float64, seed))
    p = Problem(q, k, v, g, ga.make_score("scaled_dot", H, D), need_weights=True)
    want = BACKENDS["edge"].run(p)
    wgrad = torch.autograd.grad(want.out.pow(2).sum(), [q, k, v])
    for name in FAST:
        if not _supported(name, p):
            continue
        got = attend(p, name)
        torch.testing.assert_close(got.out, want.out, atol=1e-10, rtol=0)
        torch.testing.assert_close(got.weights, want.weights, atol=1e-10, rtol=0)
        for a, b in zip(torch.autograd.grad(got.out.pow(2).sum(), [q, k, v]), wgrad):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@given(
    g=graphs(distinct=True),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from(LOW),
    scale=st.sampled_from([1.0, 8.0]),
)
def test_low_precision_is_within_torchs_own_error(
    g: ga.TokenGraph, seed: int, dtype: torch.dtype, scale: float, within_torch_error
) -> None:
    """fp32, bf16, fp16 on every backend: error against the fp64 golden <= a small multiple
    of SDPA's own error in the same dtype (scale 8: logits up to ~200, softmax near one-hot)."""
    q, k, v = _qkv(g.num_dst, dtype, seed, scale)
    gold = _sdpa(q.double(), k.double(), v.double(), g)
    theirs = _sdpa(q, k, v, g)
    p = Problem(q, k, v, g, ga.make_score("scaled_dot", H, D))
    for name in ("edge", *FAST):
        if _supported(name, p):
            within_torch_error(attend(p, name).out, theirs, gold, what=f"{name} {dtype}")


@given(g=graphs(distinct=True), seed=st.integers(0, 2**16), dtype=st.sampled_from(LOW[1:]))
def test_autocast_on_every_backend(
    g: ga.TokenGraph, seed: int, dtype: torch.dtype, within_torch_error
) -> None:
    """An fp32 layer under CPU autocast: every backend runs, and is as close to the fp64
    golden as torch's own nn.MultiheadAttention under the same autocast."""
    torch.manual_seed(seed)
    x = torch.randn(g.num_dst, C)
    mask = g.to_dense_mask()
    for backend in ("edge", *FAST):
        layer = ga.GraphAttention(C, H, backend=backend)
        mha = layer.to_torch()
        try:
            with torch.autocast("cpu", dtype=dtype):
                ours = layer(x, g)
                theirs = mha(x[:, None], x[:, None], x[:, None], attn_mask=~mask)[0][:, 0]
        except ValueError as err:  # a forced backend that does not support this graph
            assert "cannot run" in str(err) or "backend" in str(err)
            continue
        gold = layer.double()(x.double(), g)
        theirs = torch.where(mask.any(1)[:, None], theirs, gold.to(theirs.dtype))  # MHA: NaN rows
        within_torch_error(ours, theirs, gold, what=f"{backend} autocast {dtype}")


# ------------------------------------------------------------------ second-order gradients
@given(g=graphs(max_n=5), seed=st.integers(0, 2**16), csr=st.booleans())
def test_second_order_gradients(g: ga.TokenGraph, seed: int, csr: bool) -> None:
    """gradgradcheck of the edge backend (fp64) on the gather path and on the CSR path."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (  # one head: gradgradcheck differentiates every input numerically
        torch.randn(g.num_dst, 1, D, dtype=torch.float64, generator=gen, requires_grad=True)
        for _ in range(3)
    )
    score = ga.make_score("scaled_dot", 1, D)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ops, "SPARSE_MIN_EDGES", 1 if csr else 1 << 62)

        def f(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return BACKENDS["edge"].run(Problem(q, k, v, g, score)).out

        assert torch.autograd.gradgradcheck(f, (q, k, v), fast_mode=True)


# ------------------------------------------------------------------ mutation after use
@given(n=st.integers(6, 12), seed=st.integers(0, 2**16), backend=st.sampled_from(["auto", *FAST]))
def test_mutation_after_use_never_gives_a_stale_answer(n: int, seed: int, backend: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    build = [ga.complete_graph, ga.causal_graph, lambda n: ga.window_graph(n, 2)]
    g = build[seed % 3](n)
    layer = ga.GraphAttention(C, H, backend=backend).double()
    edge = ga.GraphAttention(C, H, backend="edge").double()
    edge.load_state_dict(layer.state_dict())
    x = torch.randn(n, C, dtype=torch.float64, generator=gen)
    try:
        layer(x, g)  # fills the caches and the trust in the tag
    except ValueError:
        assume(False)  # forced backend does not support this graph
    with torch.no_grad():
        g.edge_index[0] = g.edge_index[0][torch.randperm(g.num_edges, generator=gen)]
    fresh = ga.TokenGraph(g.edge_index.clone(), n, n)
    try:
        got = layer(x, g)
    except ValueError as err:  # a forced fast backend refuses the changed graph: never stale
        assert "cannot run" in str(err) or "does not match" in str(err)
        return
    torch.testing.assert_close(got, edge(x, fresh), atol=1e-10, rtol=0)


# ------------------------------------------------------------------ batch= on every builder
@given(
    name=st.sampled_from(sorted(GALLERY)),
    n=st.integers(8, 14),
    cuts=st.lists(st.integers(1, 13), max_size=3),
    seed=st.integers(0, 2**16),
)
def test_batch_never_changes_the_neighbourhoods(
    name: str, n: int, cuts: list[int], seed: int
) -> None:
    g = GALLERY[name][0](n)
    assume(g.num_src == g.num_dst)
    n = g.num_dst
    bounds = sorted({c for c in cuts if c < n})
    batch = torch.zeros(n, dtype=torch.long)
    for c in bounds:
        batch[c:] += 1
    torch.manual_seed(seed)
    layer = ga.GraphAttention(C, H).double()
    edge = ga.GraphAttention(C, H, backend="edge").double()
    edge.load_state_dict(layer.state_dict())
    x = torch.randn(n, C, dtype=torch.float64)
    torch.testing.assert_close(layer(x, g, batch=batch), edge(x, g), atol=1e-10, rtol=0)


# ------------------------------------------------------------------ non-finite inputs
@given(
    g=graphs(),
    seed=st.integers(0, 2**16),
    bad=st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    data=st.data(),
)
def test_edge_backend_keeps_a_non_finite_token_to_its_neighbours(
    g: ga.TokenGraph, seed: int, bad: float, data: st.DataObject
) -> None:
    """out_i depends only on x_i and N(i) (docs/backends.md, "Non-finite inputs"): a NaN or
    inf token t reaches only the rows i = t and those with t in N(i), on the edge backend;
    every backend makes the rows that read t non-finite (none hides it)."""
    t = data.draw(st.integers(0, g.num_dst - 1))
    torch.manual_seed(seed)
    layer = ga.GraphAttention(C, H, backend="edge").double()
    x = torch.randn(g.num_dst, C, dtype=torch.float64)
    x[t, seed % C] = bad
    out = layer(x, g)
    src, dst = g.edge_index
    reads = torch.zeros(g.num_dst, dtype=torch.bool)
    reads[dst[src == t]] = True  # rows with t in N(i)
    touched = reads.clone()
    touched[t] = True
    assert torch.isfinite(out[~touched]).all()
    assert not torch.isfinite(out[reads]).all(1).any()  # never hidden where it is read
    for name in FAST:  # fast backends may spread it further (documented), never hide it
        fast = ga.GraphAttention(C, H, backend=name).double()
        fast.load_state_dict(layer.state_dict())
        try:
            y = fast(x, g)
        except ValueError:
            continue
        assert not torch.isfinite(y[reads]).all(1).any()


def test_edge_backend_locality_on_the_csr_path() -> None:
    """The same on a graph above the CSR threshold (the sparse kernels never mix rows)."""
    n = 160
    gen = torch.Generator().manual_seed(0)
    ei = torch.randint(0, n, (2, ops.SPARSE_MIN_EDGES), generator=gen)
    g = ga.TokenGraph(ei, n, n)
    layer = ga.GraphAttention(C, H, backend="edge")
    x = torch.randn(n, C, generator=gen)
    x[7] = float("nan")
    out = layer(x, g)
    touched = torch.zeros(n, dtype=torch.bool)
    touched[ei[1][ei[0] == 7]] = True
    touched[7] = True
    assert torch.isfinite(out[~touched]).all() and not torch.isfinite(out[touched]).all(1).any()


# ------------------------------------------------------------------ export round trips
@given(tokens=st.lists(st.text(max_size=6), min_size=1, max_size=5), data=st.data())
def test_export_round_trip_of_random_unicode_tokens(tokens: list[str], data: st.DataObject) -> None:
    """Every token written to GraphML, GEXF or JSON reads back identical (read_graph undoes
    the lossless XML escape), whatever its characters."""
    suffix = data.draw(st.sampled_from([".graphml", ".gexf", ".json"]))
    n = len(tokens)
    res = ga.GraphAttention(C, H)(torch.randn(n, C), ga.complete_graph(n), return_attention=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = ga.write_graph(res, Path(tmp) / f"g{suffix}", tokens=tokens)
        R = ga.inspect.read_graph(path)
    back = {int(i): tok for i, tok in R.nodes(data="token")}
    assert back == dict(enumerate(tokens))
    assert torch.equal(ga.from_networkx(R).edge_index, res.edge_index)
