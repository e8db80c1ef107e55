"""StreamingLLM's attention sinks plus a recent window (Xiao et al. 2024, "Efficient Streaming
Language Models with Attention Sinks"): a causal pattern whose KV cache stays bounded.

Notation as in ``sequence.py``: p_i is the position of token i within its sequence, and N(i) is
restricted to the tokens of i's sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..graph import TokenGraph
from ._common import MAX_EDGES, check_edge_cap, layout, positive_int, ragged

__all__ = ["sink_window_graph"]


def sink_window_graph(
    n: int | Sequence[int] | None = None,
    *,
    num_sinks: int = 4,
    window: int | None = None,
    lengths: Sequence[int] | Tensor | None = None,
    device: torch.device | str | None = None,
    max_edges: int | None = MAX_EDGES,
) -> TokenGraph:
    """Attention sinks plus a causal recent window (StreamingLLM, Xiao et al. 2024, Sec. 3.2).

    Each token attends to the first s tokens of its sequence (the sinks) and to the w most
    recent tokens, itself included:

    .. math:: N(i) = \\{ j : p_j \\le p_i \\text{ and } (p_j < s \\text{ or } p_i - p_j < w) \\}

    Causal; self-loops included (w >= 1). A token that sees its whole prefix (p_i < s + w) has
    N(i) = the causal graph's. In-degree min(p_i + 1, s + w). Tag ``"sink_window"``, params
    ``{"num_sinks": s, "window": w}``. Every N(i) depends on the tokens before i only, so the
    graph of a prefix is the prefix of the graph: a converted model's ``generate`` gives the
    same tokens with and without its KV cache under this swap.

    ``n`` may be the list of lengths itself, so ``functools.partial(ga.sink_window_graph,
    num_sinks=4, window=64)`` is a ``graph_fn`` for ``ga.convert`` and ``minilm`` as it is.

    Args:
        n: tokens of one sequence, or the lengths of a batch (the same as ``lengths=``).
        num_sinks: s >= 0, the sink tokens at the start of each sequence.
        window: w >= 1, the recent tokens each token attends to (itself included).
        lengths: ``[L_1, ..., L_B]`` for a block-diagonal batch.
        device: where edge_index lives.  max_edges: edge cap (None: no cap).

    Shapes:
        edge_index [2, E], E = Σ_i min(p_i + 1, s + w), sorted by target then source.

    Raises:
        ValueError: no window, s < 0, w < 1, or both / neither of n and lengths.
    """
    if n is not None and not isinstance(n, int) and isinstance(n, Sequence | Tensor):
        if lengths is not None:
            raise ValueError("sink_window_graph takes either n or lengths=[...], not both")
        n, lengths = None, n
    if window is None:
        raise ValueError(
            "sink_window_graph needs window=<int >= 1>, the recent tokens each token attends to"
        )
    w = positive_int(window, "window")
    s = positive_int(num_sinks, "num_sinks", minimum=0)
    lay = layout(n, lengths, "sink_window_graph", device)
    recent = torch.clamp(lay.pos + 1, max=w)  # [N] window sources p_i − w + 1 .. p_i
    first = lay.pos + 1 - recent  # [N] position of the window's first source
    sinks = torch.clamp(first, max=s)  # [N] sinks before the window: positions 0 .. s − 1
    check_edge_cap(int(recent.sum() + sinks.sum()), max_edges, "sink_window_graph")
    starts = torch.stack([lay.start, lay.start + first], 1).flatten()  # [2N] sinks, window
    counts = torch.stack([sinks, recent], 1).flatten()  # [2N]
    edges = ragged(starts, counts, target=lay.idx.repeat_interleave(2))  # [2, E]
    return lay.graph(edges, "sink_window", {"num_sinks": s, "window": w})
