"""Score functions w(i, j) and biases (gatattn/scores/functions.py, gatattn/scores/biases.py;
docs/scores.md).

Each score's edge path equals its formula computed densely on the full N×N matrix, and passes
``torch.autograd.gradcheck`` in fp64.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import gatattn as ga
from gatattn.kernels import ops
from gatattn.reference import dense_reference
from gatattn.scores import SCORES, DenseContext, Edges, alibi_slopes, t5_bucket

N, H, D = 5, 3, 7
C = H * D
NAMES = [*sorted(set(SCORES) - {"gat"}), "scaled_dot+alibi", "gatv2+relative_position"]


def _irregular() -> ga.TokenGraph:
    ei = torch.tensor([[0, 1, 1, 3, 2, 4, 2, 0, 3], [1, 1, 1, 0, 3, 2, 2, 3, 4]])
    return ga.TokenGraph(ei, N, N)


def _randomise(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "graph",
    [ga.complete_graph(N), _irregular(), ga.complete_graph(lengths=[2, 3])],
    ids=["complete", "irregular", "batched"],
)
def test_edge_path_equals_dense_formula(name: str, graph: ga.TokenGraph) -> None:
    layer = ga.GraphAttention(C, H, score=name).double()
    _randomise(layer)
    x = torch.randn(N, C, dtype=torch.float64, requires_grad=True)
    res = layer(x, graph, return_attention=True)
    ref = dense_reference(layer, x, graph)
    torch.testing.assert_close(res.scores, ref.scores, atol=1e-10, rtol=0)
    torch.testing.assert_close(res.weights, ref.weights, atol=1e-10, rtol=0)
    torch.testing.assert_close(res.out, ref.out, atol=1e-10, rtol=0)
    g1 = torch.autograd.grad(res.out.sum(), [x, *layer.parameters()])
    g2 = torch.autograd.grad(ref.out.sum(), [x, *layer.parameters()])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_dense_formulas_match_the_papers_written_out() -> None:
    """Independent check of ``dense`` against the formulas as printed in docs/scores.md."""
    q, k = torch.randn(H, 4, D, dtype=torch.float64), torch.randn(H, 6, D, dtype=torch.float64)
    ctx = DenseContext(torch.arange(4), torch.arange(6))
    i, j = 2, 5
    qi, kj = q[:, i], k[:, j]  # [H, D]
    add = SCORES["additive"](H, D)
    gv2 = SCORES["gatv2"](H, D)
    cos = SCORES["cosine"](H, D)
    bil = SCORES["bilinear"](H, D)
    for m in (add, gv2, cos, bil):
        m.double()
        _randomise(m)
    expected = {
        "scaled_dot": (qi * kj).sum(-1) / math.sqrt(D),
        "dot": (qi * kj).sum(-1),
        "neg_distance": -((qi - kj) ** 2).sum(-1) / math.sqrt(D),
    }
    for n, want in expected.items():
        torch.testing.assert_close(SCORES[n](H, D).dense(q, k, ctx)[:, i, j], want)
    torch.testing.assert_close(
        add.dense(q, k, ctx)[:, i, j],
        F.leaky_relu((add.att_dst * qi).sum(-1) + (add.att_src * kj).sum(-1), 0.2),
    )
    torch.testing.assert_close(
        gv2.dense(q, k, ctx)[:, i, j], (gv2.att * F.leaky_relu(qi + kj, 0.2)).sum(-1)
    )
    tau = cos.log_temperature.exp()
    torch.testing.assert_close(
        cos.dense(q, k, ctx)[:, i, j], tau * F.cosine_similarity(qi, kj, dim=-1)
    )
    torch.testing.assert_close(
        bil.dense(q, k, ctx)[:, i, j],
        torch.stack([qi[h] @ bil.weight[h] @ kj[h] for h in range(H)]),
    )


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_fp64(name: str) -> None:
    score = ga.make_score(name, H, D).double()
    _randomise(score)
    graph = _irregular()
    edges = Edges(graph.edge_index[0], graph.edge_index[1], graph)
    q = torch.randn(N, H, D, dtype=torch.float64, requires_grad=True)
    k = torch.randn(N, H, D, dtype=torch.float64, requires_grad=True)
    params = [p for p in score.parameters()]

    def fn(q: torch.Tensor, k: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return score.edge_scores(q, k, edges)

    assert torch.autograd.gradcheck(fn, (q, k, *params))


def test_chunked_path_equals_single_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force many chunks (and activation checkpointing) and compare with one chunk."""
    x = torch.randn(N, C, dtype=torch.float64)
    for name in ("gatv2", "scaled_dot", "neg_distance"):
        layer = ga.GraphAttention(C, H, score=name).double()
        _randomise(layer)
        whole = layer(x, _irregular(), return_attention=True)
        gw = torch.autograd.grad(whole.out.sum(), list(layer.parameters()))
        monkeypatch.setattr(ops, "CHUNK_ELEMENTS", H * D * 2)  # 2 edges per chunk
        part = layer(x, _irregular(), return_attention=True)
        gp = torch.autograd.grad(part.out.sum(), list(layer.parameters()))
        monkeypatch.undo()
        torch.testing.assert_close(part.out, whole.out, atol=1e-12, rtol=0)
        for a, b in zip(gp, gw):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_callable_score_is_adapted() -> None:
    def halved_dot(q_i: torch.Tensor, k_j: torch.Tensor) -> torch.Tensor:
        return (q_i * k_j).sum(-1) / 2

    layer = ga.GraphAttention(C, H, score=halved_dot).double()
    assert layer.score.name == "halved_dot"
    x = torch.randn(N, C, dtype=torch.float64)
    res = layer(x, _irregular(), return_attention=True)
    torch.testing.assert_close(
        res.out, dense_reference(layer, x, _irregular()).out, atol=1e-10, rtol=0
    )
    q = layer.q_proj(x).view(N, H, D)
    k = layer.k_proj(x).view(N, H, D)
    src, dst = _irregular().edge_index
    torch.testing.assert_close(res.scores, (q[dst] * k[src]).sum(-1) / 2)


