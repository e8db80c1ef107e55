"""GraphAttention and GraphTransformerBlock inside PyTorch Geometric (docs/pyg.md).

Data/Batch input, TransformerConv-style edge modulation (checked against TransformerConv itself),
the root/skip connection, torch_geometric.nn.Sequential, state_dict round trips, and
torch.compile with zero graph breaks on the edge path.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import Sequential, TransformerConv, global_mean_pool

import gatattn as ga
from gatattn.pyg import GraphTransformerBlock

N, H, D, F_E = 5, 3, 7, 4  # pairwise distinct
C = H * D


def _random_graph(n: int, e: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (2, e), generator=gen)  # [2, E], may hold self-loops/duplicates


def _graphs(dtype: torch.dtype = torch.float64) -> list[Data]:
    out = []
    for i, (n, e) in enumerate(((5, 9), (7, 13), (4, 6))):
        ei = _random_graph(n, e, seed=i)
        out.append(
            Data(
                x=torch.randn(n, C, dtype=dtype),
                edge_index=ei,
                edge_attr=torch.randn(e, F_E, dtype=dtype),
            )
        )
    return out


# ---------------------------------------------------------------- Data / Batch
@pytest.mark.parametrize("score", ["scaled_dot", "gatv2+alibi", "additive+relative_position"])
def test_batch_equals_each_graph_alone(score: str) -> None:
    layer = ga.GraphAttention(C, H, score=score, edge_dim=F_E, root_weight=True).double()
    graphs = _graphs()
    batch = Batch.from_data_list(graphs)
    out = layer(batch.x, batch.edge_index, edge_attr=batch.edge_attr, batch=batch.batch)  # [ΣN, C]
    alone = torch.cat([layer(g.x, g.edge_index, edge_attr=g.edge_attr) for g in graphs])
    torch.testing.assert_close(out, alone, rtol=0, atol=1e-10)


def test_batch_vector_restarts_positions() -> None:
    # `batch` sets per-graph lengths, so token positions restart in every graph. Relative
    # biases (ALiBi, T5) are shift-invariant and the edges keep graphs apart, so the output
    # is the same with or without it: `batch` is optional.
    layer = ga.GraphAttention(C, H, score="scaled_dot+alibi").double()
    graphs = _graphs()
    b = Batch.from_data_list(graphs)
    res = layer(b.x, b.edge_index, batch=b.batch, return_attention=True)
    assert res.graph is not None and res.graph.lengths == (5, 7, 4)
    expected = torch.cat([torch.arange(g.num_nodes) for g in graphs])
    assert torch.equal(res.graph.positions(), expected)
    torch.testing.assert_close(layer(b.x, b.edge_index), res.out, rtol=0, atol=1e-12)


def test_batch_errors() -> None:
    layer = ga.GraphAttention(C, H)
    x, ei = torch.randn(N, C), _random_graph(N, 8, 0)
    with pytest.raises(ValueError, match=r"batch must be a LongTensor \[N=5\], got \[4\]"):
        layer(x, ei, batch=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="batch must be sorted"):
        layer(x, ei, batch=torch.tensor([0, 1, 0, 1, 1]))


# ---------------------------------------------------------------- edge modulation, root weight
def _transformer_conv_twin(dtype: torch.dtype) -> tuple[ga.GraphAttention, TransformerConv]:
    conv = TransformerConv(C, D, heads=H, edge_dim=F_E, root_weight=True).to(dtype)
    layer = ga.GraphAttention(C, H, edge_dim=F_E, root_weight=True).to(dtype)
    with torch.no_grad():  # copy TransformerConv's weights; W_o = I (TransformerConv has none)
        for mine, theirs in (
            (layer.q_proj, conv.lin_query),
            (layer.k_proj, conv.lin_key),
            (layer.v_proj, conv.lin_value),
            (layer.skip_proj, conv.lin_skip),
        ):
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)
        layer.edge_proj.weight.copy_(conv.lin_edge.weight)
        layer.out_proj.weight.copy_(torch.eye(C, dtype=dtype))
        layer.out_proj.bias.zero_()
    return layer, conv


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_edge_dim_equals_transformer_conv(dtype: torch.dtype, within_torch_error) -> None:
    """fp64: equal to PyG's TransformerConv to 1e-10. fp32: both against the fp64 golden
    (TransformerConv in fp64), within a multiple of PyG's own error."""

    def run(layer, conv, dtype: torch.dtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:  # type: ignore[no-untyped-def]
        gen = torch.Generator().manual_seed(5)
        ei = torch.cat([_random_graph(N, 11, 3), torch.arange(N).repeat(2, 1)], 1)  # self-loops
        x = torch.randn(N, C, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
        attr = torch.randn(ei.size(1), F_E, generator=gen, dtype=torch.float64).to(dtype)
        attr.requires_grad_()
        res = layer(x, ei, edge_attr=attr, return_attention=True)
        ref, (ref_ei, ref_w) = conv(x, ei, edge_attr=attr, return_attention_weights=True)
        assert torch.equal(ref_ei, ei)  # TransformerConv keeps the edge order: weights align
        g_mine = torch.autograd.grad(res.out.square().sum(), (x, attr))
        g_ref = torch.autograd.grad(ref.square().sum(), (x, attr))
        return [res.out, res.weights, *g_mine], [ref, ref_w, *g_ref]

    layer, conv = _transformer_conv_twin(dtype)
    ours, theirs = run(layer, conv, dtype)
    if dtype == torch.float64:
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
        return
    _, gold = run(copy.deepcopy(layer).double(), copy.deepcopy(conv).double(), torch.float64)
    for i, (a, b, c) in enumerate(zip(ours, theirs, gold, strict=True)):
        within_torch_error(a, b, c, what=f"result {i}")


def test_edge_dim_gradcheck_gatv2() -> None:
    layer = ga.GraphAttention(6, 2, score="gatv2", edge_dim=3).double()
    ei = _random_graph(4, 9, 1)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    attr = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: layer(a, ei, edge_attr=b), (x, attr))


def test_options_hold_only_their_parameters_and_all_get_gradients() -> None:
    plain = ga.GraphAttention(C, H)
    assert not any(n.startswith(("edge_proj", "skip_proj")) for n, _ in plain.named_parameters())
    layer = ga.GraphAttention(C, H, score="additive", edge_dim=F_E, root_weight=True)
    ei = _random_graph(N, 12, 2)
    layer(torch.randn(N, C), ei, edge_attr=torch.randn(12, F_E)).sum().backward()
    names = {n for n, p in layer.named_parameters() if p.grad is None}
    assert names == set()
    assert {"edge_proj.weight", "skip_proj.weight", "skip_proj.bias"} <= set(layer.state_dict())


def test_edge_dim_errors() -> None:
    with pytest.raises(ValueError, match="edge_dim must be a positive int or None, got 0"):
        ga.GraphAttention(C, H, edge_dim=0)
    layer = ga.GraphAttention(C, H, edge_dim=F_E)
    x, ei = torch.randn(N, C), _random_graph(N, 8, 0)
    with pytest.raises(ValueError, match=r"edge_dim=4 is set, so forward needs edge_attr \[E, 4\]"):
        layer(x, ei)
    with pytest.raises(ValueError, match=r"edge_attr has shape \[8, 2\] but edge_dim=4"):
        layer(x, ei, edge_attr=torch.randn(8, 2))


# ---------------------------------------------------------------- GraphTransformerBlock
@pytest.mark.parametrize(("norm_first", "activation"), [(True, "gelu"), (False, "relu")])
def test_block_equals_transformer_encoder_layer(norm_first: bool, activation: str) -> None:
    L, FF = 6, 11
    enc = nn.TransformerEncoderLayer(
        C, H, FF, dropout=0.0, activation=activation, norm_first=norm_first, batch_first=True
    ).double()
    block = GraphTransformerBlock(C, H, ffn_dim=FF, activation=activation, norm_first=norm_first)
    block = block.double()
    block.self_attn = ga.GraphAttention.from_torch(enc.self_attn)
    for name in ("linear1", "linear2", "norm1", "norm2"):
        getattr(block, name).load_state_dict(getattr(enc, name).state_dict())
    x = torch.randn(L, C, dtype=torch.float64, requires_grad=True)
    out = block(x, ga.complete_graph(L))
    ref = enc(x.unsqueeze(0)).squeeze(0)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    (g_out,) = torch.autograd.grad(out.sin().sum(), x)
    (g_ref,) = torch.autograd.grad(ref.sin().sum(), x)
    torch.testing.assert_close(g_out, g_ref, rtol=0, atol=1e-10)


def test_block_errors() -> None:
    with pytest.raises(ValueError, match="activation must be one of .* got 'tanh'"):
        GraphTransformerBlock(C, H, activation="tanh")
    with pytest.raises(ValueError, match="ffn_dim must be a positive int, got 0"):
        GraphTransformerBlock(C, H, ffn_dim=0)


# ---------------------------------------------------------------- Sequential, state_dict
def _model(seed: int) -> Sequential:
    torch.manual_seed(seed)
    return Sequential(
        "x, edge_index, edge_attr, batch",
        [
            (GraphTransformerBlock(C, H, edge_dim=F_E), "x, edge_index, edge_attr, batch -> x"),
            (ga.GraphAttention(C, H, score="gatv2", root_weight=True), "x, edge_index -> x"),
            (global_mean_pool, "x, batch -> x"),
            (nn.Linear(C, 2), "x -> x"),
        ],
    )


def test_sequential_and_state_dict_round_trip(tmp_path) -> None:
    b = Batch.from_data_list(_graphs(torch.float32))
    model = _model(0).eval()
    out = model(b.x, b.edge_index, b.edge_attr, b.batch)  # [B, 2]
    assert out.shape == (3, 2)
    # The same modules called by hand give the same result.
    blk, att, lin = model[0], model[1], model[3]
    h = att(blk(b.x, b.edge_index, b.edge_attr, b.batch), b.edge_index)
    torch.testing.assert_close(out, lin(global_mean_pool(h, b.batch)), rtol=0, atol=0)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    other = _model(1).eval()
    assert (other(b.x, b.edge_index, b.edge_attr, b.batch) - out).abs().max() > 1e-4
    other.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    torch.testing.assert_close(other(b.x, b.edge_index, b.edge_attr, b.batch), out, rtol=0, atol=0)


# ---------------------------------------------------------------- torch.compile
# Dynamo itself (not gatattn) probes tensors and autograd.Function classes while tracing and so
# triggers these two torch warnings; under `filterwarnings = error` they would abort tracing.
def _dynamo_probes(fn):
    for text in (
        "ignore:The .grad attribute of a Tensor that is not a leaf",
        "ignore:.*autograd.function.Function.* should not be instantiated",
        "ignore:`torch.jit.script_method` is deprecated",
    ):
        fn = pytest.mark.filterwarnings(text)(fn)
    return fn


@_dynamo_probes
@pytest.mark.parametrize(
    "make",
    [
        lambda: ga.GraphAttention(C, H),
        lambda: ga.GraphAttention(C, H, score="additive", root_weight=True),
        lambda: ga.GraphAttention(C, H, score="gatv2", edge_dim=F_E),
        lambda: GraphTransformerBlock(C, H, edge_dim=F_E),
    ],
    ids=["scaled_dot", "additive+root", "gatv2+edge_dim", "block"],
)
def test_compile_has_no_graph_breaks_on_edge_path(make) -> None:
    torch._dynamo.reset()
    module = make().eval()
    ei = _random_graph(N, 12, 4)  # irregular graph: the edge path
    x, attr = torch.randn(N, C), torch.randn(12, F_E)
    explanation = torch._dynamo.explain(module)(x, ei, edge_attr=attr)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@_dynamo_probes
def test_compiled_equals_eager() -> None:
    torch._dynamo.reset()
    block = GraphTransformerBlock(C, H, score="gatv2", edge_dim=F_E).eval()
    ei = _random_graph(N, 12, 5)
    x, attr = torch.randn(N, C), torch.randn(12, F_E)
    # aot_eager traces through dynamo and AOTAutograd as inductor does, without the C++ codegen
    # (which takes ~20 s on two cores); fullgraph=True fails on any graph break.
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    with torch.no_grad():  # inference graph only: keeps the test short
        torch.testing.assert_close(compiled(x, ei, attr), block(x, ei, attr), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("build", [ga.complete_graph, ga.causal_graph])
def test_block_batch_never_changes_the_neighbourhoods(build) -> None:
    """Issue 11: GraphTransformerBlock with ``batch=`` on a tagged graph was off by 0.72."""
    block = GraphTransformerBlock(C, H).double().eval()
    edge = copy.deepcopy(block)
    edge.self_attn.backend = "edge"
    x = torch.randn(5, C, dtype=torch.float64)
    batch = torch.tensor([0, 0, 1, 1, 1])
    torch.testing.assert_close(
        block(x, build(5), batch=batch), edge(x, build(5)), atol=1e-10, rtol=0
    )
