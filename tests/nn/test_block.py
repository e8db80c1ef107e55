"""TransformerBlock equals nn.TransformerEncoderLayer, and its three users keep their names
(gatattn/nn/block.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gatattn as ga
from gatattn.nn.block import TransformerBlock
from gatattn.pretrained import BertLayer

L, H, D, FF = 5, 3, 7, 11
C = H * D


def _twin(enc: nn.TransformerEncoderLayer, activation: object) -> TransformerBlock:
    """The block with ``enc``'s weights and a GraphAttention copied from its self-attention."""
    block = TransformerBlock(
        ga.GraphAttention.from_torch(enc.self_attn),
        C,
        FF,
        dropout=0.1,
        activation=activation,  # type: ignore[arg-type]
        norm_first=enc.norm_first,
        layer_norm_eps=enc.norm1.eps,
        dtype=torch.float64,
    )
    for name in ("linear1", "linear2", "norm1", "norm2"):
        getattr(block, name).load_state_dict(getattr(enc, name).state_dict())
    return block.eval()


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@pytest.mark.parametrize(
    "activation",
    ["relu", "gelu", F.silu, nn.GELU(approximate="tanh")],
    ids=["relu", "gelu", "callable", "module"],
)
def test_block_equals_transformer_encoder_layer(norm_first: bool, activation: object) -> None:
    enc = nn.TransformerEncoderLayer(
        C, H, FF, dropout=0.1, activation=activation,  # type: ignore[arg-type]
        layer_norm_eps=1e-6, norm_first=norm_first, dtype=torch.float64,
    ).eval()  # fmt: skip
    block = _twin(enc, activation)
    x = torch.randn(L, C, dtype=torch.float64)
    w = torch.linspace(-1, 1, L * C, dtype=torch.float64).view(L, C)  # distinct output weights
    outs: list[Tensor] = []
    grads: list[Tensor] = []
    g = ga.complete_graph(L)
    for call in (enc, lambda x: block(x, g)):  # torch's unbatched [L, C]; [N, C] on a graph
        xx = x.clone().requires_grad_()
        out = call(xx)  # [L, C]
        (out * w).sum().backward()
        assert xx.grad is not None
        outs.append(out)
        grads.append(xx.grad)
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-10)
    for name in ("linear1", "linear2", "norm1", "norm2"):
        for p in ("weight", "bias"):
            got = getattr(getattr(block, name), p).grad
            ref = getattr(getattr(enc, name), p).grad
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-10, msg=f"{name}.{p}")


def test_names_and_order_are_torchs() -> None:
    enc = nn.TransformerEncoderLayer(C, H, FF, activation=nn.GELU())
    block = TransformerBlock(ga.GraphAttention(C, H), C, FF, activation=nn.GELU())
    assert [n for n, _ in block.named_children()] == [n for n, _ in enc.named_children()]
    rest = [k for k in enc.state_dict() if not k.startswith("self_attn.")]
    assert [k for k in block.state_dict() if not k.startswith("self_attn.")] == rest
    assert isinstance(block.activation, nn.GELU)  # a module activation is a child, as in torch
    assert TransformerBlock(ga.GraphAttention(C, H), C, FF, activation="gelu").activation is F.gelu


def test_dropout_applies_in_training_only() -> None:
    block = TransformerBlock(ga.GraphAttention(C, H), C, FF, dropout=0.5).double()
    x, g = torch.randn(L, C, dtype=torch.float64), ga.complete_graph(L)
    ev = block.eval()(x, g)
    assert (block.train()(x, g) - ev).abs().max() > 1e-3
    torch.testing.assert_close(block.eval()(x, g), ev, rtol=0, atol=0)


def test_reset_parameters_reinitialises_every_weight() -> None:
    block = TransformerBlock(ga.GraphAttention(C, H), C, FF)
    for p in block.parameters():
        nn.init.constant_(p, 3.0)
    block.reset_parameters()
    for name, p in block.named_parameters():
        if not name.startswith("norm"):  # LayerNorm resets to exactly 1 and 0
            assert not torch.all(p == 3.0), name
    assert torch.equal(block.norm1.weight, torch.ones(C))


