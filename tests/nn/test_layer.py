"""GraphAttention construction, parameters and bad input (gatattn/layer.py)."""

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
    assert names == [f"{p}_proj.{w}" for p in "qkv" for w in ("weight", "bias")] + [
        "out_proj.weight",
        "out_proj.bias",
    ]
    assert len(list(ga.GraphAttention(C, H, bias=False).parameters())) == 4
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
