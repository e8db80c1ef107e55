"""``convert`` for Hugging Face ``transformers`` models: every attention runs as graph attention.

The modules stay what they are. Each supported attention module keeps its own code and weights
(projections, GPT-2's Conv1D, caches, output projection); only the attention *function* it calls
changes: ``config._attn_implementation`` becomes ``"gatattn"``, which transformers resolves to
``gatattn.hf.attention.graph_attention`` (registered with transformers' ``AttentionInterface``,
with SDPA's boolean masks from ``AttentionMaskInterface``). So the converted model has exactly
the parameters, buffers and state_dict keys of the original, and its attention weights come from
a TokenGraph: complete, causal, or the padding mask as a graph (docs/hf.md).

Supported families are listed in ``FAMILIES``; each one is tested against the original model
(tests/hf/test_families.py). Any other attention module raises ``UnsupportedModelError``.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from typing import Any

from torch import nn

from ..backends import check_backend_name
from . import bloom
from .attention import (
    IMPLEMENTATION,
    SETTINGS,
    GraphFn,
    GraphSettings,
    UnsupportedModelError,
    register,
)
from .modern import CALL_GRAPH_FN, note_output_attentions

__all__ = ["FAMILIES", "convert", "is_hf_model", "register", "supported_modules"]

#: family -> (transformers module, attention classes that call the attention interface).
#: Models built from these modules (task heads, encoder-decoders, DPR...) are supported too.
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "bert": ("transformers.models.bert.modeling_bert", ("BertSelfAttention", "BertCrossAttention")),
    "roberta": (
        "transformers.models.roberta.modeling_roberta",
        ("RobertaSelfAttention", "RobertaCrossAttention"),
    ),
    "xlm-roberta": (
        "transformers.models.xlm_roberta.modeling_xlm_roberta",
        ("XLMRobertaSelfAttention", "XLMRobertaCrossAttention"),
    ),
    "camembert": (
        "transformers.models.camembert.modeling_camembert",
        ("CamembertSelfAttention", "CamembertCrossAttention"),
    ),
    "electra": (
        "transformers.models.electra.modeling_electra",
        ("ElectraSelfAttention", "ElectraCrossAttention"),
    ),
    "distilbert": (
        "transformers.models.distilbert.modeling_distilbert",
        ("DistilBertSelfAttention",),
    ),
    "gpt2": ("transformers.models.gpt2.modeling_gpt2", ("GPT2Attention",)),
    "vit": ("transformers.models.vit.modeling_vit", ("ViTAttention",)),
    "deit": ("transformers.models.deit.modeling_deit", ("DeiTAttention",)),
    # modern families (docs/hf.md, "Modern families"): rotary positions, grouped-query heads,
    # sliding windows, soft-capping, ALiBi and T5 biases, attention sinks, encoder-decoders
    "llama": ("transformers.models.llama.modeling_llama", ("LlamaAttention",)),
    "mistral": ("transformers.models.mistral.modeling_mistral", ("MistralAttention",)),
    "qwen2": ("transformers.models.qwen2.modeling_qwen2", ("Qwen2Attention",)),
    "qwen3": ("transformers.models.qwen3.modeling_qwen3", ("Qwen3Attention",)),
    "gemma": ("transformers.models.gemma.modeling_gemma", ("GemmaAttention",)),
    "gemma2": ("transformers.models.gemma2.modeling_gemma2", ("Gemma2Attention",)),
    "gemma3": ("transformers.models.gemma3.modeling_gemma3", ("Gemma3Attention",)),
    "phi3": ("transformers.models.phi3.modeling_phi3", ("Phi3Attention",)),
    "gpt-oss": ("transformers.models.gpt_oss.modeling_gpt_oss", ("GptOssAttention",)),
    "gpt-neox": ("transformers.models.gpt_neox.modeling_gpt_neox", ("GPTNeoXAttention",)),
    "falcon": ("transformers.models.falcon.modeling_falcon", ("FalconAttention",)),
    "t5": ("transformers.models.t5.modeling_t5", ("T5Attention",)),
    "mt5": ("transformers.models.mt5.modeling_mt5", ("MT5Attention",)),
    "bart": ("transformers.models.bart.modeling_bart", ("BartAttention",)),
    "mbart": ("transformers.models.mbart.modeling_mbart", ("MBartAttention",)),
    "marian": ("transformers.models.marian.modeling_marian", ("MarianAttention",)),
    "modernbert": ("transformers.models.modernbert.modeling_modernbert", ("ModernBertAttention",)),
    "albert": ("transformers.models.albert.modeling_albert", ("AlbertAttention",)),
    "bloom": ("transformers.models.bloom.modeling_bloom", ("BloomAttention",)),
}

#: Families whose attention modules call no attention function (they compute the softmax
#: inline): gatattn gives each module a forward of its own (gatattn/hf/bloom.py).
OWN_FORWARD = {"bloom"}

#: Families whose models take ``**kwargs`` and pass none of them on to their layers: a
#: per-call ``graph_fn`` would be dropped, so hooks on their models note it on their attention
#: modules (``note_graph_fn``).
DROPS_KWARGS = ("bloom", "falcon")

#: Names under which encoder-decoders hold their cross-attention modules (a module class
#: shared with self-attention: BartAttention, T5Attention): marked ``is_cross_attention``.
CROSS_ATTENTION_NAMES = ("encoder_attn", "EncDecAttention")


def supported_modules() -> dict[type, str]:
    """The attention classes gatattn converts -> their family (those this transformers has)."""
    out: dict[type, str] = {}
    for family, (module, names) in FAMILIES.items():
        try:
            mod = importlib.import_module(module)
        except ImportError:  # a family this transformers version does not ship
            continue
        for name in names:
            cls = getattr(mod, name, None)
            if isinstance(cls, type):
                out[cls] = family
    return out


def is_hf_model(model: object) -> bool:
    """True for a ``transformers.PreTrainedModel``, read from the class hierarchy (importing
    ``transformers.PreTrainedModel`` to test isinstance would cost seconds on every call)."""
    return any(
        c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers.")
        for c in type(model).__mro__
    )


def _looks_like_attention(m: nn.Module) -> bool:
    return isinstance(m, nn.MultiheadAttention) or "attention" in type(m).__name__.lower()


def _plan(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """name -> (attention module, family) for every module to convert.

    Raises:
        UnsupportedModelError: an attention module of another kind (named, with its path), or
            no attention module at all.
    """
    known = supported_modules()
    found: dict[str, tuple[nn.Module, str]] = {}
    for name, m in model.named_modules():
        family = next((f for cls, f in known.items() if isinstance(m, cls)), None)
        if family is not None:
            found[name] = (m, family)
    others = [
        (name, m)
        for name, m in model.named_modules()
        if name not in found
        and _looks_like_attention(m)
        # neither wraps a supported module (BertAttention) nor sits inside one
        and not any(n.startswith(name + ".") or name.startswith(n + ".") for n in found)
    ]
    # name the innermost ones (T5Attention, not the T5LayerSelfAttention around it), per class
    unknown: dict[str, list[str]] = {}
    for name, m in others:
        if not any(n.startswith(name + ".") for n, _ in others):
            unknown.setdefault(type(m).__name__, []).append(name or "the model itself")
    kinds = ", ".join(sorted({c.__name__ for c in known}))
    model_name = type(model).__name__
    if unknown:
        listed = ", ".join(
            f"{cls} ({paths[0]}" + (f" and {len(paths) - 1} more)" if len(paths) > 1 else ")")
            for cls, paths in unknown.items()
        )
        raise UnsupportedModelError(
            f"gatattn.convert cannot convert {model_name}: unsupported attention module "
            f"{listed}. Supported attention modules: {kinds}"
        )
    if not found:
        raise UnsupportedModelError(
            f"gatattn.convert found no supported attention module in {model_name}. "
            f"Supported attention modules: {kinds}"
        )
    return found


def note_graph_fn(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Forward pre-hook of a ``DROPS_KWARGS`` model: note the call's ``graph_fn`` (if given)
    on each converted attention module inside, where ``graph_attention`` reads it."""
    if "graph_fn" not in kwargs:  # an inner model of the same call keeps the outer's
        return
    for m in model.modules():
        if isinstance(getattr(m, SETTINGS, None), GraphSettings):
            m.__dict__[CALL_GRAPH_FN] = kwargs["graph_fn"]