@pytest.mark.parametrize(
    ("activation", "error", "match"),
    [
        ("swish", ValueError, r"activation must be one of \['gelu', 'relu'\] .* got 'swish'"),
        ("", ValueError, r"got ''"),
        (3, TypeError, r"activation must be a string or a callable, got 3"),
    ],
)
def test_bad_activation(activation: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        TransformerBlock(ga.GraphAttention(C, H), C, FF, activation=activation)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the three users of the block
#: BertLayer's own names, which the MiniLM checkpoint is renamed to; attn.* comes first.
_BERT_REST = [
    f"{m}.{w}" for m in ("attn_norm", "ffn_in", "ffn_out", "ffn_norm") for w in ("weight", "bias")
]
_TO_BLOCK = {
    "attn.": "self_attn.",
    "attn_norm.": "norm1.",
    "ffn_in.": "linear1.",
    "ffn_out.": "linear2.",
    "ffn_norm.": "norm2.",
}


def test_users_are_the_block_with_their_own_names() -> None:
    enc = nn.TransformerEncoderLayer(C, H, FF)
    drop_in = ga.GraphTransformerEncoderLayer(C, H, FF)
    pyg = ga.GraphTransformerBlock(C, H, ffn_dim=FF)
    bert = BertLayer(C, H, FF, 1e-12, "auto")
    for user in (drop_in, pyg, bert):
        assert isinstance(user, TransformerBlock)
    rest = [k for k in enc.state_dict() if not k.startswith("self_attn.")]
    assert [k for k in drop_in.state_dict() if not k.startswith("self_attn.")] == rest
    assert [k for k in pyg.state_dict() if not k.startswith("self_attn.")] == rest
    keys = list(bert.state_dict())
    assert keys[len(keys) - len(_BERT_REST) :] == _BERT_REST
    assert all(k.startswith("attn.") for k in keys[: len(keys) - len(_BERT_REST)])
    assert bert.attn is bert.self_attn and bert.ffn_norm is bert.norm2  # the old attributes
    assert bert.norm1.eps == 1e-12 and bert.activation is F.gelu and not bert.norm_first


def _bert_output(layer: BertLayer, x: Tensor) -> Tensor:
    out, att = layer(x, ga.complete_graph(L), False)
    assert att is None
    return out


def test_bert_layer_loads_its_names_and_the_blocks() -> None:
    torch.manual_seed(1)
    src = BertLayer(C, H, FF, 1e-12, "auto").eval()
    x = torch.randn(L, C)
    ref = _bert_output(src, x)
    own = src.state_dict()  # attn.*, attn_norm.*, ...
    block_names = {_TO_BLOCK[k.split(".")[0] + "."] + k.split(".", 1)[1]: v for k, v in own.items()}
    for sd in (own, block_names):
        torch.manual_seed(2)
        dst = BertLayer(C, H, FF, 1e-12, "auto").eval()
        dst.load_state_dict(sd)
        torch.testing.assert_close(_bert_output(dst, x), ref, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        BertLayer(C, H, FF, 1e-12, "auto").load_state_dict({**own, "ffn_in.extra": torch.zeros(1)})


def test_bert_layer_returns_the_attention_it_used() -> None:
    layer = BertLayer(C, H, FF, 1e-12, "auto").eval()
    x, g = torch.randn(L, C), ga.complete_graph(L)
    out, att = layer(x, g, True)
    assert isinstance(att, ga.Attention) and att.weights.shape == (L * L, H)
    torch.testing.assert_close(out, layer(x, g, False)[0], rtol=0, atol=0)
    with torch.no_grad():  # post-norm by hand from the returned attention output
        h = layer.norm1(x + att.out)
        ref = layer.norm2(h + layer.linear2(F.gelu(layer.linear1(h))))
    torch.testing.assert_close(out.detach(), ref, rtol=0, atol=0)
