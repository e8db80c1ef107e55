"""Dispatch is data: an ordered registry that ``ga.register_backend`` extends, backends that give
every reason, and scores that declare what they are without naming a backend."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import gatattn as ga
from gatattn.backends import BACKENDS, Backend, BackendOutput, Problem, decide, select_backend
from gatattn.scores import ScoreBias, ScoreFunction

ROOT = Path(__file__).resolve().parents[2]
H, D = 3, 7

pytestmark = pytest.mark.usefixtures("one_thread")


class ToyBackend(Backend):
    """SDPA over the graph's dense mask, for at most 100 targets and s·<q_i, k_j> scores."""

    name = "toy"

    def supports(self, p: Problem) -> tuple[str, ...]:
        why = []
        if p.score.parts()[0].sdpa_scale(p.q.size(-1)) is None:
            why.append("toy runs s·<q_i, k_j> only")
        if p.score.parts()[1]:
            why.append("toy runs no bias")
        if p.graph.num_dst > 100:
            why.append(f"toy runs at most 100 targets, not {p.graph.num_dst}")
        return tuple(why)

    def explain(self, p: Problem) -> str:
        return "a toy for small graphs"

    def run(self, p: Problem) -> BackendOutput:
        self.refuse(p)
        mask = p.graph.to_dense_mask()  # [N_t, N_s]
        scale = p.score.parts()[0].sdpa_scale(p.q.size(-1))
        out = F.scaled_dot_product_attention(
            p.q.transpose(0, 1), p.k.transpose(0, 1), p.v.transpose(0, 1), mask, scale=scale
        ).transpose(0, 1)  # [N_t, H, D]
        return BackendOutput(torch.where(mask.any(1)[:, None, None], out, 0.0), None, None)


@pytest.fixture
def registry() -> Iterator[dict[str, Backend]]:
    """The registry, restored afterwards (register_backend changes it for the process)."""
    saved = dict(BACKENDS)
    yield BACKENDS
    BACKENDS.clear()
    BACKENDS.update(saved)


def _problem(score: str, g: ga.TokenGraph, n: int | None = None) -> Problem:
    q = torch.randn(g.num_dst if n is None else n, H, D, dtype=torch.float64)
    return Problem(q, q, q, g, ga.make_score(score, H, D).double())


def test_registered_toy_backend_is_picked_and_refused_with_its_reasons(registry) -> None:
    ga.register_backend(ToyBackend())
    assert list(registry) == ["dense", "flex", "block", "toy", "edge"]
    assert ga.backends.backend_names()[-2:] == ("toy", "edge")
    g = ga.window_graph(50, 3)  # too sparse for dense, too small for tiles
    name, why = select_backend("auto", _problem("scaled_dot", g))
    assert name == "toy" and why.startswith("a toy for small graphs (passed over dense: "), why
    layer = ga.GraphAttention(H * D, H).double()
    x = torch.randn(50, H * D, dtype=torch.float64)
    edge = ga.GraphAttention(H * D, H, backend="edge").double()
    edge.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x, g), edge(x, g), atol=1e-12, rtol=0)
    name, why = select_backend("auto", _problem("gatv2", g))  # toy refuses: the next one runs
    assert name == "edge" and "toy: toy runs s·<q_i, k_j> only" in why, why
    big = ga.window_graph(300, 3)
    with pytest.raises(ValueError, match="backend='toy' cannot run score 'gatv2'") as err:
        decide("toy", _problem("gatv2", big))
    first, *rest = str(err.value).splitlines()
    assert first.endswith("toy runs s·<q_i, k_j> only; toy runs at most 100 targets, not 300")
    assert [line.split(":")[0].strip() for line in rest[1:]] == list(registry)


def test_register_backend_before_another(registry) -> None:
    ga.register_backend(ToyBackend(), before="dense")
    assert list(registry)[:2] == ["toy", "dense"]
    name, _ = select_backend("auto", _problem("scaled_dot", ga.complete_graph(12)))
    assert name == "toy"  # first in the priority list now


