"""``torch.compile(fullgraph=True)`` of the drop-ins and of GraphAttention: no graph breaks.

``torch._dynamo.explain`` counts the breaks (0 expected) for the drop-ins with and without masks;
compiled == eager is checked with ``dynamic=True`` (forward and gradients, fp32: bounded by a
small multiple of eager's own error against fp64). Kept few and small: compilation is slow.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch._dynamo
from torch import Tensor, nn

import gatattn as ga

pytestmark = [
    pytest.mark.slow,
    # dynamo itself instantiates the edge kernels' autograd.Functions while tracing them
    # (gatattn calls Function.apply); torch 2.13 warns about that from inside torch.
    pytest.mark.filterwarnings(
        "ignore:<class 'torch.autograd.function.Function'> should not be instantiated"
        ":DeprecationWarning"
    ),
]
B, L, C, H = 2, 6, 12, 3


def breaks(fn: Callable[..., object], *args: object, **kwargs: object) -> int:
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(*args, **kwargs)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    return int(explanation.graph_break_count)


def mask_kinds() -> dict[str, dict[str, object]]:
    g = torch.Generator().manual_seed(0)
    pad = torch.tensor([[False] * L, [False] * 4 + [True] * 2])  # [B, L]
    return {
        "none": {"need_weights": False},
        "key padding (bool)": {"key_padding_mask": pad, "need_weights": False},
        "float mask + weights": {"attn_mask": torch.randn(L, L, generator=g)},
        "per-head bool + padding": {
            "attn_mask": torch.rand(B * H, L, L, generator=g) < 0.3,
            "key_padding_mask": pad,
            "need_weights": False,
        },
        "causal hint": {
            "attn_mask": torch.ones(L, L, dtype=torch.bool).triu(1),
            "is_causal": True,
            "need_weights": False,
        },
    }


@pytest.mark.parametrize("kind", list(mask_kinds()))
def test_mha_has_no_graph_breaks(kind: str) -> None:
    mha = ga.GraphMultiheadAttention(C, H, batch_first=True, add_bias_kv=kind == "none")
    x = torch.randn(B, L, C)
    assert breaks(mha, x, x, x, **mask_kinds()[kind]) == 0


def test_encoder_layer_has_no_graph_breaks() -> None:
    layer = ga.GraphTransformerEncoderLayer(C, H, 17, batch_first=True)
    x = torch.randn(B, L, C)
    pad = torch.tensor([[False] * L, [False] * 3 + [True] * 3])
    assert breaks(layer, x) == 0
    assert breaks(layer, x, src_key_padding_mask=pad) == 0
    assert breaks(layer, x, src_mask=torch.randn(L, L)) == 0


def _compare(
    model: nn.Module,
    inputs: list[tuple[Tensor, dict[str, object]]],
    dynamic: bool = True,
    backend: str = "inductor",
) -> None:
    """Compiled (fullgraph) against eager in fp32, both against eager fp64 (outputs and input
    gradients). ``backend="aot_eager"`` checks dynamo and AOT autograd without inductor's
    (slow) code generation."""
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=dynamic, backend=backend)
    for x, kw in inputs:
        results = []
        for fn, dtype in (
            (model, torch.float64),
            (model, torch.float32),
            (compiled, torch.float32),
        ):
            model.to(dtype)
            xx = x.detach().to(dtype).clone().requires_grad_()
            kw_t = {k: v.to(dtype) if isinstance(v, Tensor) and v.is_floating_point() else v
                    for k, v in kw.items()}  # fmt: skip
            out = fn(xx, **kw_t)
            out = out[0] if isinstance(out, tuple) else out
            out.square().sum().backward()
            results.append((out.detach().double(), xx.grad.double()))  # type: ignore[union-attr]
        (o64, g64), (o_eager, g_eager), (o_comp, g_comp) = results
        for ref, eager, comp in ((o64, o_eager, o_comp), (g64, g_eager, g_comp)):
            err_eager = (eager - ref).abs().max().item()
            assert (comp - ref).abs().max().item() <= 10 * err_eager + 1e-6


def _encoder_inputs() -> list[tuple[Tensor, dict[str, object]]]:
    x1, x2 = torch.randn(B, L, C), torch.randn(B + 1, L + 3, C)
    pad1 = torch.tensor([[False] * L, [False] * 4 + [True] * 2])
    pad2 = torch.arange(L + 3)[None, :] >= torch.tensor([L + 3, 5, 2])[:, None]
    return [(x1, {"src_key_padding_mask": pad1}), (x2, {"src_key_padding_mask": pad2})]


def test_encoder_layer_compiled_equals_eager() -> None:
    torch.manual_seed(1)
    layer = ga.GraphTransformerEncoderLayer(C, H, 17, dropout=0.0, batch_first=True)
    _compare(layer, _encoder_inputs()[1:], dynamic=False)


def test_encoder_layer_compiled_equals_eager_dynamic() -> None:
    torch.manual_seed(1)
    layer = ga.GraphTransformerEncoderLayer(C, H, 17, dropout=0.0, batch_first=True)
    _compare(layer, _encoder_inputs(), dynamic=True)


def test_mha_with_float_mask_and_weights_compiled_equals_eager() -> None:
    torch.manual_seed(2)
    mha = ga.GraphMultiheadAttention(C, H, batch_first=True, add_zero_attn=True)
    x = torch.randn(B, L, C)

    class Self(nn.Module):  # self-attention with a float mask, returned weights in the loss
        def __init__(self) -> None:
            super().__init__()
            self.mha = mha

        def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
            out, w = self.mha(x, x, x, attn_mask=attn_mask)
            assert w is not None
            return out + w.sum(-1, keepdim=True)

    _compare(Self(), [(x, {"attn_mask": torch.randn(L, L)})], backend="aot_eager")


def test_graph_attention_with_a_graph_built_outside() -> None:
    torch.manual_seed(3)
    layer = ga.GraphAttention(C, H)
    x = torch.randn(2 * L, C)
    for g in (ga.complete_graph(lengths=[L, L]), ga.window_graph(2 * L, 2)):
        assert breaks(layer, x, g) == 0
    # unequal lengths: the dense backend pads with index tensors of data-independent size
    assert breaks(layer, torch.randn(8 + 12, C), ga.complete_graph(lengths=[8, 12])) == 0

    class OnGraph(nn.Module):
        def __init__(self, g: ga.TokenGraph) -> None:
            super().__init__()
            self.layer, self.g = layer, g

        def forward(self, x: Tensor) -> Tensor:
            return self.layer(x, self.g)

    _compare(OnGraph(ga.window_graph(2 * L, 2)), [(x, {})], backend="aot_eager")


def test_padded_transformer_encoder_has_no_graph_breaks() -> None:
    # PyTorch's test_fast_path_check_with_mask_does_not_break_in_compile: a 2-layer encoder
    # with a padding mask, for the drop-in layers and for ga.convert of torch's encoder.
    x = torch.randn(B, L, C)
    pad = torch.tensor([[False] * L, [False] * 4 + [True] * 2])
    layer = ga.GraphTransformerEncoderLayer(C, H, 17, batch_first=True)
    ours = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    torch_layer = nn.TransformerEncoderLayer(C, H, 17, batch_first=True)
    converted = ga.convert(nn.TransformerEncoder(torch_layer, 2, enable_nested_tensor=False))
    for model in (ours, converted.eval()):
        assert breaks(model, x, src_key_padding_mask=pad) == 0
