"""The attention function that a converted Hugging Face model calls in place of its own.

``transformers`` 5 separates each attention module (projections, rotary or cached keys, output
projection: the module's own code and weights) from the attention *function* it calls through
``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``::

    attn_output [B, L_q, H, D], attn_weights [B, H, L_q, L_k] | None
        = fn(module, query [B, H, L_q, D], key [B, H, L_k, D], value [B, H, L_k, D],
             attention_mask, scaling=s, dropout=p, **kwargs)

``graph_attention`` is that function for gatattn: the B sequences become B·L nodes, the mask
becomes a block-diagonal TokenGraph G (``mask_graph``), and ``backends.attend`` computes, per
head (docs/math.md, eqs. 1-3),

    α_ij = s · <q_i, k_j>,   Attn_ij = softmax_{j ∈ N(i)} α_ij,   out_i = Σ_{j ∈ N(i)} Attn_ij v_j

which is ``eager_attention_forward`` of transformers on the complete, causal or padded graph.
"""

from __future__ import annotations

import contextvars
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..backends import Problem, attend
from ..graph import TokenGraph
from ..kernels import edge_dot
from ..patterns import bipartite_graph, causal_graph, complete_graph, from_mask
from ..result import Attention, dense_weights
from ..scores import DenseContext, Edges, ScoreFunction

__all__ = [
    "IMPLEMENTATION",
    "SETTINGS",
    "GraphSettings",
    "ScaledScore",
    "UnsupportedModelError",
    "graph_attention",
    "is_cross_attention",
    "mask_graph",
    "recording",
    "register",
]

#: The name under which gatattn registers itself in transformers' attention interfaces.
IMPLEMENTATION = "gatattn"
#: The attribute of a converted attention module that holds its ``GraphSettings``.
SETTINGS = "gatattn"

#: ``graph_fn(lengths) -> TokenGraph`` over sum(lengths) tokens (as ``pretrained.GraphFn``).
GraphFn = Callable[[list[int]], TokenGraph]

#: The per-forward recorder of ``attention_graphs``: (module, Attention, key validity) per call.
_RECORDER: contextvars.ContextVar[list[tuple[nn.Module, Attention, Tensor | None]] | None] = (
    contextvars.ContextVar("gatattn_hf_recorder", default=None)
)

#: Keyword arguments of the attention interface that change the formula: gatattn refuses them.
_UNSUPPORTED_KWARGS = ("softcap", "sliding_window", "s_aux", "position_bias", "sinks")


class UnsupportedModelError(TypeError, ValueError, NotImplementedError):
    """A model, or one of its attention modules, that gatattn cannot run as graph attention.

    The message names the module class (e.g. ``T5Attention``). It is a TypeError (the wrong kind
    of model), a ValueError (a bad argument) and a NotImplementedError (not supported yet).
    """