def test_register_backend_errors(registry) -> None:
    with pytest.raises(TypeError, match="register_backend needs a Backend instance, got type"):
        ga.register_backend(ToyBackend)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backend name 'block' is already registered"):
        ga.register_backend(ga.backends.block.BlockBackend())
    auto = ToyBackend()
    auto.name = "auto"  # type: ignore[misc]
    with pytest.raises(ValueError, match="non-empty str other than 'auto', got 'auto'"):
        ga.register_backend(auto)
    blank = ToyBackend()
    blank.name = ""  # type: ignore[misc]
    with pytest.raises(ValueError, match="non-empty str other than 'auto', got ''"):
        ga.register_backend(blank)
    with pytest.raises(ValueError, match=r"before='fast' is not a registered backend; choose"):
        ga.register_backend(ToyBackend(), before="fast")
    assert "toy" not in registry


def test_no_backend_runs_the_problem(registry) -> None:
    """A registry without the edge backend can run out of backends: the error lists them."""
    del registry["edge"]
    with pytest.raises(ValueError, match=r"no backend runs score 'gatv2' on the window graph") as e:
        decide("auto", _problem("gatv2", ga.window_graph(20, 2)))
    assert [line.split(":")[0].strip() for line in str(e.value).splitlines()[1:]] == list(registry)


def _gatv2_with_edge_bias() -> ScoreFunction:
    return ga.make_score("gatv2", H, D) + ga.EdgeFeatureBias(2, H)


#: every reason each backend gives for gatv2 + an edge-feature bias on a small CPU graph.
EVERY_REASON = {
    "dense": [
        "score 'gatv2' is not s·<q_i, k_j> (it declares no sdpa_scale), which SDPA computes",
        "the edges fill",
    ],
    "flex": [
        "score 'gatv2' is not s·<q_i, k_j>",
        "carries the biases ['edge_features']: flex runs none",
        "FlexAttention needs CUDA",
        "head size D=7 < 16",
    ],
    "block": [
        "score 'gatv2' has a pairwise dense form (pairwise_dense)",
        "bias 'edge_features' reads per-edge inputs (kind 'per_edge')",
    ],
}


def test_explain_backend_lists_every_backend_with_every_reason() -> None:
    layer = ga.GraphAttention(H * D, H, score=_gatv2_with_edge_bias())
    text = layer.explain_backend(torch.zeros(60, H * D), ga.window_graph(60, 3))
    first, heading, *lines = text.splitlines()
    assert first == "edge: the reference formula, which runs every graph, score and option"
    assert heading == "every backend, in priority order:"
    rows = dict(line.strip().split(": ", 1) for line in lines)
    assert list(rows) == list(BACKENDS)
    assert rows["edge"] == "chosen"
    for name, reasons in EVERY_REASON.items():
        for reason in reasons:
            assert reason in rows[name], (name, reason, rows[name])


def test_refused_forced_backend_lists_every_backend_with_every_reason() -> None:
    layer = ga.GraphAttention(H * D, H, score=_gatv2_with_edge_bias(), backend="block")
    g = ga.window_graph(60, 3)
    with pytest.raises(ValueError, match="backend='block' cannot run score 'gatv2") as err:
        layer(torch.zeros(60, H * D), g, edge_attr=torch.zeros(g.num_edges, 2))
    first, heading, *lines = str(err.value).splitlines()
    for reason in EVERY_REASON["block"]:
        assert reason in first
    assert heading == "every backend, as forced:"
    rows = dict(line.strip().split(": ", 1) for line in lines)
    assert list(rows) == list(BACKENDS) and rows["edge"] == "can run it"
    for name, reasons in EVERY_REASON.items():
        for reason in reasons:
            if not reason.startswith("the edges fill"):  # a cost rule: auto's only
                assert reason in rows[name], (name, reason, rows[name])


