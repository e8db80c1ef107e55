"""Attention graphs of a converted Hugging Face model: one ``ga.Attention`` per layer.

``attention_graphs(model, text, tokenizer=tok)`` runs the model once and keeps, for every
self-attention layer (bottom first), the edges, scores α_ij and weights Attn_ij [E, H] that the
graph attention computed (docs/math.md, eqs. 1-2), with the padding removed: the nodes are the
word pieces of all sentences, concatenated, and the graph is block-diagonal, exactly as
``pretrained.minilm`` returns them. The result goes straight into ``ga.to_networkx``,
``ga.layered_graph``, ``ga.attention_rollout``, ``ga.attention_flow`` and
``ga.plot.attention_html``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..graph import TokenGraph
from ..inspect.sparse import SparseAttention
from ..result import Attention
from .attention import SETTINGS, GraphFn, GraphSettings, recording
from .extract import SparseCapture

__all__ = ["ModelGraphs", "attention_graphs", "compact"]


@dataclass
class ModelGraphs:
    """What ``attention_graphs`` returns.

    Attributes:
        tokens: the word pieces of all sentences in node order, padding removed (N of them).
        lengths: tokens per sentence (they sum to N).
        attentions: one ``ga.Attention`` per self-attention layer, bottom first; ``out`` holds
            the heads' outputs before the output projection [N, C]. Empty when ``sparse`` is.
        output: the model's own output (``last_hidden_state``... padded, [B, L, ...]).
        sparse: with ``top_k``, ``threshold``, ``heads`` or ``layers``: one ``SparseAttention``
            per selected layer (its ``layer`` says which), bottom first; else empty.
    """

    tokens: list[str]
    lengths: list[int]
    attentions: list[Attention] = field(default_factory=list)
    output: Any = None
    sparse: list[SparseAttention] = field(default_factory=list)


def compact(att: Attention, valid: Tensor | None) -> Attention:
    """Drop the padded positions of one layer's Attention: keep the edges between real tokens
    and renumber the nodes, so the graph is block-diagonal over the real tokens only.

    Shapes:
        att over B·L nodes, valid [B, L] bool (None: no padding) -> Attention over N = Σ valid.
    """
    g = att.graph
    assert g is not None
    if valid is None or bool(valid.all()):  # nothing to drop: keep the graph (and its tag)
        return att
    flat = valid.flatten().to(att.edge_index.device)  # [B·L]
    new_id = torch.cumsum(flat.long(), 0) - 1  # [B·L] compact index of each real token
    src, dst = att.edge_index  # [E]
    keep = flat[src] & flat[dst]  # [E]
    ei = torch.stack([new_id[src[keep]], new_id[dst[keep]]])  # [2, E']
    lengths = [n for n in valid.sum(1).tolist() if n > 0]
    n = int(flat.sum())
    graph = TokenGraph(ei, n, n, lengths=lengths, validate=False)
    return Attention(att.out[flat], ei, att.scores[keep], att.weights[keep], graph)


def _settings(model: nn.Module) -> GraphSettings:
    for m in model.modules():
        s = getattr(m, SETTINGS, None)
        if isinstance(s, GraphSettings):
            return s
    raise ValueError(
        f"{type(model).__name__} is not a converted model: run ga.convert(model) first"
    )


def _encode(tokenizer: Any, sentences: list[str]) -> tuple[dict[str, Tensor], list[list[str]]]:
    """Word pieces of each sentence, right-padded into input_ids / attention_mask [B, L]."""
    ids = [list(tokenizer(s)["input_ids"]) for s in sentences]
    pieces = [list(tokenizer.convert_ids_to_tokens(i)) for i in ids]
    L = max(len(i) for i in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([i + [pad] * (L - len(i)) for i in ids])  # [B, L]
    mask = torch.tensor([[1] * len(i) + [0] * (L - len(i)) for i in ids])  # [B, L]
    return {"input_ids": input_ids, "attention_mask": mask}, pieces


def _default_tokens(model: nn.Module, inputs: dict[str, Any], lengths: list[int]) -> list[str]:
    """Names of the nodes when no tokenizer is given: the token ids, or for images the leading
    special tokens ([CLS], and DeiT's [DIST]) and the patches in raster order."""
    ids = inputs.get("input_ids")
    if isinstance(ids, Tensor):
        mask = inputs.get("attention_mask")
        keep = ids if mask is None else ids[mask.bool()]
        return [str(int(t)) for t in keep.flatten()]
    cfg = getattr(model, "config", None)
    size, patch = getattr(cfg, "image_size", None), getattr(cfg, "patch_size", None)
    names = []
    for n in lengths:
        patches = (size // patch) ** 2 if isinstance(size, int) and isinstance(patch, int) else n
        lead = max(n - patches, 0)
        special = ["[CLS]", "[DIST]"] if lead == 2 else [f"[special {k}]" for k in range(lead)]
        names += (["[CLS]"] if lead == 1 else special) + [f"patch {p}" for p in range(n - lead)]
    return names


@torch.no_grad()
def attention_graphs(
    model: nn.Module,
    text: str | Sequence[str] | None = None,
    *,
    tokenizer: Any = None,
    graph_fn: GraphFn | None = None,
    top_k: int | None = None,
    threshold: float | None = None,
    heads: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    renormalize: bool = False,
    **inputs: Any,
) -> ModelGraphs:
    """Run a converted model once and return each layer's attention graph.

    .. math::
        G_l = (V, E_l), \\quad V = \\text{word pieces}, \\quad
        E_l \\ni (j \\to i) \\text{ with } \\alpha_{ij}, \\mathrm{Attn}_{ij} \\in \\mathbb{R}^H

    Args:
        model: a model returned by ``gatattn.convert``.
        text: a sentence or a list of them (needs ``tokenizer``); or pass the model's inputs
            (``input_ids=``, ``attention_mask=``, ``pixel_values=``...) as keywords instead.
        tokenizer: a transformers tokenizer; it splits ``text`` and names the word pieces.
        graph_fn: swap the graph for this run: ``graph_fn(lengths) -> TokenGraph`` on the
            sum(lengths) real tokens (the same as ``pretrained.minilm``'s), intersected with
            the model's mask.
        top_k: keep only the k largest weights per query and head (docs/hf.md, "Long
            contexts"): the layers are computed a block of query rows at a time and come back
            in ``sparse``, never holding a layer's [E, H] weights.
        threshold: keep only weights >= τ (τ in [0, 1]; with ``top_k``: the top k of those).
        heads: extract these heads only.  layers: extract these layers only (0 = bottom).
        renormalize: rescale the kept weights to sum to 1 per query and head (default False:
            the model's own weights). Any of these five options returns ``sparse``.
        inputs: the model's keyword inputs, when ``text`` is not given.

    Returns:
        ``ModelGraphs`` (tokens, lengths, attentions [one per self-attention layer], output),
        or with any of the sparse options, ``sparse`` [one per selected layer] instead.

    Shapes:
        input_ids [B, L] (padded) -> per layer: edge_index [2, E], scores / weights [E, H] and
        out [N, C] over the N = Σ lengths real tokens; sparse: K <= N·k·H rows per layer.

    Raises:
        ValueError: the model is not converted, ``text`` without a tokenizer, or neither text
            nor inputs; a bad sparse option (k <= 0, τ outside [0, 1], a head or layer that
            does not exist).
    """
    _settings(model)
    capture = None
    options = (top_k, threshold, heads, layers)
    if renormalize or any(option is not None for option in options):
        capture = SparseCapture(
            top_k=top_k, threshold=threshold, heads=heads, layers=layers, renormalize=renormalize
        )
    if text is not None:
        if tokenizer is None:
            raise ValueError("attention_graphs(text=...) needs tokenizer=, to split the text")
        sentences = [text] if isinstance(text, str) else list(text)
        if not sentences or not all(isinstance(s, str) for s in sentences):
            raise ValueError(f"text must be a str or a non-empty list of str, got {text!r}")
        enc, pieces = _encode(tokenizer, sentences)
        inputs = {**enc, **inputs}
    elif not inputs:
        raise ValueError("give text= (with tokenizer=) or the model's inputs as keywords")
    else:
        pieces = None
    dev = next(model.parameters()).device
    inputs = {k: v.to(dev) if isinstance(v, Tensor) else v for k, v in inputs.items()}
    if graph_fn is not None:
        inputs["graph_fn"] = graph_fn
    var = recording()
    kept: list[tuple[nn.Module, Attention, Tensor | None]] = []
    token = var.set(kept if capture is None else capture)
    try:
        output = model(**inputs)
    finally:
        var.reset(token)
    attentions = [compact(att, valid) for _, att, valid in kept]
    if capture is not None:
        sparse = capture.finish()
        if capture.lengths is None:
            raise ValueError(f"{type(model).__name__} ran no self-attention layer")
        lengths = capture.lengths
    elif not attentions:
        raise ValueError(f"{type(model).__name__} ran no self-attention layer")
    else:
        g = attentions[0].graph
        assert g is not None
        lengths, sparse = list(g.lengths or (g.num_dst,)), []
    if pieces is not None:
        tokens = [t for p in pieces for t in p]
    else:
        tokens = _default_tokens(model, inputs, lengths)
    return ModelGraphs(tokens, lengths, attentions, output, sparse)