@dataclass(eq=False)
class GraphSettings:
    """What ``convert`` attaches to every converted attention module (shared by the model).

    Attributes:
        backend: the gatattn backend (``"auto"`` lets dispatch choose).
        graph_fn: the default graph swap (None: the model's own mask graph).
        family: the model family the module belongs to (``"bert"``, ``"gpt2"``...).
    """

    backend: str = "auto"
    graph_fn: GraphFn | None = None
    family: str = ""
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles (``copy.deepcopy``, ``torch.save(model)``) start with no cache:
        it holds a weak reference, which cannot be pickled."""
        return {**self.__dict__, "_cache": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """An unpickled model (``torch.load`` in a new process) finds ``"gatattn"`` registered."""
        self.__dict__.update(state)
        register()

    def cached(self, key: tuple[Any, ...], mask: Tensor | None, build: Callable[[], Any]) -> Any:
        """One-entry cache: every layer of one forward gets the same mask object, so the graph
        (and its derived dense-backend data) is built once per forward, not once per layer."""
        c = self._cache
        ref = c.get("mask")
        same_mask = (mask is None and ref is None) or (
            mask is not None and ref is not None and ref() is mask
        )
        key = (*key, None if mask is None else mask._version)  # an in-place edit: rebuild
        if same_mask and c.get("key") == key:
            return c["value"]
        value = build()
        c.update(key=key, mask=None if mask is None else weakref.ref(mask), value=value)
        return value


class ScaledScore(ScoreFunction):
    """α_ij = s · <q_i, k_j> with the module's own scale s (``scaling`` of transformers).

    .. math:: \\alpha_{ij} = s \\, \\langle q_i, k_j \\rangle

    s is 1/√D for BERT-like models, and differs for GPT-2 with ``scale_attn_weights=False``
    (s = 1) or ``scale_attn_by_inverse_layer_idx`` (s = 1 / (√D (l + 1))). Runs on every
    backend that runs scaled_dot (SDPA takes ``scale=s``).

    Args:
        scale: s.
    """

    backends = frozenset({"edge", "dense", "block", "flex"})

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)
        self.name = f"scaled_dot(s={self.scale:.4g})"

    def sdpa_scale(self, head_dim: int) -> float | None:
        return self.scale

    def forward(self, q_i: Tensor, k_j: Tensor, edges: Edges) -> Tensor:
        return (q_i * k_j).sum(-1) * self.scale  # [e, H]

    def edge_scores(self, q: Tensor, k: Tensor, edges: Edges) -> Tensor:
        return edge_dot(q, k, edges.src, edges.dst) * self.scale  # [E, H]

    def dense(self, q: Tensor, k: Tensor, ctx: DenseContext) -> Tensor:
        return q @ k.transpose(-1, -2) * self.scale  # [..., H, L_q, L_k]


def _bool_mask(mask: Tensor, module: nn.Module, B: int, Lq: int, Lk: int) -> Tensor:
    """transformers' 4-D mask -> bool [B, L_q, L_k] (True = may attend, SDPA's convention)."""
    name = type(module).__name__
    if mask.dim() != 4 or mask.size(1) != 1:
        raise UnsupportedModelError(
            f"{name}: gatattn needs an attention mask [B, 1, L_q, L_k] shared by the heads, "
            f"got shape {list(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        if not mask.is_floating_point():
            raise UnsupportedModelError(f"{name}: attention mask of dtype {mask.dtype}")
        # transformers' eager masks are 0 (attend) or the dtype's minimum / -inf (masked out);
        # any other value is a bias on the scores, which this adapter does not carry over
        keep = mask == 0
        if not bool((keep | (mask <= torch.finfo(mask.dtype).min / 2)).all()):
            raise UnsupportedModelError(
                f"{name}: an additive float attention mask with values other than 0 and -inf "
                "(a score bias) is not supported; pass a boolean or 0/-inf mask"
            )
        mask = keep
    return mask[:, 0].expand(B, Lq, Lk)


def _swap_graph(
    graph_fn: GraphFn, valid: Tensor, allowed: Tensor | None, causal: bool
) -> TokenGraph:
    """``graph_fn(lengths)`` on the unpadded tokens, placed into the padded layout [B, L] and
    intersected with the model's own mask (padding, causality): a swap never adds an edge that
    the model forbids.

    Shapes:
        valid [B, L] bool (real tokens) -> a graph over B·L nodes.
    """
    B, L = valid.shape
    lengths = [int(n) for n in valid.sum(1).tolist()]
    g = graph_fn(lengths)
    n = sum(lengths)
    if not isinstance(g, TokenGraph) or (g.num_src, g.num_dst) != (n, n):
        raise ValueError(
            f"graph_fn must return a TokenGraph on {n} nodes (lengths={lengths}), got {g!r}"
        )
    full = bool(valid.all())
    if full and allowed is None:
        g = g.to(valid.device)
        if g.lengths is None and B > 1:  # block-diagonal by construction: name the sequences
            g = TokenGraph(g.edge_index, n, n, lengths=lengths, validate=False)
        return g & causal_graph(lengths=lengths, device=valid.device) if causal else g
    pos = valid.flatten().nonzero().flatten()  # [n] padded index of each real token
    src, dst = pos[g.edge_index[0].to(pos.device)], pos[g.edge_index[1].to(pos.device)]  # [E]
    if allowed is not None:
        keep = allowed[dst // L, dst % L, src % L]  # [E]
    else:
        keep = (src // L == dst // L) & ((src % L <= dst % L) | (not causal))  # [E]
    ei = torch.stack([src[keep], dst[keep]])  # [2, E']
    return TokenGraph(ei, B * L, B * L, lengths=[L] * B, validate=False)


def mask_graph(
    module: nn.Module,
    mask: Tensor | None,
    shape: tuple[int, int, int],
    causal: bool,
    graph_fn: GraphFn | None,
    device: torch.device,
) -> tuple[TokenGraph, Tensor | None]:
    """The graph of one attention call, and the key validity of its tokens.

    Without a mask: the complete graph of each sequence, the causal graph (``causal``, L_q > 1),
    or the complete bipartite graph (L_q != L_k, cross-attention or a cached decoding step).
    With a mask [B, 1, L_q, L_k]: N(i) = { j : mask[b, i, j] } in each sequence b, as
    ``ga.from_mask`` (the dense backend runs it as one SDPA call with that mask). With
    ``graph_fn`` (the caller passes it for self-attention only): the swapped graph ∩ the
    model's mask.

    Returns:
        (graph over B·L_q targets and B·L_k sources, valid [B, L_k] bool or None = all real).
    """
    B, Lq, Lk = shape
    allowed = None if mask is None else _bool_mask(mask, module, B, Lq, Lk)  # [B, L_q, L_k]
    valid = None if allowed is None else allowed.any(1)  # [B, L_k] keys someone may attend
    if graph_fn is not None:
        keys = valid if valid is not None else torch.ones(B, Lk, dtype=torch.bool, device=device)
        return _swap_graph(graph_fn, keys, allowed, causal), valid
    if allowed is not None:
        return from_mask(allowed), valid  # tag 'masked': one SDPA call with this mask
    if Lq != Lk:
        return bipartite_graph([Lq] * B, [Lk] * B, device=device), None
    if causal:
        return causal_graph(lengths=[Lq] * B, device=device), None
    return complete_graph(lengths=[Lq] * B, device=device), None


def is_cross_attention(module: nn.Module) -> bool:
    """True for a cross-attention module (BertCrossAttention, GPT-2's ``crossattention``):
    its queries and keys are different token sets, so no graph swap and no recording."""
    return bool(getattr(module, "is_cross_attention", False)) or (
        "CrossAttention" in type(module).__name__
    )


def _wants_weights(module: nn.Module, kwargs: dict[str, Any]) -> bool:
    """Whether the caller asked for the attention weights: ``output_attentions=True`` in the
    call or the config, or transformers' output collector records this module's output (GPT-2
    takes ``output_attentions`` itself and does not pass it on)."""
    if kwargs.get("output_attentions") or getattr(module.config, "output_attentions", False):
        return True
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:  # another transformers layout: always return the weights
        return True
    wanted = _active_collector.get()
    return bool(wanted) and ("attentions" in wanted or "cross_attentions" in wanted)


def graph_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """transformers' attention function, computed as graph attention (docs/hf.md).

    .. math::
        \\mathrm{out}_i = \\sum_{j \\in N(i)} \\mathrm{softmax}_{j \\in N(i)}
        (s \\langle q_i, k_j \\rangle) \\, v_j

    Args:
        module: the calling attention module (converted by ``gatattn.convert``).
        query: q [B, H, L_q, D].  key: k [B, H, L_k, D].  value: v [B, H, L_k, D].
        attention_mask: None, or a mask [B, 1, L_q, L_k] (bool True = attend, or 0 / -inf).
        scaling: s (default 1/√D).  dropout: dropout on Attn (the module passes 0 in eval).
        kwargs: transformers' extra arguments; ``graph_fn`` swaps the graph for this call,
            ``is_causal`` overrides the module's flag (as in transformers' SDPA function).

    Returns:
        out [B, L_q, H, D], and Attn [B, H, L_q, L_k] (0 off the graph) when asked for, else None.

    Raises:
        UnsupportedModelError: the module was not converted, or the call asks for a feature
            that gatattn does not reproduce (soft-capping, sliding windows, sinks, biases).
    """
    settings = getattr(module, SETTINGS, None)
    name = type(module).__name__
    if not isinstance(settings, GraphSettings):
        raise UnsupportedModelError(
            f"{name} was not converted by gatattn.convert, but its config selects the "
            f"'{IMPLEMENTATION}' attention: convert the whole model with gatattn.convert(model)"
        )
    bad = [k for k in _UNSUPPORTED_KWARGS if kwargs.get(k) is not None]
    if bad:
        raise UnsupportedModelError(f"{name} passes {bad}, which gatattn does not reproduce")
    B, H, Lq, D = query.shape
    if key.size(1) != H:
        raise UnsupportedModelError(
            f"{name} has {key.size(1)} key/value heads for {H} query heads (grouped-query "
            "attention), which gatattn does not convert"
        )
    causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
    causal = causal and Lq > 1 and attention_mask is None  # transformers' SDPA rule
    if causal and key.size(2) > Lq:  # an empty static cache: SDPA crops the keys the same way
        key, value = key[:, :, :Lq], value[:, :, :Lq]
    Lk = key.size(2)
    cross = is_cross_attention(module)
    graph_fn = None if cross or Lq != Lk else kwargs.get("graph_fn", settings.graph_fn)
    cache_key = (B, Lq, Lk, causal, graph_fn, query.device)
    graph, valid = settings.cached(
        cache_key,
        attention_mask,
        lambda: mask_graph(module, attention_mask, (B, Lq, Lk), causal, graph_fn, query.device),
    )
    q = query.transpose(1, 2).reshape(B * Lq, H, D)  # [N_t, H, D]
    k = key.transpose(1, 2).reshape(B * Lk, H, D)  # [N_s, H, D]
    v = value.transpose(1, 2).reshape(B * Lk, H, value.size(-1))  # [N_s, H, D]
    recorder = _RECORDER.get()
    need = recorder is not None or _wants_weights(module, kwargs)
    score = ScaledScore(1.0 / math.sqrt(D) if scaling is None else scaling)
    training = dropout > 0.0 and module.training
    p = Problem(q, k, v, graph, score, dropout=dropout, training=training, need_weights=need)
    res = attend(p, settings.backend)
    out = res.out.view(B, Lq, H, -1)  # [B, L_q, H, D]
    if not need:
        return out, None
    assert res.scores is not None and res.weights is not None
    if recorder is not None and not cross and Lq == Lk:
        flat = res.out.reshape(B * Lq, -1)  # [N_t, H·D], before the output projection
        recorder.append(
            (module, Attention(flat, graph.edge_index, res.scores, res.weights, graph), valid)
        )
    return out, dense_weights(res.weights, graph, B, Lq, Lk).to(value.dtype)


def register() -> None:
    """Register ``"gatattn"`` with transformers' attention and mask interfaces (idempotent).

    Raises:
        ImportError: transformers (>= 5, the attention-interface design) is not installed.
    """
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as err:
        raise ImportError(
            f"converting Hugging Face models needs transformers >= 5 ({err}): pip install gatattn[hf]"
        ) from err
    AttentionInterface.register(IMPLEMENTATION, graph_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


def recording() -> contextvars.ContextVar[list[tuple[nn.Module, Attention, Tensor | None]] | None]:
    """The context variable that ``attention_graphs`` sets to collect each layer's Attention."""
    return _RECORDER
