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
import torch.nn.functional as F
from torch import Tensor, nn

from ..backends import Problem, attend
from ..backends.edge import edge_scores_and_weights
from ..graph import TokenGraph
from ..kernels import edge_dot
from ..patterns import bipartite_graph, causal_graph, complete_graph, from_mask
from ..result import Attention, dense_weights
from ..scores import DenseContext, Edges, ScoreFunction
from . import modern
from .configs import allow_output_attentions
from .swaps import GraphFn, swap_graph

__all__ = [
    "IMPLEMENTATION",
    "SETTINGS",
    "Capture",
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


class Capture:
    """A recorder that takes each self-attention call's ``Problem`` (q, k, graph, score) instead
    of its weights, so the call computes no per-edge weights (``gatattn.hf.extract``)."""

    def capture(self, module: nn.Module, p: Problem, valid: Tensor | None, kv_heads: int) -> None:
        """One self-attention call: ``valid`` [B, L] marks the real tokens (None: all), and
        ``kv_heads`` is H_kv, the key/value heads of the call (H without grouping)."""
        raise NotImplementedError


#: The per-forward recorder of ``attention_graphs``: (module, Attention, key validity) per call,
#: or a ``Capture``.
Recorder = list[tuple[nn.Module, Attention, Tensor | None]] | Capture
_RECORDER: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar(
    "gatattn_hf_recorder", default=None
)


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
        if torch.compiler.is_compiling():  # traced once per compiled graph: nothing to reuse
            return build()
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
    (s = 1) or ``scale_attn_by_inverse_layer_idx`` (s = 1 / (√D (l + 1))). It declares what
    scaled_dot declares (``sdpa_scale`` = s and a dense form), so it runs wherever scaled_dot
    runs (SDPA takes ``scale=s``).

    Args:
        scale: s.
    """

    has_dense = True

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


def mask_graph(
    module: nn.Module,
    mask: Tensor | None,
    shape: tuple[int, int, int],
    causal: bool,
    graph_fn: GraphFn | None,
    device: torch.device,
    window: GraphFn | None = None,
) -> tuple[TokenGraph, Tensor | None, Tensor | None]:
    """The graph of one attention call, the key validity of its tokens, and the bias that a
    float mask carries on its edges (Falcon's ALiBi; ``modern.split_mask``).

    Without a mask: the complete graph of each sequence, the causal graph (``causal``, L_q > 1),
    or the complete bipartite graph (L_q != L_k, cross-attention or a cached decoding step).
    With a mask [B, 1, L_q, L_k]: N(i) = { j : mask[b, i, j] } in each sequence b, as
    ``ga.from_mask`` (the dense backend runs it as one SDPA call with that mask). With
    ``graph_fn`` (the caller passes it for self-attention only): the swapped graph ∩ the
    model's mask. A sliding ``window`` (a builder, ``modern.window_fn``) is one more such graph
    on self-attention calls (L_q = L_k); on cached steps the model's mask carries it.

    Returns:
        (graph over B·L_q targets and B·L_k sources, valid [B, L_k] bool or None = all real,
        bias [E, H | 1] or None).

    Raises:
        UnsupportedModelError: a mask gatattn cannot read as one graph (``modern.split_mask``).
    """
    B, Lq, Lk = shape
    allowed, bias = None, None  # [B, L_q, L_k], [B | 1, H | 1, L_q, L_k]
    if mask is not None:
        try:
            allowed, bias = modern.split_mask(mask, type(module).__name__, B, Lq, Lk)
        except modern._Unsupported as err:
            raise UnsupportedModelError(str(err)) from None
    valid = None if allowed is None else allowed.any(1)  # [B, L_k] keys someone may attend
    if window is not None and Lq == Lk and graph_fn is None:
        graph_fn, window = window, None
    if graph_fn is not None:
        keys = valid if valid is not None else torch.ones(B, Lk, dtype=torch.bool, device=device)
        within = window if Lq == Lk else None  # on cached steps the model's mask carries it
        g = swap_graph(graph_fn, keys, allowed, causal, Lq, within)
    elif allowed is not None:
        g = from_mask(allowed)  # tag 'masked': one SDPA call with this mask
    elif Lq != Lk:
        g = bipartite_graph([Lq] * B, [Lk] * B, device=device)
    elif causal:
        g = causal_graph(lengths=[Lq] * B, device=device)
    else:
        g = complete_graph(lengths=[Lq] * B, device=device)
    return g, valid, None if bias is None else modern.edge_bias(bias, g, Lq, Lk)


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
    if kwargs.get("output_attentions") or getattr(
        getattr(module, "config", None), "output_attentions", False
    ):
        return True
    if module.__dict__.get(modern.WANTS_WEIGHTS):  # Falcon, BLOOM: noted by a pre-hook
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
            ``is_causal`` overrides the module's flag (as in transformers' SDPA function);
            ``sliding_window``, ``softcap`` and ``position_bias`` (T5) are read as in
            ``gatattn.hf.modern``, and key/value with fewer heads than the query are grouped.

    Returns:
        out [B, L_q, H, D], and Attn [B, H, L_q, L_k] (0 off the graph) when asked for, else None.

    Raises:
        UnsupportedModelError: the module was not converted, or the call asks for a feature
            that gatattn does not reproduce (attention sinks, a graph per head).
    """
    settings = getattr(module, SETTINGS, None)
    name = type(module).__name__
    if not isinstance(settings, GraphSettings):
        raise UnsupportedModelError(
            f"{name} was not converted by gatattn.convert, but its config selects the "
            f"'{IMPLEMENTATION}' attention: convert the whole model with gatattn.convert(model)"
        )
    B, H, Lq, D = query.shape
    scale = 1.0 / math.sqrt(D) if scaling is None else scaling
    try:
        special, sliding, position_bias = modern.call_options(name, scale, kwargs)
        modern.check_kv_heads(key.size(1), H, name)
    except modern._Unsupported as err:
        raise UnsupportedModelError(str(err)) from None
    module_causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
    causal = module_causal and Lq > 1 and attention_mask is None  # transformers' SDPA rule
    if causal and key.size(2) > Lq:  # an empty static cache: SDPA crops the keys the same way
        key, value = key[:, :, :Lq], value[:, :, :Lq]
    Lk = key.size(2)
    cross = is_cross_attention(module)
    noted = module.__dict__.get(modern.CALL_GRAPH_FN, settings.graph_fn)  # BLOOM, Falcon
    graph_fn = None if cross else kwargs.get("graph_fn", noted)
    window = None
    if sliding is not None and not cross:
        window = modern.window_fn(sliding, module_causal)
        causal = causal and Lq != Lk  # a causal window graph lies inside the causal graph
        if graph_fn is not None and Lq != Lk:
            raise UnsupportedModelError(
                f"{name}: a graph_fn on a cached decoding step of a sliding-window layer "
                f"(window {sliding}) is not supported: its cache may hold only the last keys, "
                "so its tokens cannot be numbered as in the uncached forward; generate with "
                "use_cache=False"
            )
    cache_key = (B, Lq, Lk, causal, graph_fn, sliding, query.device)
    graph, valid, bias = settings.cached(
        cache_key,
        attention_mask,
        lambda: mask_graph(
            module, attention_mask, (B, Lq, Lk), causal, graph_fn, query.device, window
        ),
    )
    if position_bias is not None:  # T5: a learned bias per head on every edge
        extra = modern.edge_bias(position_bias, graph, Lq, Lk)  # [E, H | 1]
        bias = extra if bias is None else bias + extra
    q = query.transpose(1, 2).reshape(B * Lq, H, D)  # [N_t, H, D]
    k = modern.expand_kv(key, H)  # [N_s, H, D], grouped-query heads expanded per node
    v = modern.expand_kv(value, H)  # [N_s, H, D]
    # ContextVar.get cannot be traced (torch.compile(fullgraph=True)); recording runs eagerly
    recorder = None if torch.compiler.is_compiling() else _RECORDER.get()
    score = modern.bias_score(special or ScaledScore(scale), bias is not None)
    if isinstance(recorder, Capture):  # sparse extraction: q, k and the graph, no weights
        if not cross and Lq == Lk:
            call = Problem(q=q, k=k, v=v, graph=graph, score=score, edge_attr=bias)
            recorder.capture(module, call, valid, key.size(1))
        recorder = None
    training = dropout > 0.0 and module.training
    p = Problem(
        q, k, v, graph, score, edge_attr=bias, dropout=dropout, training=training,
        need_weights=recorder is not None,
    )  # fmt: skip
    attn: Tensor | None = None
    scores: Tensor | None
    weights: Tensor | None
    if _wants_weights(module, kwargs):
        # the returned Attn is the one the output is computed from (out = Attn v, as the eager
        # function does), so d(out)/d(Attn) reaches attentions[l].grad
        scores, weights = edge_scores_and_weights(p)  # [E, H], [E, H]
        attn = dense_weights(weights, graph, B, Lq, Lk).to(value.dtype)  # [B, H, L_q, L_k]
        if training:
            attn = F.dropout(attn, dropout, True)  # returned after dropout, as eager does
        out = (attn @ v.view(B, Lk, H, -1).transpose(1, 2)).transpose(1, 2)  # [B, L_q, H, D]
    else:
        res = attend(p, settings.backend)
        out = res.out.view(B, Lq, H, -1)  # [B, L_q, H, D]
        scores, weights = res.scores, res.weights
    if recorder is not None and not cross and Lq == Lk:
        assert scores is not None and weights is not None
        flat = out.reshape(B * Lq, -1)  # [N_t, H·D], before the output projection
        recorder.append((module, Attention(flat, graph.edge_index, scores, weights, graph), valid))
    return out, attn


def register() -> None:
    """Register ``"gatattn"`` with transformers' attention and mask interfaces (idempotent),
    and let its configs set ``output_attentions = True`` (``configs.allow_output_attentions``).

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
    allow_output_attentions(IMPLEMENTATION)  # config.output_attentions = True (hf/configs.py)


def recording() -> contextvars.ContextVar[Recorder | None]:
    """The context variable that ``attention_graphs`` sets to collect each layer's Attention."""
    return _RECORDER
