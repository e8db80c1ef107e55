"""The behaviours PyTorch's own tests check, reproduced for the drop-ins (docs/interop.md).

One test per behaviour of ``test/nn/test_multihead_attention.py`` and of the encoder tests of
``TestTransformers`` in ``test/test_transformers.py`` (written here, not copied). Where torch
checks against hard-coded reference values, the drop-in is compared with torch's module holding
the same weights (set the same way, by walking ``parameters()``). The torch tests that mock
private fused kernels, check fast-path warning texts or use TorchScript are listed in
docs/interop.md with the reason.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gatattn as ga

F64 = torch.float64


def cos_weights(model: nn.Module) -> nn.Module:
    """Every parameter p <- cos(arange(numel)).view(shape), walking parameters() in order."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.cos(torch.arange(p.numel(), dtype=p.dtype)).view(p.shape))
    return model


# ---------------------------------------------------------------------- test_multihead_attention.py
@pytest.mark.parametrize("average", [True, False])
def test_random_sizes_kdim_bias_kv_zero_attn_padding_equal_torch(average: bool) -> None:
    # test_multihead_attention: a one-token query (a decoder state) against S keys of width
    # kdim, with add_bias_kv / add_zero_attn, a key padding mask shared by the batch, and a
    # [1, S] float attn_mask of 0 / -inf.
    g = torch.Generator().manual_seed(0)
    for it in range(6):
        B, S = (int(v) for v in torch.randint(2, 9, (2,), generator=g))
        D, H = (
            int(torch.randint(3, 8, (1,), generator=g)),
            2 * int(torch.randint(1, 3, (1,), generator=g)),
        )
        C, kv = D * H, (D * H if it % 3 == 0 else int(torch.randint(5, 15, (1,), generator=g)))
        mha = nn.MultiheadAttention(
            C, H, add_bias_kv=it % 2 == 0, add_zero_attn=it % 3 != 1, kdim=kv, vdim=kv, dtype=F64
        )
        twin = ga.GraphMultiheadAttention.from_torch(mha)
        q = torch.randn(1, B, C, generator=g, dtype=F64)
        k = torch.randn(S, B, kv, generator=g, dtype=F64)
        kpm = None  # a padding row shared by the batch, as a float mask like attn_mask
        if it % 2:
            pad = (torch.rand(1, S, generator=g) < 0.5).expand(B, S)
            kpm = torch.zeros(B, S, dtype=F64).masked_fill(pad, float("-inf"))
        am = torch.zeros(1, S, dtype=F64).masked_fill(
            torch.rand(1, S, generator=g) < 0.5, float("-inf")
        )
        kw = {"key_padding_mask": kpm, "attn_mask": am, "average_attn_weights": average}
        o1, w1 = mha(q, k, k, **kw)
        o2, w2 = twin(q, k, k, **kw)
        ok = ~torch.isnan(o1)  # torch: NaN where every key is masked; gatattn: out_proj.bias
        torch.testing.assert_close(o2[ok], o1[ok], atol=1e-10, rtol=0)
        assert w1 is not None and w2 is not None and w2.shape == w1.shape
        okw = ~torch.isnan(w1)
        torch.testing.assert_close(w2[okw], w1[okw], atol=1e-10, rtol=0)