def test_scores_compose_with_plus() -> None:
    score = ga.make_score("scaled_dot", H, D) + ga.ALiBi(H) + ga.RelativePositionBias(H)
    assert score.name == "scaled_dot+alibi+relative_position"
    assert [b.kind for b in score.parts()[1]] == ["position", "position"]
    assert score.parts()[0].has_dense and score.parts()[0].sdpa_scale(D) == 1 / math.sqrt(D)
    assert not score.has_dense  # its dense form reads the positions of its biases
    layer = ga.GraphAttention(C, H, score=score).double()
    x = torch.randn(N, C, dtype=torch.float64)
    torch.testing.assert_close(
        layer(x, _irregular()), dense_reference(layer, x, _irregular()).out, atol=1e-10, rtol=0
    )
    with pytest.raises(TypeError, match="only a ScoreBias can be added to a score, got Linear"):
        _ = ga.make_score("dot", H, D) + torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match="only a ScoreBias can be added to a score, got Linear"):
        _ = score + torch.nn.Linear(2, 2)


def test_edge_feature_bias_equals_dense() -> None:
    edge_dim = 4
    score = ga.make_score("gatv2", H, D) + ga.EdgeFeatureBias(edge_dim, H)
    layer = ga.GraphAttention(C, H, score=score).double()
    graph = ga.TokenGraph(torch.tensor([[0, 1, 3, 2, 4, 2], [1, 1, 0, 3, 2, 2]]), N, N)
    x = torch.randn(N, C, dtype=torch.float64)
    attr = torch.randn(graph.num_edges, edge_dim, dtype=torch.float64)
    res = layer(x, graph, edge_attr=attr, return_attention=True)
    ref = dense_reference(layer, x, graph, edge_attr=attr)
    torch.testing.assert_close(res.out, ref.out, atol=1e-10, rtol=0)
    torch.testing.assert_close(res.scores, ref.scores, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="EdgeFeatureBias needs edge_attr"):
        layer(x, graph)
    with pytest.raises(
        ValueError, match="edge_attr has 3 features but EdgeFeatureBias expects edge_dim=4"
    ):
        layer(x, graph, edge_attr=attr[:, :3])


def test_alibi_slopes_and_t5_buckets_known_values() -> None:
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(h + 1) for h in range(8)]))
    assert alibi_slopes(6).tolist()[:4] == alibi_slopes(4).tolist()  # paper's non-power-of-2 rule
    rel = torch.tensor([0, 1, -1, 7, -7, 8, 200, -200])
    # bidirectional, 32 buckets: 16 per side, 8 exact, log-spaced up to 128, then the last bucket
    assert t5_bucket(rel, True, 32, 128).tolist() == [0, 17, 1, 23, 7, 24, 31, 15]
    assert t5_bucket(torch.tensor([0, -1, 3, -300]), False, 32, 128).tolist() == [0, 1, 0, 31]


