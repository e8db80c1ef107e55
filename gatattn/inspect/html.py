"""An interactive attention view in one self-contained HTML file (inline CSS and JavaScript).

Like BertViz's head and model views, but drawn from gatattn's graphs: only the edges of each
layer's TokenGraph are drawn, so a sparse graph (a window, global tokens) shows as sparse.

* Head view: the tokens twice, queries i on the left and keys j on the right, one line per edge
  j → i with opacity Attn_ij / max Attn (eq. 2) or the min-max scaled α_ij (eq. 1); choose the
  layer and the head (or the mean over heads); hover a token to highlight its edges and read
  the values.
* Model view: a grid of all layers × heads, one thumbnail each; a click opens it in the head view.

The file loads nothing from the network and names no external address.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..result import Attention
from ._html_template import TEMPLATE
from .matrices import HeadSpec, check_head, merged_edges

__all__ = ["MAX_VALUES", "attention_html"]

#: ``attention_html`` refuses more edge × head × layer values than this (a file of ~100 MB).
MAX_VALUES = 10_000_000


#: Code points U+D800..U+DFFF: in a str they are lone surrogates, which UTF-8 cannot encode.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_size(total: int) -> None:
    if total > MAX_VALUES:
        raise ValueError(
            f"{total} values are too many for one HTML file (limit {MAX_VALUES}): pass fewer "
            "layers (e.g. attentions[-2:]) or fewer tokens"
        )


def _rounded(a: np.ndarray, digits: int) -> list[list[float | None]]:
    """[E, H] float64 -> H lists of E rounded values (None where not finite: JSON has no inf)."""
    out = np.round(a.T, digits).astype(object)  # [H, E]
    out[~np.isfinite(a.T)] = None
    return out.tolist()


def _num_values(a: object, n: int, batch: int) -> int:
    """Edges × heads one layer will hold (duplicates merged), from tensor ops only: no lists
    are built. 0 for input that the building pass refuses with its own message."""
    if isinstance(a, Attention):
        ei = a.edge_index
        edges = torch.unique(ei[1] * max(n, 1) + ei[0]).numel() if ei.numel() else 0
        return edges * a.weights.size(-1)
    if isinstance(a, Tensor) and a.dim() in (2, 3, 4):
        t = a.detach()
        if t.dim() == 4:
            if not 0 <= batch < t.size(0):
                return 0
            t = t[batch]
        if t.dim() == 2:
            t = t.unsqueeze(0)
        return int((t > 0).any(0).sum()) * t.size(0)  # [L, L] edges × H
    return 0


def _from_attention(att: Attention, n: int, layer: int) -> dict[str, Any]:
    g = att.graph
    num_dst, num_src = (g.num_dst, g.num_src) if g is not None else (n, n)
    if (num_dst, num_src) != (n, n):
        raise ValueError(
            f"layer {layer}: the attention is over {num_dst} queries and {num_src} keys, but "
            f"{n} tokens were given (self-attention graphs only, one token per node)"
        )
    keys, scores, weights, _ = merged_edges(att, n)  # [E'], [E', H], [E', H]; duplicates merged
    return {
        "src": (keys % n).tolist(),
        "dst": (keys // n).tolist(),
        "w": _rounded(weights, 5),
        "a": _rounded(scores, 4),
    }


def _from_dense(t: Tensor, n: int, layer: int, batch: int) -> dict[str, Any]:
    """transformers' attn_weights [B, H, L, L] (or [H, L, L], [L, L]): edges where Attn > 0."""
    if t.dim() == 4:
        if not 0 <= batch < t.size(0):
            raise ValueError(f"batch={batch} is out of range for a batch of {t.size(0)}")
        t = t[batch]
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.size(1) != t.size(2):
        raise ValueError(
            f"layer {layer}: a dense attention must be [B, H, L, L], [H, L, L] or [L, L], "
            f"got {list(t.shape)}"
        )
    if t.size(1) != n:
        raise ValueError(
            f"layer {layer}: the attention has {t.size(1)} tokens, got {n} tokens (give one per "
            "position, padding included, or use ga.hf.attention_graphs, which drops padding)"
        )
    w = t.detach().double().cpu()  # [H, L, L], row = query
    dst, src = (w > 0).any(0).nonzero(as_tuple=True)  # [E] the edges: Attn > 0 in some head
    return {
        "src": src.tolist(),
        "dst": dst.tolist(),
        "w": _rounded(w[:, dst, src].T.numpy(), 5),
        "a": None,
    }


