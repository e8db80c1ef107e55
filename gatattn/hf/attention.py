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

from ..backends import Problem, as_nodes, attend, expand_kv
from ..backends.edge import edge_scores_and_weights
from ..graph import TokenGraph
from ..patterns import bipartite_graph, causal_graph, complete_graph, from_mask
from ..result import Attention, dense_weights
from . import modern
from .configs import allow_output_attentions
from .swaps import GraphFn, swap_graph

__all__ = [
    "IMPLEMENTATION",
    "SETTINGS",
    "Capture",
    "GraphSettings",
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
#: Graphs kept per converted model (``GraphSettings.cached``): one per mask and layer kind of
#: the current forward (full and sliding layers, self- and cross-attention).
CACHED_GRAPHS = 4


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
    _cache: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles (``copy.deepcopy``, ``torch.save(model)``) start with no cache:
        it holds a weak reference, which cannot be pickled."""
        return {**self.__dict__, "_cache": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """An unpickled model (``torch.load`` in a new process) finds ``"gatattn"`` registered."""
        self.__dict__.update(state)
        register()

    def cached(self, key: tuple[Any, ...], mask: Tensor | None, build: Callable[[], Any]) -> Any:
        """A small cache of the last ``CACHED_GRAPHS`` graphs: every layer of one forward gets
        the same mask object, so the graph (and its derived dense-backend data and dispatch
        decision) is built once per forward, not once per layer, also when local and global
        layers alternate (two masks, two graphs). An entry is found only for the very mask
        object it was built from (held weakly: a reused id never matches), unchanged since."""
        if torch.compiler.is_compiling():  # traced once per compiled graph: nothing to reuse
            return build()
        c = self._cache
        full = (*key, None if mask is None else (id(mask), mask._version))  # in-place edit: new
        hit = c.get(full)
        if hit is not None and (mask is None or hit[0]() is mask):
            return hit[1]
        value = build()
        if len(c) >= CACHED_GRAPHS:
            del c[next(iter(c))]  # the oldest
        c[full] = (None if mask is None else weakref.ref(mask), value)
        return value


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
    takes ``output_attentions`` itself and does not pass it on). The cheap checks first: this
    runs on every call of every layer."""
    if kwargs.get("output_attentions") or module.__dict__.get(modern.WANTS_WEIGHTS):
        return True  # Falcon, BLOOM: noted by a pre-hook
    collector = _collector() if _COLLECTOR is None else _COLLECTOR
    if collector is False:  # another transformers layout: always return the weights
        return True
    # inside torch.compile, a collector that nothing in the trace set (BLOOM records its maps
    # itself) is read through ContextVar.get, which breaks a fullgraph trace: nothing collects
    unset = torch.compiler.is_compiling() and not getattr(collector, "compiling", True)
    wanted = None if unset else collector.get()
    if wanted and ("attentions" in wanted or "cross_attentions" in wanted):
        return True
    return bool(getattr(getattr(module, "config", None), "output_attentions", False))


def _collector() -> Any:
    """transformers' output collector (which outputs the running forward records; a context
    variable that torch.compile traces), or False in a transformers without it. Looked up once."""
    global _COLLECTOR
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:
        _COLLECTOR = False
    else:
        _COLLECTOR = _active_collector
    return _COLLECTOR


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
            ``sliding_window``, ``softcap``, ``position_bias`` (T5) and ``s_aux`` (gpt-oss's
            attention sinks) are read as in ``gatattn.hf.modern``, and key/value with fewer
            heads than the query are grouped.

    Returns:
        out [B, L_q, H, D], and Attn [B, H, L_q, L_k] (0 off the graph) when asked for, else None.

    Raises:
        UnsupportedModelError: the module was not converted, or the call asks for a feature
            that gatattn does not reproduce (a graph per head; sparse extraction with sinks).
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
    kv = key.size(1)
    try:
        opts = modern.call_options(name, H, kwargs)
        modern.check_kv_heads(kv, H, name)
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
    sliding = opts.window
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
    if opts.position_bias is not None:  # T5: a learned bias per head on every edge
        extra = modern.edge_bias(opts.position_bias, graph, Lq, Lk)  # [E, H | 1]
        bias = extra if bias is None else bias + extra
    # B sequences of L_q and L_k tokens each (no graph swap): q, k, v go to attend as they are,
    # [B, H | H_kv, L, D] (Problem's per-sequence layout, SDPA's own: no copy into nodes);
    # grouped heads stay grouped
    q, k, v = query, key, value
    if graph.sequence_lengths("dst") != (Lq,) * B or graph.sequence_lengths("src") != (Lk,) * B:
        q = query.transpose(1, 2).reshape(B * Lq, H, D)  # [N_t, H, D]
        k = key.transpose(1, 2).reshape(B * Lk, kv, D)  # [N_s, H_kv, D]
        v = value.transpose(1, 2).reshape(B * Lk, kv, -1)  # [N_s, H_kv, D]
    # ContextVar.get cannot be traced (torch.compile(fullgraph=True)); recording runs eagerly
    recorder = None if torch.compiler.is_compiling() else _RECORDER.get()
    score = modern.score_of(float(scale), opts.cap, bias is not None)
    training = dropout > 0.0 and module.training
    p = Problem(
        q, k, v, graph, score, edge_attr=bias, dropout=dropout, training=training,
        need_weights=recorder is not None and not isinstance(recorder, Capture),
        sinks=opts.sinks,
    )  # fmt: skip
    if isinstance(recorder, Capture):  # sparse extraction: q, k and the graph, no weights
        if not cross and Lq == Lk:
            if opts.sinks is not None:
                raise UnsupportedModelError(
                    f"{name} has attention sinks: sparse extraction (top_k, threshold, heads, "
                    "layers) does not reproduce them; call attention_graphs without those options"
                )
            recorder.capture(module, as_nodes(p), valid, kv)
        recorder = None
    attn: Tensor | None = None
    scores: Tensor | None
    weights: Tensor | None
    if _wants_weights(module, kwargs):
        # the returned Attn is the one the output is computed from (out = Attn v, as the eager
        # function does), so d(out)/d(Attn) reaches attentions[l].grad
        scores, weights = edge_scores_and_weights(expand_kv(as_nodes(p)))  # [E, H], [E, H]
        attn = dense_weights(weights, graph, B, Lq, Lk).to(value.dtype)  # [B, H, L_q, L_k]
        if training:
            attn = F.dropout(attn, dropout, True)  # returned after dropout, as eager does
        heads = value if kv == H else value.repeat_interleave(H // kv, dim=1)  # [B, H, L_k, D]
        out = (attn @ heads).transpose(1, 2)  # [B, L_q, H, D]
    else:
        res = attend(p, settings.backend)
        out = res.out.view(B, Lq, H, -1)  # [B, L_q, H, D]
        scores, weights = res.scores, res.weights
    if recorder is not None and not cross and Lq == Lk:
        assert scores is not None and weights is not None
        flat = out.reshape(B * Lq, -1)  # [N_t, H·D], before the output projection
        recorder.append((module, Attention(flat, graph.edge_index, scores, weights, graph), valid))
    return out, attn


#: transformers' output collector, once looked up (``_collector``): None before.
_COLLECTOR: Any = None


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
    _collector()
    AttentionInterface.register(IMPLEMENTATION, graph_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
    allow_output_attentions(IMPLEMENTATION)  # config.output_attentions = True (hf/configs.py)


def recording() -> contextvars.ContextVar[Recorder | None]:
    """The context variable that ``attention_graphs`` sets to collect each layer's Attention."""
    return _RECORDER