def test_analytic_two_token_softmax() -> None:
    """q = (0, √2), k_0 = (0, 1), k_1 = (1, 0): α = (1, 0), Attn = (e, 1) / (1 + e)."""
    layer = ga.GraphAttention(2, 1, bias=False).double()
    with torch.no_grad():
        for p in (layer.q_proj, layer.k_proj, layer.v_proj, layer.out_proj):
            p.weight.copy_(torch.eye(2))
        layer.q_proj.weight.mul_(0)
        layer.q_proj.weight[1, 0] = math.sqrt(2)  # q_0 = (0, √2) from x_0 = (1, 0)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    # target 0 attends sources 1 (k = (0, 1)) and 2 (k = (1, 0))
    res = layer(x, torch.tensor([[1, 2], [0, 0]]), return_attention=True)
    e = math.e
    torch.testing.assert_close(res.scores[:, 0], torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(
        res.weights[:, 0], torch.tensor([e / (1 + e), 1 / (1 + e)], dtype=torch.float64)
    )
    torch.testing.assert_close(
        res.out[0], torch.tensor([1 / (1 + e), e / (1 + e)], dtype=torch.float64)
    )


@pytest.mark.parametrize(
    ("spec", "exc", "match"),
    [
        ("softmaxx", ValueError, "unknown score 'softmaxx'; known scores: .*scaled_dot"),
        ("dot+rope", ValueError, "unknown score bias 'rope' in 'dot\\+rope'; known biases"),
        ("dot+edge_features", ValueError, "edge_features needs edge_dim"),
        (42, TypeError, "score must be a name, a ScoreFunction or a callable, got 42"),
    ],
)
def test_bad_score_specs(spec: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        ga.GraphAttention(C, H, score=spec)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fn", "exc", "match"),
    [
        (
            lambda q, k: (q * k).sum((-1, -2)),
            ValueError,
            r"returned shape \(9,\); expected \(E, H\) = \(9, 3\)",
        ),
        (lambda q, k: "nope", TypeError, "returned str, expected a Tensor"),
        (lambda q, k: (q * k).sum(-1).long(), TypeError, "returned dtype torch.int64"),
    ],
)
def test_score_returning_wrong_shape_or_dtype_is_named(fn: object, exc: type, match: str) -> None:
    layer = ga.GraphAttention(C, H, score=fn)  # type: ignore[arg-type]
    with pytest.raises(exc, match="score function '<lambda>' " + match):
        layer(torch.randn(N, C), _irregular())


def test_register_score() -> None:
    ga.register_score(
        "test_halved_dot", lambda h, d: ga.scores.CallableScore(lambda q, k: (q * k).sum(-1) / 2)
    )
    try:
        assert ga.GraphAttention(C, H, score="test_halved_dot")(
            torch.randn(N, C), _irregular()
        ).shape == (N, C)
        with pytest.raises(ValueError, match="score name 'test_halved_dot' is already registered"):
            ga.register_score("test_halved_dot", lambda h, d: ga.scores.Dot())
    finally:
        SCORES.pop("test_halved_dot")


def test_bias_argument_errors() -> None:
    with pytest.raises(ValueError, match="need num_buckets >= 4 and max_distance > num_buckets/4"):
        ga.RelativePositionBias(H, num_buckets=2)
    with pytest.raises(ValueError, match="temperatures must be > 0, got -1.0"):
        ga.scores.Cosine(H, temperature=-1.0)


_OTHER_SIZES = [
    (lambda: ga.make_score("gat", H + 1, D), "Additive", "num_heads", H + 1, H),
    (lambda: ga.make_score("gat", H, D + 1), "Additive", "head_dim", D + 1, D),
    (lambda: ga.make_score("gatv2", H + 1, D), "GATv2", "num_heads", H + 1, H),
    (lambda: ga.make_score("cosine", H + 2, D), "Cosine", "num_heads", H + 2, H),
    (lambda: ga.make_score("bilinear", H, D - 1), "Bilinear", "head_dim", D - 1, D),
    (lambda: ga.make_score("scaled_dot", H, D) + ga.SpatialBias(H + 1), "SpatialBias",
     "num_heads", H + 1, H),
    (lambda: ga.make_score("scaled_dot", H, D) + ga.ALiBi(H - 1), "ALiBi", "num_heads", H - 1, H),
    (lambda: ga.make_score("dot", H, D) + ga.RelativePositionBias(H + 1), "RelativePositionBias",
     "num_heads", H + 1, H),
    (lambda: ga.make_score("dot", H, D) + ga.EdgeFeatureBias(2, H + 1), "EdgeFeatureBias",
     "num_heads", H + 1, H),
    (lambda: ga.make_score("dot", H, D) + ga.PathEncodingBias(2, H + 1), "PathEncodingBias",
     "num_heads", H + 1, H),
]  # fmt: skip


@pytest.mark.parametrize(("build", "part", "attr", "got", "want"), _OTHER_SIZES)
def test_score_built_for_other_sizes_is_refused(
    build: object, part: str, attr: str, got: int, want: int
) -> None:
    """A score or bias built for another head count (or head size) used to fail later with an
    opaque size mismatch; the layer now names the part and both sizes, at construction and
    when a score is swapped in afterwards."""
    match = rf"score part {part} .* was built for {attr}={got}, but the layer has {attr}={want}"
    with pytest.raises(ValueError, match=match):
        ga.GraphAttention(C, H, score=build())  # type: ignore[operator]
    layer = ga.GraphAttention(C, H)
    layer.score = build()  # type: ignore[operator]
    with pytest.raises(ValueError, match=match):
        layer(torch.randn(N, C), ga.complete_graph(N))
