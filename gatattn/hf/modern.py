"""What modern Hugging Face attention calls add to α_ij = s·<q_i, k_j>, as graph attention.

transformers 5 passes these to the attention function (``graph_attention``) besides q, k, v
and the mask; each is a neighbourhood N(i), a term of w(i, j) or a core option of gatattn
(docs/hf.md, "Modern families"), so this module defines no score of its own:

==================================  ========================================================
the call                            as graph attention
==================================  ========================================================
key/value with H_kv < H heads       head h reads key/value head h // (H / H_kv): the
(grouped-query, multi-query)        Problem carries H_kv heads (SDPA's ``enable_gqa``)
``sliding_window=W``                N(i) = ``window_graph(window=W - 1)`` (causal for
(Mistral, Gemma 2/3, ModernBERT)    decoders; both sides for ModernBERT) ∩ the model's mask
``softcap=c`` (Gemma 2)             α_ij = c · tanh(s <q_i, k_j> / c): ``scores.Softcap``
a float mask with a bias            N(i) = its finite entries, b_ij = its value on the edge:
(Falcon's ALiBi, [B, H, L_q, L_k])  α_ij = s <q_i, k_j> + b_ij (``scores.AttnMaskBias``)
``position_bias`` (T5)              b_ij = position_bias[b, h, i, j] on every edge
``s_aux`` (gpt-oss's sinks [H])     one more key per query with logit s_h and value 0
                                    (``Problem.sinks``, as ``GraphAttention(sinks=True)``)
==================================  ========================================================

A dense bias [B | 1, H | 1, L_q, L_k] is read on the graph's edges only (``edge_bias``,
O(E·H)) and carried by ``scores.AttnMaskBias``, which every backend that takes biases runs
(the dense backend scatters it into SDPA's additive mask).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..graph import TokenGraph
from ..patterns import window_graph
from ..scores import AttnMaskBias, ScaledDotScale, ScoreFunction, Softcap

__all__ = [
    "CallOptions",
    "call_options",
    "check_kv_heads",
    "edge_bias",
    "note_output_attentions",
    "score_of",
    "split_mask",
    "window_fn",
]


class _Unsupported(Exception):
    """Raised here and re-raised as ``UnsupportedModelError`` by the caller (no import cycle)."""


def check_kv_heads(kv: int, heads: int, name: str) -> None:
    """Grouped-query attention needs H to be a multiple of H_kv.

    Raises:
        _Unsupported: it is not.
    """
    if kv == 0 or heads % kv:
        raise _Unsupported(f"{name} has {kv} key/value heads for {heads} query heads")


def split_mask(mask: Tensor, name: str, B: int, Lq: int, Lk: int) -> tuple[Tensor, Tensor | None]:
    """transformers' 4-D mask -> (allowed [B, L_q, L_k] bool, bias or None).

    Boolean masks (True = may attend, SDPA's convention) and transformers' eager float masks
    (0 = attend, the dtype's minimum or −∞ = masked) are graphs without a bias. A float mask
    with other finite values (Falcon adds its ALiBi bias to the mask) is a graph, its finite
    entries, plus the bias on those edges. Several heads must share one graph.

    Shapes:
        mask [B | 1, 1 | H, L_q | 1, L_k] -> allowed [B, L_q, L_k], bias [B | 1, 1 | H, L_q, L_k].

    Raises:
        _Unsupported: not 4-D, an integer dtype, or a graph that differs between heads.
    """
    if mask.dim() != 4:
        raise _Unsupported(
            f"{name}: gatattn needs an attention mask [B, 1, L_q, L_k], got shape "
            f"{list(mask.shape)}"
        )
    bias: Tensor | None = None
    if mask.dtype != torch.bool:
        if not mask.is_floating_point():
            raise _Unsupported(f"{name}: attention mask of dtype {mask.dtype}")
        keep = mask > torch.finfo(mask.dtype).min / 2  # finite entries: the edges
        if not bool((mask[keep] == 0).all()):
            bias = mask.expand(mask.size(0), mask.size(1), Lq, Lk)
        mask = keep
    if mask.size(1) != 1:
        if not bool((mask == mask[:, :1]).all()):
            raise _Unsupported(
                f"{name}: a mask with a different graph per head (shape {list(mask.shape)}); "
                "gatattn needs one graph shared by the heads"
            )
        mask = mask[:, :1]
    return mask[:, 0].expand(B, Lq, Lk), bias


def edge_bias(bias: Tensor, graph: TokenGraph, Lq: int, Lk: int) -> Tensor:
    """A dense bias read on the edges of a B-sequence graph over B·L_q targets, B·L_k sources.

    .. math:: b_{ij} = \\mathrm{bias}[b, h, i, j] \\quad (j \\to i \\text{ an edge of sequence } b)

    Shapes:
        bias [B | 1, H | 1, L_q, L_k], graph.edge_index [2, E] -> [E, H | 1].
    """
    src, dst = graph.edge_index  # [E], [E]
    b = dst // Lq if bias.size(0) > 1 else torch.zeros_like(dst)  # [E]
    return bias.permute(0, 2, 3, 1)[b, dst % Lq, src % Lk]  # [E, H | 1]


def window_fn(sliding_window: int, causal: bool) -> Callable[[list[int]], TokenGraph]:
    """transformers' ``sliding_window=W`` as a graph builder on the real tokens.

    .. math:: N(i) = \\{ j : 0 \\le p_i - p_j \\le W - 1 \\} \\text{ (causal)}, \\quad
        \\{ j : |p_i - p_j| \\le W - 1 \\} \\text{ (ModernBERT)}

    Mistral's mask keeps kv > q − W; ModernBERT passes W = its half window + 1.
    """

    def build(lengths: list[int]) -> TokenGraph:
        return window_graph(window=sliding_window - 1, causal=causal, lengths=lengths)

    return build


#: The attribute where ``note_output_attentions`` keeps the module's ``output_attentions``.
WANTS_WEIGHTS = "_gatattn_output_attentions"

#: The attribute where a base model that drops its ``**kwargs`` (BLOOM, Falcon) notes the
#: ``graph_fn`` of the current call for its attention modules (``families.note_graph_fn``).
CALL_GRAPH_FN = "_gatattn_call_graph_fn"


def note_output_attentions(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """A forward pre-hook for attention modules that take ``output_attentions`` themselves and
    do not pass it on to the attention function (Falcon, BLOOM): it is noted on the module,
    where ``graph_attention`` reads it."""
    module.__dict__[WANTS_WEIGHTS] = bool(kwargs.get("output_attentions", False))


@dataclass(frozen=True)
class CallOptions:
    """What one attention call asks for besides s·<q_i, k_j> on the mask's graph.

    Attributes:
        cap: Gemma 2's softcap c, or None.  window: the sliding window W, or None.
        position_bias: T5's (and BLOOM's ALiBi) bias [B | 1, H | 1, L_q, L_k], or None.
        sinks: gpt-oss's sink logits s [H], or None.
    """

    cap: float | None = None
    window: int | None = None
    position_bias: Tensor | None = None
    sinks: Tensor | None = None


#: The keyword arguments ``call_options`` reads.
OPTIONS = frozenset({"sliding_window", "softcap", "s_aux", "sinks", "position_bias"})
_NONE = CallOptions()


def call_options(name: str, heads: int, kwargs: dict[str, Any]) -> CallOptions:
    """The options of one attention call, from its keyword arguments.

    Raises:
        _Unsupported: a bad window, cap or sink logits (the message names the module).
    """
    if OPTIONS.isdisjoint(kwargs):  # most calls (Llama, BERT...): nothing to read
        return _NONE
    window = kwargs.get("sliding_window")
    if window is not None and (not isinstance(window, int) or window < 1):
        raise _Unsupported(f"{name} passes sliding_window={window!r}; expected an int >= 1")
    cap = kwargs.get("softcap")
    if cap is not None and not (isinstance(cap, int | float) and math.isfinite(cap) and cap > 0):
        raise _Unsupported(f"{name} passes softcap={cap!r}; expected a number > 0")
    sinks = kwargs.get("s_aux")
    if sinks is None:
        sinks = kwargs.get("sinks")
    if sinks is not None and not (isinstance(sinks, Tensor) and tuple(sinks.shape) == (heads,)):
        shape = list(sinks.shape) if isinstance(sinks, Tensor) else type(sinks).__name__
        raise _Unsupported(
            f"{name} passes attention sinks of shape {shape}; expected one logit per query "
            f"head, [{heads}]"
        )
    cap = None if cap is None else float(cap)
    return CallOptions(cap, window, kwargs.get("position_bias"), sinks)


#: (s, c, biased) -> the score: scores hold no parameters, so one object serves every call.
_SCORES: dict[tuple[float, float | None, bool], ScoreFunction] = {}


def score_of(scale: float, cap: float | None, biased: bool) -> ScoreFunction:
    """w(i, j) of a call: ``ScaledDotScale(s)``, capped by ``Softcap`` (Gemma 2), plus
    ``AttnMaskBias`` when the call carries a bias.

    .. math:: \\alpha_{ij} = c \\tanh(s \\langle q_i, k_j \\rangle / c) + b_{ij}

    The scores hold no parameters, so one object per (s, c, bias) serves every layer and call
    (and what dispatch keeps per score object stays valid); under torch.compile it is built
    in the traced code instead (no global cache to guard on).
    """
    key = (scale, cap, biased)
    found = None if torch.compiler.is_compiling() else _SCORES.get(key)
    if found is not None:
        return found
    score: ScoreFunction = ScaledDotScale(scale)
    score.name = f"scaled_dot(s={scale:.4g})"
    if cap is not None:
        score = Softcap(score, cap)
    if biased:
        score = score + AttnMaskBias()
    if not torch.compiler.is_compiling() and len(_SCORES) < 256:
        _SCORES[key] = score
    return score