def test_3d_attn_mask_equals_one_2d_mask_per_sequence() -> None:
    # test_multihead_attn_3d_attn_mask
    B, T, S, C, H = 8, 2, 3, 8, 4
    twin = ga.GraphMultiheadAttention(C, H, dtype=F64)
    q, k = torch.rand(B, T, C, dtype=F64), torch.rand(B, S, C, dtype=F64)
    mask = torch.zeros(B, T, S, dtype=F64).masked_fill(torch.rand(B, T, S) < 0.5, float("-inf"))
    out3d = twin(q.transpose(0, 1), k.transpose(0, 1), k.transpose(0, 1),
                 attn_mask=mask.repeat_interleave(H, dim=0))[0].transpose(0, 1)  # fmt: skip
    for i in range(B):
        one = twin(q[i, :, None], k[i, :, None], k[i, :, None], attn_mask=mask[i])[0]
        torch.testing.assert_close(out3d[i], one[:, 0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", ["train", "eval no_grad", "eval need_weights=False"])
def test_invalid_shapes_raise_in_every_mode(mode: str) -> None:
    # test_multihead_attn_invalid_shape / test_multihead_attn_fast_path_invalid_shape
    twin = ga.GraphMultiheadAttention(4, 4, batch_first=True)
    kw = {"need_weights": False} if "need_weights" in mode else {}
    if mode != "train":
        twin.eval()
    x3, x2 = torch.randn(4, 4, 4), torch.randn(4, 4)
    with torch.set_grad_enabled(mode == "train"):
        for call, msg in [
            (lambda: twin(x3, x2, x3, **kw), "expected `key` and `value` to be 3-D but found 2-D and 3-D"),
            (lambda: twin(x3, x3, x2, **kw), "expected `key` and `value` to be 3-D but found 3-D and 2-D"),
            (lambda: twin(x3, x3, x3, key_padding_mask=torch.zeros(4, dtype=torch.bool), **kw),
             "expected `key_padding_mask` to be `None` or 2-D but found 1-D"),
            (lambda: twin(x3, x3, x3, attn_mask=torch.zeros(4, dtype=torch.bool), **kw),
             "expected `attn_mask` to be `None`, 2-D or 3-D but found 1-D"),
            (lambda: twin(x2, x3, x2, **kw), "expected `key` and `value` to be 2-D but found 3-D and 2-D"),
            (lambda: twin(x2, x2, x3, **kw), "expected `key` and `value` to be 2-D but found 2-D and 3-D"),
            (lambda: twin(x2, x2, x2, key_padding_mask=torch.zeros(1, 8, dtype=torch.bool), **kw),
             "expected `key_padding_mask` to be `None` or 1-D but found 2-D"),
            (lambda: twin(x2, x2, x2, attn_mask=torch.zeros(5, 4, 4, dtype=torch.bool), **kw),
             r"Expected `attn_mask` shape to be \(4, 4, 4\)"),
        ]:  # fmt: skip
            with pytest.raises(AssertionError, match=msg):
                call()


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
def test_empty_nested_tensor_query_is_refused_like_torch() -> None:
    # test_multihead_attn_nested_tensor_outside_fast_path (the error case)
    twin = ga.GraphMultiheadAttention(10, 5, batch_first=True)
    nt = torch.nested.nested_tensor([])
    with pytest.raises(AssertionError, match="NestedTensor"):
        twin(nt, nt, nt)


def test_two_masks_equal_torch_outside_fully_masked_rows() -> None:
    # test_multihead_self_attn_two_masks_fast_path: bool attn_mask and key_padding_mask
    # together, eval + no_grad; rows with every key masked are excluded (torch: NaN).
    B, S, C, H = 8, 5, 14, 7
    mha = nn.MultiheadAttention(C, H, batch_first=True, dtype=F64).eval()
    twin = ga.GraphMultiheadAttention.from_torch(mha)
    x = torch.rand(B, S, C, dtype=F64)
    am, kpm = torch.rand(S, S) < 0.5, torch.rand(B, S) < 0.5
    with torch.no_grad():
        ref = mha(x, x, x, attn_mask=am, key_padding_mask=kpm, need_weights=False)[0]
        out = twin(x, x, x, attn_mask=am, key_padding_mask=kpm)[0]
    dead = (am[None] | kpm[:, None]).all(-1)  # [B, S] queries with no key
    torch.testing.assert_close(out[~dead], ref[~dead], atol=1e-10, rtol=0)
    torch.testing.assert_close(out[dead], mha.out_proj.bias.expand(int(dead.sum()), C))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("training", [True, False])
def test_output_dtype_follows_the_module(dtype: torch.dtype, training: bool) -> None:
    # test_multihead_attention_dtype(_batch_first) (CUDA in torch; the dtype contract on CPU)
    for batch_first in (False, True):
        twin = ga.GraphMultiheadAttention(16, 4, batch_first=batch_first).to(dtype).train(training)
        x = torch.randn(5, 3, 16, dtype=dtype)
        with torch.set_grad_enabled(training):
            out = twin(x, x, x, need_weights=False)[0]
        assert out.dtype == dtype and out.shape == x.shape


def test_small_and_odd_configurations_run() -> None:
    # test_multihead_attn_fast_path_small_test, ..._query_and_bias_have_different_dtypes,
    # test_multihead_attn_in_proj_bias_none, ..._in_proj_weight_none, test_bias_is_none,
    # test_mha_native_args (CUDA in torch: nb_heads 1 and 8, bias on and off, a padding mask)
    with torch.no_grad():
        twin = ga.GraphMultiheadAttention(4, 4, batch_first=True, dtype=F64).eval()
        q = torch.randn(4, 4, 4, dtype=F64)
        assert twin(q, q, q)[0].shape == (4, 4, 4)
        twin.in_proj_bias = nn.Parameter(twin.in_proj_bias.to(torch.half))  # type: ignore[union-attr]
        ref = nn.MultiheadAttention(4, 4, batch_first=True, dtype=F64).eval()
        ref.load_state_dict(twin.state_dict())
        torch.testing.assert_close(twin(q, q, q)[0], ref(q, q, q)[0], atol=1e-10, rtol=0)
        assert ga.GraphMultiheadAttention(2, 2, bias=False, dtype=F64)(
            q[..., :2], q[..., :2], q[..., :2]
        )[0].shape == (4, 4, 2)
        k = torch.rand(4, 4, 2, dtype=F64)
        assert ga.GraphMultiheadAttention(4, 4, kdim=2, vdim=2, dtype=F64)(q, k, k)[0].shape == (
            4,
            4,
            4,
        )
        x = torch.rand(1, 5, 10)
        assert (
            ga.GraphMultiheadAttention(10, 1, bias=False, batch_first=True).eval()(x, x, x)[0].shape
            == x.shape
        )
        for heads in (1, 8):
            for bias in (True, False):
                m = ga.GraphMultiheadAttention(32, heads, batch_first=True, bias=bias).eval()
                x = torch.randn(3, 10, 32)
                pad = torch.zeros(3, 10, dtype=torch.bool) if bias else None
                assert m(query=x, key=x, value=x, key_padding_mask=pad)[0].shape == x.shape


def test_incompatible_mask_raises_runtime_error() -> None:
    # test_incompatible_mask (nested in torch's SDPA test): a float padding mask of the wrong
    # shape with a bool attn_mask of the wrong shape -> RuntimeError.
    twin = ga.GraphMultiheadAttention(4, 1)
    qkv = torch.ones(1, 2, 4, dtype=F64)
    twin.to(F64)
    kpm = torch.ones(1, 2) * float("-inf")
    am = torch.ones(2, 2).to(bool)
    with pytest.raises(RuntimeError), pytest.warns(UserWarning, match="mismatched"):
        twin(qkv, qkv, qkv, need_weights=False, key_padding_mask=kpm, attn_mask=am)


# ---------------------------------------------------------------------- test_transformers.py
def encoder_pair(
    d_model: int, nhead: int, ff: int, layers: int, *, norm: bool = False, **kw: object
) -> tuple[nn.TransformerEncoder, nn.TransformerEncoder]:
    """torch's encoder and one of GraphTransformerEncoderLayers, cos weights in both."""
    ref_layer = nn.TransformerEncoderLayer(d_model, nhead, ff, **kw)  # type: ignore[arg-type]
    twin_layer = ga.GraphTransformerEncoderLayer(d_model, nhead, ff, **kw)  # type: ignore[arg-type]
    cos_weights(ref_layer)
    cos_weights(twin_layer)
    dtype = kw.get("dtype")
    norms = [nn.LayerNorm(d_model, dtype=dtype) if norm else None for _ in range(2)]  # type: ignore[arg-type]
    ref = nn.TransformerEncoder(ref_layer, layers, norm=norms[0], enable_nested_tensor=False)
    twin = nn.TransformerEncoder(twin_layer, layers, norm=norms[1], enable_nested_tensor=False)
    return ref, twin


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_transformerencoder_with_cos_weights_equals_torch(
    batch_first: bool, training: bool
) -> None:
    # test_transformerencoder: weights set by walking parameters(); 1, 2 and 6 layers, with
    # and without a final norm; no mask, an all-False src_mask and padding mask, a padding mask.
    x = torch.rand(5, 2, 4, dtype=F64)
    x = x.transpose(0, 1) if batch_first else x
    kpm_none = torch.zeros(2, 5, dtype=torch.bool)
    kpm = kpm_none.clone()
    kpm[0, 1] = kpm[1, 3] = kpm[1, 4] = True
    for layers, norm in ((1, False), (2, False), (6, False), (2, True), (6, True)):
        ref, twin = encoder_pair(
            4, 2, 16, layers, norm=norm, dropout=0.0, batch_first=batch_first, dtype=F64
        )
        assert list(twin.state_dict()) == list(ref.state_dict())
        ref.train(training)
        twin.train(training)
        with torch.set_grad_enabled(training):
            for kw in ({}, {"mask": torch.zeros(5, 5, dtype=torch.bool)},
                       {"src_key_padding_mask": kpm_none}, {"src_key_padding_mask": kpm}):  # fmt: skip
                torch.testing.assert_close(twin(x, **kw), ref(x, **kw), atol=1e-10, rtol=0)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("no_grad", [True, False])
def test_transformerencoder_square_input_equals_torch(training: bool, no_grad: bool) -> None:
    # test_transformerencoder_square_input: batch size == sequence length, a bool src_mask.
    ref, twin = encoder_pair(4, 2, 16, 2, dropout=0.0, batch_first=True, dtype=F64)
    x = torch.arange(16, dtype=F64).reshape(2, 2, 4)
    mask = torch.tensor([[0, 1], [0, 0]], dtype=torch.bool)
    for m in (ref, twin):
        m.train(training)
    with torch.set_grad_enabled(not no_grad):
        torch.testing.assert_close(twin(x, mask=mask), ref(x, mask=mask), atol=1e-10, rtol=0)


def test_transformerencoder_padded_batches_fast_and_slow_paths_agree() -> None:
    # test_transformerencoder_fastpath: padded inputs (up to L=1040), no_grad against grad mode
    # and against torch, on the real tokens (padded positions carry no guarantee).
    torch.manual_seed(1234)
    layer = nn.TransformerEncoderLayer(12, 4, 12, batch_first=True)
    ref = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    twin = ga.convert(ref)
    cases = [
        (torch.rand(3, 2, 12), [[0, 1], [0, 1], [1, 1]]),
        (torch.rand(2, 100, 12), [[0] * 98 + [1] * 2, [0] * 90 + [1] * 10]),
        (torch.rand(4, 1040, 12), [[0] * 1024 + [1] * 16, [0] * 1025 + [1] * 15,
                                   [0] * 1031 + [1] * 9, [0] * 1040]),
    ]  # fmt: skip
    for x, pad_list in cases:
        pad = torch.tensor(pad_list, dtype=torch.bool)
        with torch.no_grad():
            fast = twin(x, src_key_padding_mask=pad)
        slow = twin(x, src_key_padding_mask=pad)
        expected = ref(x, src_key_padding_mask=pad)
        keep = ~pad
        torch.testing.assert_close(fast[keep], slow[keep].detach())
        torch.testing.assert_close(fast[keep], expected[keep].detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("nhead", [1, 4, 8])
def test_transformerencoderlayer_src_mask_runs(nhead: int) -> None:
    model = ga.GraphTransformerEncoderLayer(8, nhead, 32, batch_first=True)
    src, mask = torch.rand(2, 4, 8), torch.zeros(4, 4, dtype=torch.bool)
    assert model(src, src_mask=mask).shape == src.shape
    with torch.no_grad():
        assert model.eval()(src, src_mask=mask).shape == src.shape


@pytest.mark.parametrize("nhead", [3, 4])
def test_forward_hooks_on_self_attn_fire_once(nhead: int) -> None:
    # test_transformerencoderlayer_no_fastpath_with_hooks, for the drop-in layer and for a
    # torch layer holding the drop-in attention (ga.convert)
    cache: list[Tensor] = []
    for model in (
        ga.GraphTransformerEncoderLayer(12, nhead, 12, batch_first=True).eval(),
        ga.convert(nn.TransformerEncoderLayer(12, nhead, 12, batch_first=True).eval()),
    ):
        handle = model.self_attn.register_forward_hook(lambda m, i, o: cache.append(o[0]))
        with torch.inference_mode():
            model(torch.rand(2, 4, 12))
        handle.remove()
    assert len(cache) == 2


def test_training_with_padding_and_the_uint8_mask_error() -> None:
    # test_train_with_pad_and_catch_error: train a few SGD steps with a padding mask; a uint8
    # or int64 mask raises AssertionError; eval and train agree on the real tokens.
    torch.manual_seed(0)
    pad = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    layer = ga.GraphTransformerEncoderLayer(2, 2, 4, batch_first=True, activation="gelu", dropout=0)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    opt = torch.optim.SGD(encoder.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        encoder.train()
        opt.zero_grad()
        inputs = torch.cat([torch.randn(1, 2, 2), torch.zeros(1, 2, 2)], dim=1)
        loss = F.mse_loss(encoder(inputs, src_key_padding_mask=pad)[:, :2], inputs[:, :2])
        loss.backward()
        opt.step()
        with torch.no_grad():
            test = torch.cat([torch.randn(1, 2, 2), torch.zeros(1, 2, 2)], dim=1)
            for bad in (torch.uint8, torch.int64):
                with pytest.raises(AssertionError, match="only bool and floating types"):
                    encoder(test, src_key_padding_mask=pad.to(bad))
            train_out = encoder(test, src_key_padding_mask=pad)
            eval_out = encoder.eval()(test, src_key_padding_mask=pad)
            assert F.l1_loss(train_out[:, 2:], eval_out[:, 2:]).item() < 1e-4


@pytest.mark.parametrize("attn_dim", [2, 3, None])
@pytest.mark.parametrize("kpm_dim", [2, None])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_train_and_eval_agree_with_any_masks(
    attn_dim: int | None, kpm_dim: int | None, mask_dtype: torch.dtype
) -> None:
    # test_multiheadattention_fastpath_attn_mask: arbitrary masks (random bools, floats in
    # [-9, 9]), train (no dropout) against eval + no_grad.
    B, L, D, H = 2, 4, 8, 4
    g = torch.Generator().manual_seed(attn_dim or 0)

    def make(*shape: int) -> Tensor:
        t = torch.rand(*shape, generator=g)
        return t < 0.5 if mask_dtype == torch.bool else (18 * t - 9)

    am = make(L, L) if attn_dim == 2 else make(B * H, L, L) if attn_dim == 3 else None
    kpm = make(B, L) if kpm_dim else None
    mha = ga.GraphMultiheadAttention(D, H, batch_first=True)
    x = torch.randn(B, L, D)
    with torch.no_grad():
        out = mha.train()(x, x, x, attn_mask=am, key_padding_mask=kpm, need_weights=False)[0]
        out_eval = mha.eval()(x, x, x, attn_mask=am, key_padding_mask=kpm, need_weights=False)[0]
    torch.testing.assert_close(out, out_eval)


def test_padding_and_causal_bool_masks_log_and_warn_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # test_encoder_padding_and_src_mask_bool / test_decoder_padding_and_src_mask_bool
    # (warnings are errors in this test suite)
    layer = ga.GraphTransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, nn.LayerNorm(16), enable_nested_tensor=False)
    inputs = torch.randn(2, 3, 16)
    src_mask = torch.ones(3, 3, dtype=torch.bool).triu_(diagonal=1)
    padding = torch.arange(3)[None, :] >= torch.tensor([3, 2])[:, None]
    decoder = ga.convert(nn.TransformerDecoder(
        nn.TransformerDecoderLayer(16, 2, 32, dropout=0.1, batch_first=True), 2, nn.LayerNorm(16)
    ))  # fmt: skip
    with caplog.at_level("DEBUG"):
        encoder(inputs, mask=src_mask, src_key_padding_mask=padding)
        decoder(inputs, torch.randn(2, 3, 16), tgt_mask=src_mask, tgt_key_padding_mask=padding,
                memory_key_padding_mask=padding)  # fmt: skip
    assert [r for r in caplog.records if r.levelno >= 20] == []


def test_encoder_is_causal_hint_equals_the_mask() -> None:
    # test_encoder_is_causal
    layer = ga.GraphTransformerEncoderLayer(3, 1, 6, batch_first=True).eval()
    x = torch.randn(1, 5, 3)
    mask = nn.Transformer.generate_square_subsequent_mask(5)
    torch.testing.assert_close(layer(x, src_mask=mask, is_causal=True), layer(x, src_mask=mask))
    assert not torch.allclose(layer(x), layer(x, src_mask=mask))


def test_fully_padded_sequences_keep_their_shape() -> None:
    # test_kpm_mask_trailing_column_with_nested_tensor: all but one sequence fully padded
    layer = ga.GraphTransformerEncoderLayer(16, 4, 32, activation="gelu")
    encoder = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
    mask = torch.ones(6, 10, dtype=torch.bool)
    mask[0] = False
    out = encoder(torch.randn(10, 6, 16), src_key_padding_mask=mask)
    assert out.shape == (10, 6, 16) and torch.isfinite(out).all()


def test_train_with_is_causal_and_the_causal_kernel_values() -> None:
    # test_train_with_is_causal / is_causal_kernels
    layer = ga.GraphTransformerEncoderLayer(2, 1, 4, batch_first=True, activation="gelu", dropout=0)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).train()
    opt = torch.optim.SGD(encoder.parameters(), lr=0.1, momentum=0.9)
    inputs = torch.randn(1, 2, 2)
    mask = nn.Transformer.generate_square_subsequent_mask(2)
    F.mse_loss(encoder(inputs, mask=mask, is_causal=True), inputs).backward()
    opt.step()
    mha = ga.GraphMultiheadAttention(2, 1)
    t = torch.randn(1, 2, 2)
    assert (
        mha(t, t, t, attn_mask=nn.Transformer.generate_square_subsequent_mask(1), is_causal=True)[
            0
        ].shape
        == t.shape
    )
    with pytest.raises(RuntimeError):
        mha(t, t, t, is_causal=True)
    # nn.TransformerEncoder detects a causal mask and passes is_causal=True to its layers
    seen: list[bool] = []
    encoder.layers[1].register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw.get("is_causal")), with_kwargs=True
    )
    causal = torch.triu(torch.ones(2, 2) * float("-inf"), diagonal=1).to(torch.bool)
    encoder(inputs, mask=causal)
    assert seen == [True]
    # all-ones weights: every output is 16 (E=4, H=1, S=1, L=2)
    mha = ga.GraphMultiheadAttention(4, 1)
    mha.in_proj_weight = nn.Parameter(torch.ones(12, 4))
    mha.out_proj.weight = nn.Parameter(torch.ones(4, 4))
    qkv = torch.ones(1, 2, 4)
    mask = nn.Transformer.generate_square_subsequent_mask(1)
    out = mha(qkv, qkv, qkv, attn_mask=mask, need_weights=False, is_causal=True)[0]
    assert torch.equal(out, torch.full((1, 2, 4), 16.0))