def forget_graph_fn(model: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    """Forward hook (always called) that clears what ``note_graph_fn`` noted."""
    for m in model.modules():
        m.__dict__.pop(CALL_GRAPH_FN, None)


def convert(
    model: nn.Module,
    *,
    backend: str = "auto",
    graph_fn: GraphFn | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Run every attention of a Hugging Face model as gatattn graph attention.

    .. math::
        \\mathrm{Attn}_{ij} = \\mathrm{softmax}_{j \\in N(i)} (s \\langle q_i, k_j \\rangle),
        \\quad N(i) = \\{ j : \\mathrm{mask}[b, i, j] \\}

    Works on a deep copy (default; ``model`` is left untouched) or, with ``inplace=True``, on
    ``model`` itself. Nothing is replaced: the attention modules keep their class, code and
    weights, and the model keeps every state_dict key; the config's attention implementation
    becomes ``"gatattn"``, so each module's softmax(s·QKᵀ + mask)·V runs through
    ``gatattn.backends.attend`` on a TokenGraph. Outputs, ``output_attentions=True`` and
    generation work as before.

    Args:
        model: a ``transformers.PreTrainedModel`` of a family in ``FAMILIES`` (any task head).
        backend: the gatattn backend ("auto": dense SDPA for complete, causal and padded graphs).
        graph_fn: a default graph swap ``graph_fn(lengths) -> TokenGraph`` on the unpadded
            tokens, intersected with the model's own mask; a forward call can pass its own
            (``model(..., graph_fn=fn)``).
        inplace: convert ``model`` itself instead of a copy.

    Returns:
        the converted model (``model`` itself when ``inplace``).

    Shapes:
        unchanged: the model's inputs and outputs ([B, L, ...]); inside, each attention call
        runs on B·L nodes and a graph with edge_index [2, E].

    Raises:
        UnsupportedModelError: an attention module that gatattn does not support; the message
            names its class and path.
        ValueError: an unknown backend.
    """
    register()
    backend = check_backend_name(backend)
    if graph_fn is not None and not callable(graph_fn):
        raise TypeError(f"graph_fn must be callable(lengths) -> TokenGraph, got {graph_fn!r}")
    for m, family in _plan(model).values():  # refuse before copying
        if family in OWN_FORWARD:
            bloom.check(m)
    new = model if inplace else copy.deepcopy(model)
    plan = _plan(new)
    families = sorted({f for _, f in plan.values()})
    settings = GraphSettings(backend=backend, graph_fn=graph_fn, family="+".join(families))
    configs: dict[int, Any] = {}
    for name, (m, family) in plan.items():
        setattr(m, SETTINGS, settings)  # a plain attribute: no parameter, buffer or state_dict key
        if name.rsplit(".", 1)[-1] in CROSS_ATTENTION_NAMES:
            setattr(m, "is_cross_attention", True)  # noqa: B010  (no swap, window, recording)
        if "output_attentions" in inspect.signature(type(m).forward).parameters:
            # Falcon keeps output_attentions to itself: note it for graph_attention
            m.register_forward_pre_hook(note_output_attentions, with_kwargs=True)
        if family in OWN_FORWARD:
            bloom.install(m)
        if getattr(m, "config", None) is not None:  # BLOOM's attention holds no config
            configs[id(m.config)] = m.config
    drops = {FAMILIES[f][0] for f in DROPS_KWARGS}
    for sub in new.modules():
        if type(sub).__module__ in drops and hasattr(sub, "base_model_prefix"):
            # BLOOM's and Falcon's models (task heads too): keep model(..., graph_fn=...)
            sub.register_forward_pre_hook(note_graph_fn, with_kwargs=True)
            sub.register_forward_hook(forget_graph_fn, always_call=True)
        cfg = getattr(sub, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            configs[id(cfg)] = cfg
    for cfg in configs.values():
        cfg._attn_implementation = IMPLEMENTATION  # recurses into sub-configs
    return new