def test_a_graph_already_seen_costs_no_new_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dispatch on a graph it has seen reads everything from the graph's cache: the O(E)
    layout is built once, however often auto decides."""
    import gatattn.backends.block as block

    calls = []
    real = block._layout
    monkeypatch.setattr(block, "_layout", lambda g, s: calls.append(s) or real(g, s))
    g = ga.window_graph(1000, 16)
    for _ in range(3):
        assert select_backend("auto", _problem("scaled_dot", g, n=0))[0] == "block"
    assert len(calls) == 1


# ------------------------------------------------------------ scores declare, backends decide
def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def test_no_score_or_bias_has_a_backend_attribute() -> None:
    import gatattn.hf.attention
    import gatattn.interop.mha  # noqa: F401  (every module that might define a score)

    classes = _subclasses(ScoreFunction) + _subclasses(ScoreBias)
    assert len(classes) >= 15
    for cls in [ScoreFunction, ScoreBias, *classes]:
        if cls.__module__.startswith("gatattn"):
            assert [a for a in dir(cls) if "backend" in a.lower()] == [], cls


def test_no_score_module_names_a_backend() -> None:
    """No string in gatattn/scores (nor in a score class elsewhere) is a backend's name."""
    names = set(BACKENDS)
    sources = [p.read_text() for p in sorted((ROOT / "gatattn" / "scores").glob("*.py"))]
    import gatattn.hf.attention
    import gatattn.interop.mha  # noqa: F401  (every module that might define a score)

    outside = [
        c
        for c in _subclasses(ScoreFunction) + _subclasses(ScoreBias)
        if c.__module__.startswith("gatattn.") and not c.__module__.startswith("gatattn.scores")
    ]
    # the Hugging Face adapter and the drop-ins use the core scores and biases only
    assert not [c for c in outside if c.__module__.startswith(("gatattn.hf", "gatattn.interop"))]
    sources += [inspect.getsource(c) for c in outside]
    assert len(sources) >= 8
    for text in sources:
        strings = {n.value for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Constant)}
        assert not strings & names, strings & names


def test_user_scores_run_where_their_declarations_allow() -> None:
    """A subclass that declares nothing, and a plain callable, run on the edge backend only;
    declaring an sdpa_scale (and a dense form) opens the fast backends."""

    class Plain(ScoreFunction):
        name = "plain"

        def forward(self, q_i, k_j, edges):  # type: ignore[no-untyped-def]
            return (q_i * k_j).sum(-1)

    class Declared(Plain):
        name = "declared"
        has_dense = True

        def sdpa_scale(self, head_dim: int) -> float | None:
            return 1.0

        def dense(self, q, k, ctx):  # type: ignore[no-untyped-def]
            return q @ k.transpose(-1, -2)

    def halved(q_i: torch.Tensor, k_j: torch.Tensor) -> torch.Tensor:
        return (q_i * k_j).sum(-1) / 2

    x = torch.randn(1000, H * D)
    complete, window = ga.complete_graph(1000), ga.window_graph(1000, 16)
    for score in (Plain(), halved):
        layer = ga.GraphAttention(H * D, H, score=score)
        assert layer.explain_backend(x, complete).startswith("edge: ")
        assert layer.explain_backend(x, window).startswith("edge: ")
    layer = ga.GraphAttention(H * D, H, score=Declared())
    assert layer.explain_backend(x, complete).startswith("dense: ")
    assert layer.explain_backend(x, window).startswith("block: ")
    with pytest.raises(ValueError, match="'plain' declares no dense form"):
        ga.GraphAttention(H * D, H, score=Plain(), backend="block")(x, window)


def test_cached_decisions_follow_the_score_and_the_registry(registry) -> None:
    """Decisions are cached in the graph per score object and registry: one graph, several
    scores and a registration in between each get their own answer."""
    g = ga.window_graph(1000, 16)
    small = ga.window_graph(50, 3)
    for _ in range(2):
        assert select_backend("auto", _problem("scaled_dot", g, n=0))[0] == "block"
        assert select_backend("auto", _problem("gatv2", g, n=0))[0] == "edge"
        assert select_backend("auto", _problem("scaled_dot", small, n=0))[0] == "edge"
    ga.register_backend(ToyBackend())
    assert select_backend("auto", _problem("scaled_dot", small, n=0))[0] == "toy"
    q = torch.empty(0, H, 16)  # another head size: flex's D rule is read again (still CPU)
    p = Problem(q, q, q, g, ga.make_score("scaled_dot", H, 16))
    name, why = select_backend("auto", p)
    assert name == "block" and "head size" not in why and "needs CUDA" in why
    with pytest.raises(TypeError):  # the cached decision cannot be changed by its reader
        decide("auto", p).reasons["block"] = ("changed",)  # type: ignore[index]