def test_bias_false_encoder_layers_run() -> None:
    # test_transformer_bias_is_none (the part without torch's fast-path warning texts)
    layer = ga.GraphTransformerEncoderLayer(8, 4, bias=False, batch_first=True).eval()
    x = torch.randn(2, 3, 8)
    assert layer(x).shape == x.shape
    with pytest.warns(UserWarning, match="bias=False"):  # torch's own nested-tensor notice
        model = nn.Transformer(d_model=8, nhead=4, bias=False, batch_first=True)
    transformer = ga.convert(model.eval())
    assert transformer(x, x).shape == x.shape


def test_fastpath_switch_does_not_change_the_drop_ins() -> None:
    # test_disable_fastpath: the drop-ins never take torch's fused kernels, with or without it
    layer = ga.GraphTransformerEncoderLayer(2, 2, 8, batch_first=True).eval()
    mha = ga.convert(nn.MultiheadAttention(2, 2, batch_first=True).eval())
    x = torch.tensor([[[1.0, 2], [3, 4], [5, 6]]])
    with torch.no_grad():
        before = layer(x), mha(x, x, x)[0]
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            after = layer(x), mha(x, x, x)[0]
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b)


def test_converted_torch_layer_never_takes_the_fused_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The condition of torch's fused TransformerEncoderLayer kernel holds (eval, no_grad,
    # batch_first, even heads), yet a layer holding the drop-in attention calls it: the kernel
    # would read in_proj_weight directly and bypass graph attention.
    layer = ga.convert(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True).eval())
    called: list[bool] = []
    monkeypatch.setattr(
        torch, "_transformer_encoder_layer_fwd", lambda *a, **k: called.append(True)
    )
    with torch.no_grad():
        out = layer(torch.randn(2, 5, 8))
    assert called == [] and out.shape == (2, 5, 8)
    assert copy.deepcopy(layer).self_attn._forward_pre_hooks  # the guard survives a copy
