"""What modern Hugging Face attention calls add to α_ij = s·<q_i, k_j>, as graph attention.

transformers 5 passes these to the attention function (``graph_attention``) besides q, k, v
and the mask; each is a neighbourhood N(i) or a term of w(i, j) (docs/hf.md, "Modern families"):

==================================  ========================================================
the call                            as graph attention
==================================  ========================================================
key/value with H_kv < H heads       head h reads key/value head h // (H / H_kv): expanded
(grouped-query, multi-query)        once per node, [N, H_kv, D] -> [N, H, D] (never per edge)
``sliding_window=W``                N(i) = ``window_graph(window=W - 1)`` (causal for
(Mistral, Gemma 2/3, ModernBERT)    decoders; both sides for ModernBERT) ∩ the model's mask
``softcap=c`` (Gemma 2)             α_ij = c · tanh(s <q_i, k_j> / c)
a float mask with a bias            N(i) = its finite entries, b_ij = its value on the edge:
(Falcon's ALiBi, [B, H, L_q, L_k])  α_ij = s <q_i, k_j> + b_ij
``position_bias`` (T5)              b_ij = position_bias[b, h, i, j] on every edge
==================================  ========================================================

A dense bias [B | 1, H | 1, L_q, L_k] is read on the graph's edges only (``edge_bias``,
O(E·H)) and carried as a per-edge ``ScoreBias``, which every backend that takes biases runs
(the dense backend scatters it into SDPA's additive mask).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..graph import TokenGraph
from ..kernels import edge_dot
from ..patterns import window_graph
from ..scores import DenseContext, Edges, ScoreBias, ScoreFunction

__all__ = [
    "EdgeBias",
    "SoftcapScore",
    "check_kv_heads",
    "edge_bias",
    "expand_kv",
    "note_output_attentions",
    "split_mask",
    "window_fn",
]

#: The name of the per-edge bias among a Problem's edge inputs.
BIAS_INPUT = "hf_bias"


class _Unsupported(Exception):
    """Raised here and re-raised as ``UnsupportedModelError`` by the caller (no import cycle)."""


def check_kv_heads(kv: int, heads: int, name: str) -> None:
    """Grouped-query attention needs H to be a multiple of H_kv.

    Raises:
        _Unsupported: it is not.
    """
    if kv == 0 or heads % kv:
        raise _Unsupported(f"{name} has {kv} key/value heads for {heads} query heads")


def expand_kv(t: Tensor, heads: int) -> Tensor:
    """Grouped-query attention: query head h reads key/value head h // (H / H_kv), as
    transformers' ``repeat_kv``. One copy per node (O(N·H·D)), never per edge; it is also
    the copy that lays the heads out as gatattn's nodes.

    Shapes:
        t [B, H_kv, L, D] -> [B·L, H, D].
    """
    B, kv, L, D = t.shape
    nodes = t.transpose(1, 2)  # [B, L, H_kv, D]
    if kv != heads:
        nodes = nodes.unsqueeze(3).expand(B, L, kv, heads // kv, D)  # [B, L, H_kv, g, D]
    return nodes.reshape(B * L, heads, D)  # [B·L, H, D]


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


class EdgeBias(ScoreBias):
    """A bias given per edge: the model's own (Falcon's ALiBi mask, T5's position bias).

    .. math:: b(i, j) = \\mathrm{edge\\_attr}[\\text{"hf\\_bias"}]_{(j \\to i)}

    It reads the edge input ``"hf_bias"`` [E, H | 1]; the dense backend scatters it into SDPA's
    additive mask, the edge backend adds it to α.
    """

    name = "hf_bias"

    def forward(self, edges: Edges) -> Tensor:
        out = edges.input(BIAS_INPUT, "EdgeBias")
        if out is None:
            raise ValueError("EdgeBias needs the per-edge bias edge_attr['hf_bias'] [E, H]")
        return out  # [e, H | 1]

    def dense(self, ctx: DenseContext) -> Tensor:
        raise NotImplementedError("EdgeBias is given per edge; it has no dense form of its own")


class SoftcapScore(ScoreFunction):
    """Gemma 2's logit soft-capping (Gemma Team 2024, Sec. 2) of the scaled dot product.

    .. math:: \\alpha_{ij} = c \\, \\tanh(s \\langle q_i, k_j \\rangle / c)

    It declares no ``sdpa_scale`` (it is not s·<q_i, k_j>) and no ``has_dense``: its ``dense``
    serves the written-out reference, and no tiled backend is tested on it, so it runs where any
    score runs (the literal formula on each edge; docs/scores.md, "What a score declares").

    Args:
        scale: s.  cap: c > 0.
    """

    def __init__(self, scale: float, cap: float) -> None:
        super().__init__()
        self.scale, self.cap = float(scale), float(cap)
        self.name = f"softcap(s={self.scale:.4g}, c={self.cap:.4g})"

    def forward(self, q_i: Tensor, k_j: Tensor, edges: Edges) -> Tensor:
        return torch.tanh((q_i * k_j).sum(-1) * self.scale / self.cap) * self.cap  # [e, H]

    def edge_scores(self, q: Tensor, k: Tensor, edges: Edges) -> Tensor:
        dot = edge_dot(q, k, edges.src, edges.dst)  # [E, H]
        return torch.tanh(dot * self.scale / self.cap) * self.cap  # [E, H]

    def dense(self, q: Tensor, k: Tensor, ctx: DenseContext) -> Tensor:
        return torch.tanh(q @ k.transpose(-1, -2) * self.scale / self.cap) * self.cap


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


def call_options(
    name: str, scaling: float, kwargs: dict[str, Any]
) -> tuple[ScoreFunction | None, int | None, Tensor | None]:
    """(a score other than s·<q_i, k_j> or None, sliding window W or None, T5's position bias
    or None) from the keyword arguments of one attention call.

    Raises:
        _Unsupported: attention sinks (``s_aux``, ``sinks``), or a bad window / cap.
    """
    bad = [k for k in ("s_aux", "sinks") if kwargs.get(k) is not None]
    if bad:
        raise _Unsupported(
            f"{name} passes {bad} (attention sinks), which gatattn does not reproduce"
        )
    window = kwargs.get("sliding_window")
    if window is not None and (not isinstance(window, int) or window < 1):
        raise _Unsupported(f"{name} passes sliding_window={window!r}; expected an int >= 1")
    cap = kwargs.get("softcap")
    score = None
    if cap is not None:
        if not (isinstance(cap, int | float) and math.isfinite(cap) and cap > 0):
            raise _Unsupported(f"{name} passes softcap={cap!r}; expected a number > 0")
        score = SoftcapScore(scaling, cap)
    return score, window, kwargs.get("position_bias")


def bias_score(base: ScoreFunction, has_bias: bool) -> ScoreFunction:
    """``base + EdgeBias()`` when the call carries a bias, else ``base``."""
    return base + EdgeBias() if has_bias else base
