"""Tiny Hugging Face models of every supported family, with random weights (nothing downloaded).

Sizes are pairwise distinct (C=20, H=4, D=5, 2 layers, L=7, B=3) so that a transposed axis fails.
The reference model runs transformers' own eager attention. ViT's and DeiT's eager function
computes its softmax in fp32 even for an fp64 model, so their fp64 reference is the same formula
with an fp64 softmax: transformers' BERT eager function, registered as ``"eager_fp64"``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers.models.bert.modeling_bert import eager_attention_forward  # noqa: E402

transformers.AttentionInterface.register("eager_fp64", eager_attention_forward)

C, H, LAYERS, FFN, VOCAB, L = 20, 4, 2, 24, 60, 7
LENGTHS = (7, 5, 3)  # tokens per sequence of the padded batch [3, 7]

BERT_LIKE = {
    "bert": ("BertConfig", "BertModel"),
    "roberta": ("RobertaConfig", "RobertaModel"),
    "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaModel"),
    "camembert": ("CamembertConfig", "CamembertModel"),
    "electra": ("ElectraConfig", "ElectraModel"),
}
FAMILIES = [*BERT_LIKE, "distilbert", "gpt2", "vit", "deit"]


def config(family: str, impl: str = "eager", **extra: Any) -> Any:
    """A small config of ``family`` with transformers' attention ``impl`` (the reference)."""
    if impl == "eager" and family in ("vit", "deit"):
        impl = "eager_fp64"
    common = {"attn_implementation": impl, **extra}
    if family in BERT_LIKE:
        cls = getattr(transformers, BERT_LIKE[family][0])
        return cls(
            vocab_size=VOCAB, hidden_size=C, num_hidden_layers=LAYERS, num_attention_heads=H,
            intermediate_size=FFN, max_position_embeddings=40, pad_token_id=1, **common,
        )  # fmt: skip
    if family == "distilbert":
        return transformers.DistilBertConfig(
            vocab_size=VOCAB, dim=C, n_layers=LAYERS, n_heads=H, hidden_dim=FFN,
            max_position_embeddings=40, **common,
        )  # fmt: skip
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=C, n_layer=LAYERS, n_head=H, n_positions=40,
            bos_token_id=0, eos_token_id=0, pad_token_id=0, **common,
        )  # fmt: skip
    cls = transformers.ViTConfig if family == "vit" else transformers.DeiTConfig
    return cls(
        hidden_size=C, num_hidden_layers=LAYERS, num_attention_heads=H, intermediate_size=FFN,
        image_size=12, patch_size=4, num_channels=3, **common,
    )  # fmt: skip


def model_class(family: str) -> Any:
    if family in BERT_LIKE:
        return getattr(transformers, BERT_LIKE[family][1])
    names = {"distilbert": "DistilBertModel", "gpt2": "GPT2Model", "vit": "ViTModel"}
    return getattr(transformers, names.get(family, "DeiTModel"))


def build(
    family: str, dtype: torch.dtype = torch.float64, impl: str = "eager", **extra: Any
) -> Any:
    """A seeded random model of ``family`` in eval mode (the same weights for every ``impl``)."""
    torch.manual_seed(0)
    return model_class(family)(config(family, impl, **extra)).to(dtype).eval()


def inputs(family: str, *, padded: bool = True, left: bool = False) -> tuple[dict[str, Any], Any]:
    """(model inputs, valid [B, L] bool: the real tokens) for a batch of 3."""
    gen = torch.Generator().manual_seed(1)
    if family in ("vit", "deit"):
        pixels = torch.randn(3, 3, 12, 12, generator=gen, dtype=torch.float64)
        n = 10 if family == "vit" else 11  # [CLS] (+ distillation) + 9 patches
        return {"pixel_values": pixels}, torch.ones(3, n, dtype=torch.bool)
    ids = torch.randint(2, VOCAB, (3, L), generator=gen)
    if not padded:
        return {"input_ids": ids}, torch.ones(3, L, dtype=torch.bool)
    pos = torch.arange(L)
    lens = torch.tensor(LENGTHS)[:, None]
    valid = pos >= L - lens if left else pos < lens  # [B, L]
    return {"input_ids": ids, "attention_mask": valid.long()}, valid


WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "graph"]
WORDS += ["##s", "are", "fun", "."]


def tokenizer() -> Any:
    """A WordPiece tokenizer over a 15-word vocabulary (ids < VOCAB of the BERT-like models)."""
    return transformers.BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})


def cast(batch: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}


@pytest.fixture(scope="session")
def hf() -> SimpleNamespace:
    """The builders of this file for the tests: ``hf.build(family, dtype)``, ``hf.inputs``..."""
    return SimpleNamespace(
        build=build,
        inputs=inputs,
        cast=cast,
        config=config,
        tokenizer=tokenizer,
        FAMILIES=FAMILIES,
        H=H,
        L=L,
    )
