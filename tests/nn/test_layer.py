"""GraphAttention construction, parameters and bad input (gatattn/nn/attention.py,
gatattn/nn/inputs.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.nn import MessagePassing

import gatattn as ga

N, H, D = 5, 3, 7
C = H * D


def test_is_a_message_passing_layer_with_mha_parameters() -> None:
    layer = ga.GraphAttention(C, H)
    assert isinstance(layer, MessagePassing)
    names = [n for n, _ in layer.named_parameters()]
    # nn.MultiheadAttention's layout, names and order: state_dicts are interchangeable
    assert names == [n for n, _ in nn.MultiheadAttention(C, H).named_parameters()]
    assert names == ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    assert len(list(ga.GraphAttention(C, H, bias=False).parameters())) == 2
    split = ga.GraphAttention(C, H, kdim=4, vdim=9)
    assert [n for n, _ in split.named_parameters()] == [
        n for n, _ in nn.MultiheadAttention(C, H, kdim=4, vdim=9).named_parameters()
    ]
    # a layer holds only the parameters its score uses
    assert {n for n, _ in ga.GraphAttention(C, H, score="gatv2").named_parameters()} >= {
        "score.att"
    }
    assert "GraphAttention(embed_dim=21, num_heads=3, score='scaled_dot'" in repr(layer)


@pytest.mark.parametrize("kdim_vdim", [(None, None), (4, 9)])
def test_initialised_exactly_as_multihead_attention(kdim_vdim: tuple) -> None:
    kdim, vdim = kdim_vdim
    torch.manual_seed(11)
    mha = nn.MultiheadAttention(C, H, kdim=kdim, vdim=vdim)
    torch.manual_seed(11)
    twin = ga.GraphAttention(C, H, kdim=kdim, vdim=vdim).to_torch()
    for (na, a), (nb, b) in zip(mha.named_parameters(), twin.named_parameters()):
        assert na == nb and torch.equal(a, b), na


def test_raw_edge_index_equals_token_graph() -> None:
    layer = ga.GraphAttention(C, H)
    x = torch.randn(N, C)
    g = ga.complete_graph(N)
    torch.testing.assert_close(layer(x, g.edge_index), layer(x, g))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"embed_dim": 10, "num_heads": 3}, "embed_dim=10 is not divisible by num_heads=3"),
        ({"embed_dim": 0, "num_heads": 1}, "embed_dim must be a positive int, got 0"),
        ({"embed_dim": 6, "num_heads": -2}, "num_heads must be a positive int, got -2"),
        ({"embed_dim": 6, "num_heads": 2, "dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        (
            {"embed_dim": 6, "num_heads": 2, "backend": "cuda"},
            "unknown backend 'cuda'; choose one of",
        ),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ga.GraphAttention(**kwargs)


def test_bad_forward_inputs_are_named() -> None:
    layer = ga.GraphAttention(C, H)
    g = ga.complete_graph(N)
    with pytest.raises(
        ValueError, match=r"x must be node features \[N, C\] \(rank 2\), got shape \[2, 5, 21\]"
    ):
        layer(torch.randn(2, N, C), g)
    with pytest.raises(ValueError, match="x has 20 channels but embed_dim=21"):
        layer(torch.randn(N, 20), g)
    with pytest.raises(TypeError, match="x must be a Tensor, got list"):
        layer([[0.0]], g)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="edge_index has source index 5 but there are only 5"):
        layer(torch.randn(N, C), torch.tensor([[5], [0]]))
    with pytest.raises(ValueError, match=r"negative node index \(-1\)"):
        layer(torch.randn(N, C), torch.tensor([[0], [-1]]))
    with pytest.raises(TypeError, match="dtype torch.long"):
        layer(torch.randn(N, C), torch.tensor([[0.0], [1.0]]))
    with pytest.raises(
        ValueError, match=r"graph has \(num_src, num_dst\)=\(5, 5\) but the inputs have 4"
    ):
        layer(torch.randn(4, C), g)
    with pytest.raises(ValueError, match="edge_attr has 3 rows but the graph has 25 edges"):
        layer(torch.randn(N, C), g, edge_attr=torch.randn(3, 2))


def test_cross_attention_source_errors() -> None:
    layer = ga.GraphAttention(C, H, kdim=4, vdim=9)
    q = torch.randn(N, C)
    g = ga.from_mask(torch.ones(N, 6, dtype=torch.bool))
    with pytest.raises(
        ValueError, match="kdim=4, vdim=9 differ from embed_dim=21: pass the key/value"
    ):
        layer(q, g)
    with pytest.raises(
        ValueError, match="kdim=4 != vdim=9: pass x_src=\\(key_features, value_features\\)"
    ):
        layer(q, g, x_src=torch.randn(6, 4))
    with pytest.raises(ValueError, match="x_src keys have 6 rows but values have 5"):
        layer(q, g, x_src=(torch.randn(6, 4), torch.randn(5, 9)))
    with pytest.raises(ValueError, match="x_src pair must be \\(keys, values\\), got 3 items"):
        layer(q, g, x_src=(torch.randn(6, 4),) * 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key features has 5 channels but kdim=4"):
        layer(q, g, x_src=(torch.randn(6, 5), torch.randn(6, 9)))
    assert layer(q, g, x_src=(torch.randn(6, 4), torch.randn(6, 9))).shape == (N, C)


def test_state_dict_round_trip() -> None:
    a = ga.GraphAttention(C, H, score="additive+alibi")
    b = ga.GraphAttention(C, H, score="additive+alibi")
    b.load_state_dict(a.state_dict())
    x = torch.randn(N, C)
    torch.testing.assert_close(a(x, ga.complete_graph(N)), b(x, ga.complete_graph(N)))


@pytest.mark.parametrize("kdim_vdim", [(None, None), (4, 9)])
def test_state_dicts_interchange_with_multihead_attention(kdim_vdim: tuple) -> None:
    kdim, vdim = kdim_vdim
    mha = nn.MultiheadAttention(C, H, kdim=kdim, vdim=vdim)
    layer = ga.GraphAttention(C, H, kdim=kdim, vdim=vdim)
    layer.load_state_dict(mha.state_dict())
    for (na, a), (nb, b) in zip(mha.named_parameters(), layer.named_parameters()):
        assert na == nb and torch.equal(a, b), na
    back = nn.MultiheadAttention(C, H, kdim=kdim, vdim=vdim)
    back.load_state_dict(layer.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(back.parameters(), mha.parameters()))


def test_projection_views_read_and_write_the_stored_weights() -> None:
    layer = ga.GraphAttention(C, H)
    x = torch.randn(N, C, dtype=layer.in_proj_weight.dtype)
    w, b = layer.in_proj_weight, layer.in_proj_bias
    assert b is not None
    for i, proj in enumerate((layer.q_proj, layer.k_proj, layer.v_proj)):
        assert torch.equal(proj.weight, w[i * C : (i + 1) * C])
        torch.testing.assert_close(proj(x), x @ w[i * C : (i + 1) * C].T + b[i * C : (i + 1) * C])
    with torch.no_grad():
        layer.k_proj.weight.fill_(0.5)  # a view: writes into in_proj_weight
    assert bool((layer.in_proj_weight[C : 2 * C] == 0.5).all())
    q, k, v = layer.project(x, x, x)
    assert q.shape == k.shape == v.shape == (N, H, D)
    torch.testing.assert_close(k.reshape(N, C), layer.k_proj(x))


def test_loads_state_dicts_saved_with_split_projections() -> None:
    """gatattn 0.1.0 saved q_proj.weight, k_proj.weight, v_proj.weight (+ biases)."""
    layer = ga.GraphAttention(C, H)
    old = {
        "q_proj.weight": torch.randn(C, C), "k_proj.weight": torch.randn(C, C),
        "v_proj.weight": torch.randn(C, C), "q_proj.bias": torch.randn(C),
        "k_proj.bias": torch.randn(C), "v_proj.bias": torch.randn(C),
        "out_proj.weight": torch.randn(C, C), "out_proj.bias": torch.randn(C),
    }  # fmt: skip
    layer.load_state_dict(old)
    assert torch.equal(layer.q_proj.weight, old["q_proj.weight"])
    assert torch.equal(layer.v_proj.bias, old["v_proj.bias"])
    split = ga.GraphAttention(C, H, kdim=4, vdim=9)
    split.load_state_dict(
        {"q_proj.weight": torch.randn(C, C), "k_proj.weight": torch.randn(C, 4),
         "v_proj.weight": torch.randn(C, 9), "q_proj.bias": torch.randn(C),
         "k_proj.bias": torch.randn(C), "v_proj.bias": torch.randn(C),
         "out_proj.weight": torch.randn(C, C), "out_proj.bias": torch.randn(C)}
    )  # fmt: skip
    assert split.k_proj.weight.shape == (C, 4)


# ---------------------------------------------------------------- issue 11: clear errors, no crashes
def test_hostile_forward_inputs_get_named_errors() -> None:
    """Each of these used to crash inside torch (dtype mismatch in the projection, AttributeError
    on a list, NotImplementedError from bincount) instead of naming the argument."""
    layer = ga.GraphAttention(C, H)
    g, x = ga.complete_graph(N), torch.randn(N, C)
    with pytest.raises(
        TypeError, match=r"x has dtype torch.float64 but the layer's parameters are torch.float32"
    ):
        layer(x.double(), g)
    with pytest.raises(TypeError, match=r"x_src has dtype torch.float64 but the layer's"):
        layer(x, g, x_src=x.double())
    with pytest.raises(
        TypeError,
        match=r"x_src must be a Tensor \[N_s, kdim\] or a pair of Tensors .* got a list of 5 items \(list, list, list, ...\)",
    ):
        layer(x, g, x_src=x.tolist())  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"x_src must be a Tensor .* got a list of 2 items \(list, Tensor\)"
    ):
        layer(x, g, x_src=[x.tolist(), x])  # type: ignore[list-item]
    with pytest.raises(
        TypeError, match=r"x_src must be a Tensor \[N_s, kdim\] or a pair of Tensors .* got str"
    ):
        layer(x, g, x_src="keys")  # type: ignore[arg-type]
    with pytest.raises(
        TypeError,
        match=r"edge_attr must be a Tensor \[E, ...\] or a mapping of named Tensors, got list",
    ):
        ga.GraphAttention(C, H, edge_dim=1)(x, g, edge_attr=[1.0] * 25)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"batch must be a LongTensor \[N\] of graph ids, got dtype torch.float32"
    ):
        layer(x, g, batch=torch.zeros(N))
    with pytest.raises(TypeError, match=r"batch must be a LongTensor .* got dtype torch.bool"):
        layer(x, g, batch=torch.zeros(N, dtype=torch.bool))
    with pytest.raises(  # used to crash inside torch.bincount
        ValueError, match=r"GraphAttention: batch holds a negative graph id \(-2, first at node 3\)"
    ):
        layer(x, g, batch=torch.tensor([0, 0, 0, -2, 1]))


def test_autocast_casts_half_and_fp32_inputs_but_not_fp64() -> None:
    """Under autocast the projection casts fp32/fp16 x and the weights alike: no dtype error.
    Autocast leaves fp64 alone, so fp64 x still gets the named error."""
    layer, g = ga.GraphAttention(C, H), ga.complete_graph(N)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.randn(N, C, dtype=torch.float16), g)
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
        with pytest.raises(TypeError, match="x has dtype torch.float64 but the layer's"):
            layer(torch.randn(N, C, dtype=torch.float64), g)


@pytest.mark.parametrize(
    "graph",
    [
        ga.complete_graph(N, device="meta"),  # tagged: the dense backend never read its edges
        ga.window_graph(N, 1).to("meta"),
        torch.zeros(2, 4, dtype=torch.long, device="meta"),  # a raw edge_index
    ],
    ids=["complete", "window", "edge_index"],
)
def test_graph_on_another_device_is_named(graph: ga.TokenGraph | torch.Tensor) -> None:
    """A meta complete graph with CPU features used to give an answer (the tagged dense plan
    reads no edges); a meta edge_index failed deep inside. Both devices are named now."""
    from gatattn.reference import dense_reference

    layer, x = ga.GraphAttention(C, H), torch.randn(N, C)
    match = r"GraphAttention: the graph is on meta but the features are on cpu; .*graph.to\('cpu'\)"
    with pytest.raises(ValueError, match=match):
        layer(x, graph)
    with pytest.raises(ValueError, match=match):
        layer.explain_backend(x, graph)
    with pytest.raises(ValueError, match="dense_reference: the graph is on meta but the features"):
        dense_reference(layer, x, graph)


def test_edge_inputs_on_another_device_are_named() -> None:
    g, dist = ga.shortest_path_distances(torch.tensor([[0, 1], [1, 2]]), 3)
    layer = ga.GraphAttention(C, H, score=ga.make_score("scaled_dot", H, D) + ga.SpatialBias(H))
    x = torch.randn(3, C)
    with pytest.raises(ValueError, match="edge_attr is on meta but the features are on cpu"):
        layer(x, g, edge_attr=dist.to("meta"))
    with pytest.raises(ValueError, match=r"edge_attr\['distance'\] is on meta but the features"):
        layer(x, g, edge_attr={"distance": dist.to("meta")})
