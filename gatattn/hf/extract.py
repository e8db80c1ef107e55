"""Sparse attention graphs of a converted Hugging Face model, one layer at a time.

``attention_graphs(model, text, top_k=16)`` (and ``threshold=``, ``heads=``, ``layers=``) sets a
``SparseCapture`` as the recorder of ``graph_attention``: each self-attention call hands over its
queries, keys, graph and score (post-rotary, as the module computed them) and computes no
per-edge weights itself. For the selected layers, ``gatattn.backends.attention_rows``
computes the weights a block of query rows at a time, and ``gatattn.inspect.extract_sparse``
keeps of each block, before the next one is computed,

    Attn^h_ij = softmax_{j ∈ N(i)} α^h_ij,  kept if among the k largest of row i (and >= τ)

so a layer costs O(L·k·H) memory, not O(L²·H). The result is one ``SparseAttention`` per
selected layer with the padding removed (nodes renumbered over the real tokens, as
``attention_graphs`` does for whole layers) and the KV group of each head recorded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..backends import Problem
from ..backends.rows import attention_rows
from ..inspect.extract import extract_sparse
from ..inspect.sparse import SparseAttention, check_kv_heads, check_sparsify
from .attention import Capture

__all__ = ["SparseCapture", "check_layers"]


def check_layers(layers: Sequence[int] | None) -> tuple[int, ...] | None:
    """The selected layers as a sorted tuple (checked again against the model's layer count).

    Raises:
        ValueError: an empty list, a negative or non-int index, or a repeated one.
    """
    if layers is None:
        return None
    chosen = list(layers)
    bad = [n for n in chosen if isinstance(n, bool) or not isinstance(n, int) or n < 0]
    if not chosen or bad or len(set(chosen)) != len(chosen):
        raise ValueError(f"layers must be distinct layer indices >= 0, got {list(layers)!r}")
    return tuple(sorted(chosen))


class SparseCapture(Capture):
    """Collects one ``SparseAttention`` per selected self-attention layer of one forward.

    Args:
        top_k: k per query and head, or None.  threshold: τ in [0, 1], or None.
        heads: the heads to keep (None: all).  layers: the layers to keep (None: all).
        renormalize: rescale the kept weights to sum to 1 per query and head.

    Raises:
        ValueError: a bad ``top_k``, ``threshold`` or ``layers`` (``heads`` are checked
            against the model's head count at its first layer).
    """

    def __init__(
        self,
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        heads: Sequence[int] | None = None,
        layers: Sequence[int] | None = None,
        renormalize: bool = False,
    ) -> None:
        check_sparsify(top_k, threshold, None, 1)
        self.top_k, self.threshold, self.heads = top_k, threshold, heads
        self.layers = check_layers(layers)
        self.renormalize = renormalize
        self.calls = 0
        self.graphs: list[SparseAttention] = []
        self.lengths: list[int] | None = None

    def capture(self, module: nn.Module, p: Problem, valid: Tensor | None, kv_heads: int) -> None:
        layer = self.calls
        self.calls += 1
        if self.lengths is None:
            g = p.graph
            self.lengths = (
                list(g.lengths or (g.num_dst,))
                if valid is None
                else [n for n in valid.sum(1).tolist() if n > 0]
            )
        if self.layers is not None and layer not in self.layers:
            return
        targets = None if valid is None else valid.flatten()  # [B·L]
        rows = attention_rows(
            p.q, p.k, p.graph, p.score, heads=self.heads, edge_attr=p.edge_attr, targets=targets
        )
        res = extract_sparse(
            rows,
            top_k=self.top_k,
            threshold=self.threshold,
            renormalize=self.renormalize,
            layer=layer,
        )
        res.num_kv_heads = check_kv_heads(kv_heads, res.num_heads)  # k may come expanded
        self.graphs.append(_compact(res, targets, self.lengths))

    def finish(self) -> list[SparseAttention]:
        """The collected graphs, after checking that every selected layer ran.

        Raises:
            ValueError: a selected layer index beyond the layers that ran.
        """
        missing = [n for n in self.layers or () if n >= self.calls]
        if missing:
            raise ValueError(
                f"layers {missing} do not exist: the model ran {self.calls} self-attention "
                f"layers (0..{self.calls - 1})"
            )
        return self.graphs


def _compact(res: SparseAttention, valid: Tensor | None, lengths: list[int]) -> SparseAttention:
    """Drop the padded positions: keep the rows between real tokens, renumber the nodes.

    Shapes:
        res over B·L nodes, valid [B·L] bool (None: no padding) -> res over N = Σ valid.
    """
    if valid is None:
        return res
    flat = valid.to(res.edge_index.device)  # [B·L]
    new_id = torch.cumsum(flat.long(), 0) - 1  # [B·L] compact index of each real token
    src, dst = res.edge_index  # [K]
    keep = flat[src] & flat[dst]  # [K]
    res.edge_index = torch.stack([new_id[src[keep]], new_id[dst[keep]]])  # [2, K']
    res.head, res.scores, res.weights = res.head[keep], res.scores[keep], res.weights[keep]
    res.num_nodes = int(flat.sum())
    res.lengths = tuple(lengths)
    return res