def attention_html(
    attentions: Attention | Tensor | Sequence[Attention | Tensor],
    tokens: Sequence[Any],
    *,
    which: Literal["weight", "score"] = "weight",
    head: HeadSpec = "mean",
    layer: int = -1,
    view: Literal["head", "model"] = "head",
    batch: int = 0,
    title: str = "gatattn attention view",
    path: str | Path | None = None,
) -> str:
    """One self-contained HTML document (inline CSS and JavaScript) that shows attention graphs.

    .. math::
        \\text{line } j \\to i \\text{ drawn with opacity }
        \\mathrm{Attn}_{ij} / \\max \\mathrm{Attn}
        \\ \\text{ or } \\ (\\alpha_{ij} - \\min \\alpha) / (\\max \\alpha - \\min \\alpha)

    for every edge of each layer's graph (duplicate edges merged: weights add, scores add as
    log Σ exp), the max and min taken over the drawn edges. Heads: one head, or the mean over
    heads.

    Args:
        attentions: one ``ga.Attention`` per layer (``attention_graphs(...).attentions``,
            ``minilm(..., return_attention=True).attentions``), or transformers'
            ``output.attentions`` (a tuple of [B, H, L, L] tensors; edges where Attn > 0, and
            no α), or a single layer of either.
        tokens: one label per token (node).
        which: show ``"weight"`` (Attn, default) or ``"score"`` (α) first.
        head: the head shown first: ``"mean"`` (default) or an index.
        layer: the layer shown first (default -1, the last).
        view: ``"head"`` (default) or ``"model"`` (the layers × heads grid) first.
        batch: which sequence of a dense [B, H, L, L] input.
        title: the page title (lone surrogates, which UTF-8 cannot encode, show as U+FFFD).
        path: also write the document to this file (``.html``).

    Returns:
        the HTML document (a str).

    Shapes:
        per layer: edge_index [2, E], scores/weights [E, H] (or dense [B, H, N, N]), N tokens.

    Raises:
        TypeError: ``attentions`` holds something else, ``tokens`` is a str, or ``title`` is
            not a str.
        ValueError: no layers, layers with different head counts, a token count that does not
            match, a bad ``which``, ``head``, ``layer`` or ``view``, α asked for dense input,
            or more than ``MAX_VALUES`` values.
    """
    layers = [attentions] if isinstance(attentions, (Attention, Tensor)) else list(attentions)
    if not layers:
        raise ValueError("attentions is empty: pass one Attention (or tensor) per layer")
    if isinstance(tokens, str):
        raise TypeError(f"tokens must be a list of strings, got the string {tokens!r}")
    names = [str(t) for t in tokens]
    if which not in ("weight", "score"):
        raise ValueError(f"which must be 'weight' or 'score', got {which!r}")
    if view not in ("head", "model"):
        raise ValueError(f"view must be 'head' or 'model', got {view!r}")
    if not isinstance(title, str):
        raise TypeError(f"title must be a str, got {type(title).__name__}: {title!r}")
    # the size first: refusing a too large input must not cost building all of it
    has_scores = all(isinstance(a, Attention) for a in layers)
    total = sum(_num_values(a, len(names), batch) for a in layers) * (2 if has_scores else 1)
    _check_size(total)
    data = []
    for i, a in enumerate(layers):
        if isinstance(a, Attention):
            data.append(_from_attention(a, len(names), i))
        elif isinstance(a, Tensor):
            data.append(_from_dense(a, len(names), i, batch))
        else:
            raise TypeError(
                f"layer {i}: expected a gatattn.Attention or a tensor, got {type(a).__name__}"
            )
    heads = {len(d["w"]) for d in data}
    if len(heads) != 1:
        raise ValueError(f"the layers have different head counts: {sorted(heads)}")
    num_heads = heads.pop()
    check_head(head, num_heads, allow_all=False)
    if not -len(data) <= layer < len(data):
        raise ValueError(f"layer {layer} is out of range for {len(data)} layers")
    has_scores = all(d["a"] is not None for d in data)
    if which == "score" and not has_scores:
        raise ValueError("which='score' needs gatattn.Attention input; dense tensors hold no α")
    _check_size(sum(len(d["src"]) for d in data) * num_heads * (2 if has_scores else 1))
    payload = {
        "tokens": names,
        "heads": num_heads,
        "hasScores": has_scores,
        "layers": data,
        "initial": {
            "layer": layer % len(data),
            "head": -1 if head == "mean" else int(head),
            "which": which,
            "view": view,
        },
    }
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    # a JSON text inside <script>: no "</script", "<!--" or "&" may survive as such
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    # a lone surrogate cannot be written as UTF-8: it shows as U+FFFD, as a browser shows it
    safe_title = _LONE_SURROGATE.sub("\ufffd", title)
    fills = {"__TITLE__": html.escape(safe_title), "__DATA__": text}
    doc = re.sub("__TITLE__|__DATA__", lambda m: fills[m.group(0)], TEMPLATE)  # one pass
    if path is not None:
        Path(path).write_text(doc, encoding="utf-8")
    return doc
