"""Rotary positions (gatattn/scores/rotary.py; docs/scores.md, "Rotary positions").

α_ij = s·<R(p_i) q_i, R(p_j) k_j>, against transformers' own rotations (Llama's rotate-half,
GPT-NeoX's partial rotary, GPT-J's interleaved pairs) and written-out axial rotations, in fp64.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import gatattn as ga
from gatattn.scores import DenseContext, Edges, apply_rotary

N, H, D = 5, 3, 8
C = H * D
f64 = torch.float64


def _hf_cos_sin(pos: torch.Tensor, dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """LlamaRotaryEmbedding's cos/sin, in fp64: emb = cat(p·θ, p·θ), θ_m = base^(-2m/dim)."""
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=f64) / dim)
    freqs = pos.to(f64)[:, None] * inv_freq  # [L, dim/2]
    emb = torch.cat([freqs, freqs], -1)  # [L, dim]
    return emb.cos(), emb.sin()


@pytest.mark.parametrize("rotary_dim", [D, 4, 2])
def test_rotate_half_equals_llama_and_neox(rotary_dim: int) -> None:
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    q = torch.randn(1, H, N, D, dtype=f64)  # [B, H, L, D]
    k = torch.randn(1, H, N, D, dtype=f64)
    pos = torch.tensor([0, 3, 1, 7, 2])
    cos, sin = _hf_cos_sin(pos, rotary_dim, 500000.0)
    # GPT-NeoX's partial rotary: rotate the first rotary_dim channels, pass the rest
    qr, kr = llama.apply_rotary_pos_emb(
        q[..., :rotary_dim], k[..., :rotary_dim], cos[None], sin[None]
    )
    want_q = torch.cat([qr, q[..., rotary_dim:]], -1)
    want_k = torch.cat([kr, k[..., rotary_dim:]], -1)
    score = ga.Rotary(D, rotary_dim, base=500000.0)
    torch.testing.assert_close(score.rotate(q, pos, dim=-2), want_q, atol=1e-12, rtol=0)
    node_k = score.rotate(k[0].transpose(0, 1), pos)  # node layout [N, H, D]
    torch.testing.assert_close(node_k, want_k[0].transpose(0, 1), atol=1e-12, rtol=0)
    dense = score.dense(q, k, DenseContext(pos, pos))
    want = want_q @ want_k.transpose(-1, -2) / math.sqrt(D)
    torch.testing.assert_close(dense, want, atol=1e-12, rtol=0)


def test_interleaved_equals_gptj() -> None:
    gptj = pytest.importorskip("transformers.models.gptj.modeling_gptj")
    r = 6
    x = torch.randn(1, N, H, D, dtype=f64)  # GPT-J's [B, L, H, D]
    table = gptj.create_sinusoidal_positions(N, r).to(f64)  # [L, r]: sin | cos
    pos = torch.arange(N)
    sin, cos = torch.split(table[pos], r // 2, dim=-1)  # [L, r/2]
    rot = gptj.apply_rotary_pos_emb(x[..., :r], sin[None], cos[None])  # [1, L, H, r]
    want = torch.cat([rot, x[..., r:]], -1)[0]  # [N, H, D]
    got = apply_rotary(x[0], pos, r, interleaved=True)  # node layout
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)  # GPT-J's table is fp32
    got64 = apply_rotary(x[0], pos, r, interleaved=True)
    a, b = x[0, ..., 0:r:2], x[0, ..., 1:r:2]  # written out: pair (2m, 2m + 1)
    ang = pos[:, None, None].to(f64) * 10000.0 ** (-torch.arange(0, r, 2, dtype=f64) / r)
    pairs = torch.stack([a * ang.cos() - b * ang.sin(), b * ang.cos() + a * ang.sin()], -1)
    torch.testing.assert_close(got64[..., :r], pairs.flatten(-2), atol=1e-12, rtol=0)


def test_axial_2d_positions_rotate_each_group_by_its_coordinate() -> None:
    x = torch.randn(N, H, D, dtype=f64)
    pos = torch.tensor([[0.0, 1.5], [2.0, -1.0], [3.0, 0.0], [0.5, 4.0], [1.0, 1.0]])
    got = apply_rotary(x, pos, D)  # two groups of D/2 = 4 channels
    g0 = apply_rotary(x[..., :4], pos[:, 0], 4)
    g1 = apply_rotary(x[..., 4:], pos[:, 1], 4)
    torch.testing.assert_close(got, torch.cat([g0, g1], -1), atol=1e-12, rtol=0)


@given(st.floats(-50, 50), st.integers(0, 2**16))
def test_scores_depend_on_position_differences_only(shift: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(H, N, D, dtype=f64, generator=gen)
    k = torch.randn(H, N, D, dtype=f64, generator=gen)
    pos = torch.rand(N, dtype=f64, generator=gen) * 20
    score = ga.Rotary(D, 6, interleaved=bool(seed % 2))
    a = score.dense(q, k, DenseContext(pos, pos))
    b = score.dense(q, k, DenseContext(pos + shift, pos + shift))
    torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


GRAPHS = {
    "complete": lambda: ga.complete_graph(N),
    "causal": lambda: ga.causal_graph(lengths=[2, 3]),
    "window": lambda: ga.window_graph(N, 1),
    "irregular": lambda: ga.TokenGraph(torch.tensor([[0, 1, 4, 3, 2], [1, 1, 1, 0, 3]]), N, N),
}


@pytest.mark.parametrize("backend", ["edge", "auto"])
@pytest.mark.parametrize("graph", list(GRAPHS))
def test_layer_equals_sdpa_on_rotated_q_k(graph: str, backend: str) -> None:
    """The written-out form: rotate q and k by each token's position in its sequence, then
    SDPA under the graph's mask; outputs and every gradient at 1e-10."""
    g = GRAPHS[graph]()
    score = ga.Rotary(D, 6, base=100.0)
    layer = ga.GraphAttention(C, H, score=score, backend=backend).double()
    x = torch.randn(N, C, dtype=f64, requires_grad=True)
    ours = layer(x, g)
    q, k, v = (t.transpose(0, 1) for t in layer.project(x, x, x))  # [H, N, D]
    cos, sin = _hf_cos_sin(g.positions(), 6, 100.0)  # [N, 6]

    def rot(t: torch.Tensor) -> torch.Tensor:  # Llama's rotate-half, written out
        r, rest = t[..., :6], t[..., 6:]
        half = torch.cat([-r[..., 3:], r[..., :3]], -1)
        return torch.cat([r * cos + half * sin, rest], -1)

    out = F.scaled_dot_product_attention(rot(q), rot(k), v, attn_mask=g.to_dense_mask())
    out = torch.nan_to_num(out)  # rows without an edge: 0
    ref = layer.out_proj(out.transpose(0, 1).reshape(N, C))
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=0)
    wrt = [x, *layer.parameters()]
    for a, b in zip(torch.autograd.grad(ours.sum(), wrt), torch.autograd.grad(ref.sum(), wrt)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("graph", ["complete", "causal", "window"])
def test_rotary_dispatches_to_sdpa(graph: str) -> None:
    layer = ga.GraphAttention(C, H, score="rotary")
    assert layer.explain_backend(torch.randn(N, C), GRAPHS[graph]()).startswith("dense")
    biased = ga.GraphAttention(C, H, score="rotary+alibi")
    assert biased.explain_backend(torch.randn(N, C), GRAPHS[graph]()).startswith("dense")


def test_float_positions_given_to_forward_and_gradcheck() -> None:
    layer = ga.GraphAttention(C, H, score=ga.Rotary(D, 4), backend="auto").double()
    g = ga.complete_graph(N)
    x = torch.randn(N, C, dtype=f64)
    pos = torch.tensor([0.0, 0.5, 2.25, -1.0, 3.0], dtype=f64)
    res = layer(x, g, pos=pos, return_attention=True)
    from gatattn.reference import dense_reference

    ref = dense_reference(layer, x, g, pos=pos)
    torch.testing.assert_close(res.out, ref.out, atol=1e-10, rtol=0)
    torch.testing.assert_close(res.scores, ref.scores, atol=1e-10, rtol=0)
    assert not torch.allclose(res.out, layer(x, g))  # the positions are read
    score = ga.Rotary(D, 4, interleaved=True).double()
    pos2 = torch.rand(N, 2, dtype=f64) * 5  # axial, 2 groups of 1 pair
    edges = Edges(g.edge_index[0], g.edge_index[1], g, positions=(pos2, pos2))
    q = torch.randn(N, H, D, dtype=f64, requires_grad=True)
    k = torch.randn(N, H, D, dtype=f64, requires_grad=True)
    src, dst = g.edge_index
    torch.testing.assert_close(
        score.edge_scores(q, k, edges), score(q[dst], k[src], edges), atol=1e-12, rtol=0
    )
    assert torch.autograd.gradcheck(lambda q, k: score.edge_scores(q, k, edges), (q, k))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rotary_dim": 7}, "rotary_dim must be an even int"),
        ({"rotary_dim": 10}, "rotary_dim must be an even int"),
        ({"rotary_dim": 0}, "rotary_dim must be an even int"),
        ({"base": 0.0}, "base must be > 0"),
    ],
)
def test_bad_construction_is_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ga.Rotary(D, **kwargs)
    with pytest.raises(ValueError, match="head_dim >= 2"):
        ga.Rotary(1)


def test_bad_inputs_are_refused() -> None:
    score = ga.Rotary(D, 6)
    x = torch.randn(N, H, D)
    with pytest.raises(ValueError, match=r"query positions of shape \[5\] or \[5, P\]"):
        score.rotate(x, torch.arange(4), "query")
    with pytest.raises(ValueError, match="built for head_dim=8 but key has head size 4"):
        score.rotate(torch.randn(N, H, 4), torch.arange(N), "key")
    with pytest.raises(ValueError, match="must be divisible by 4"):  # 2-D: 6 % 4
        score.rotate(x, torch.zeros(N, 2))
    layer = ga.GraphAttention(C, H, score=score)
    g = ga.complete_graph(N)
    with pytest.raises(ValueError, match=r"pos must hold one position per node, shape \[5\]"):
        layer(torch.randn(N, C), g, pos=torch.arange(4))
    with pytest.raises(ValueError, match="dtype torch.bool"):
        layer(torch.randn(N, C), g, pos=torch.ones(N, dtype=torch.bool))
    with pytest.raises(TypeError, match="pos_src must be a Tensor"):
        layer(torch.randn(N, C), g, pos=torch.arange(N), pos_src=[0, 1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pos_src is given without pos"):
        layer(torch.randn(N, C), g, pos_src=torch.arange(N))
    with pytest.raises(ValueError, match="different widths"):
        layer(torch.randn(N, C), g, pos=torch.arange(N), pos_src=torch.zeros(N, 2))
    bip = ga.bipartite_graph(N, 4)
    with pytest.raises(ValueError, match="needs the key positions too"):
        layer(torch.randn(N, C), bip, x_src=torch.randn(4, C), pos=torch.arange(N))
