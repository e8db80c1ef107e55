"""Per-edge inputs held as dense grids: what a dense backend reads without any edge, and what a
per-edge path gets, built on first use, from the same numbers.

    GridInput({name: (grid, per_edge)})
        grid       [B | 1, F | 1, L_q, L_k]: the input on the padded per-sequence grid, cell
                   (b, ·, i, j) for the edge from key j to query i of sequence b
        per_edge   () -> [E, F]: the same values in edge order, made (once) only when a
                   per-edge path reads ``attr[name]``

A graph whose edges are the whole grid in grid order (the drop-in's full graph: edge e is cell
e) with a bias read from such an input runs on the dense backend as one SDPA call with the grid
as its mask: no edge_index and no [E, F] copy (``ScoreBias.dense_grid``). The drop-in
``GraphMultiheadAttention`` hands its float and per-head masks over this way (interop/masks.py).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = ["UNNAMED", "GridInput", "table_gather"]

T = TypeVar("T")

#: The name of a per-edge input given as one tensor (``edge_attr=dist``) rather than by name.
UNNAMED = ""


class GridInput(Mapping[str, Tensor]):
    """Named per-edge inputs, each held as a grid and given per edge on demand.

    A ``Mapping`` of per-edge tensors, as ``edge_attr`` may be (``Edges.input``): reading
    ``attr[name]`` calls that entry's ``per_edge`` once and keeps the result, so a per-edge
    path (the edge backend, returned weights) sees exactly the tensor it would have been given.
    ``grid(name)`` gives the grid itself, without making the per-edge form.

    ``closed``, when the dense backend knows it, marks the grid's cells that are not edges of
    the graph (and not padding rows): the cells its mask sets to −∞. A bias may place the −∞
    there itself at no extra pass (``ScoreBias.masked_grid``).

    ``given``: the per-edge tensors as the caller gave them, when they are at hand (the dense
    backend's scattered inputs); ``known(name)`` returns one without making any.
    ``edge_cells``, when known, marks the cells that hold an edge: the only cells whose grid
    value is an input's (elsewhere the scattered grids hold 0, which a bias must not read as
    a value: a table gather gives those cells a neutral entry instead).

    Shapes:
        grids: {name: ([B | 1, F | 1, L_q, L_k], per_edge)} with per_edge() -> [E, F];
        closed, edge_cells [B, 1, L_q, L_k] bool or None; given {name: [E, ...]}.
    """

    def __init__(
        self,
        grids: Mapping[str, tuple[Tensor, Callable[[], Tensor]]],
        closed: Tensor | None = None,
        given: Mapping[str, Tensor] | None = None,
        edge_cells: Tensor | None = None,
    ) -> None:
        self._grids = dict(grids)
        self.closed = closed
        self.edge_cells = edge_cells
        self._edges: dict[str, Tensor] = dict(given or {})
        self._derived: dict[Hashable, object] = {}

    def known(self, name: str) -> Tensor | None:
        """The per-edge tensor of input ``name`` if it is already at hand (given, or made by
        an earlier read), else None: never makes one (``UNNAMED`` answers every name)."""
        return self._edges.get(name, self._edges.get(UNNAMED))

    def grid(self, name: str) -> Tensor | None:
        """The grid of input ``name`` [B | 1, F | 1, L_q, L_k], or None when there is none.
        An input given as one tensor rather than by name (``UNNAMED``) answers every name, as
        ``Edges.input`` does."""
        entry = self._grids.get(name, self._grids.get(UNNAMED))
        return None if entry is None else entry[0]

    def derived(self, key: Hashable, fn: Callable[[], T]) -> T:
        """``fn()``, computed once per GridInput and key (a bias's index tensors, say): a
        GridInput the dense backend builds is kept per graph and edge input, so this lasts
        across layers and steps."""
        if key not in self._derived:
            self._derived[key] = fn()
        return self._derived[key]  # type: ignore[return-value]

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._edges:
            self._edges[name] = self._grids[name][1]()  # KeyError for an unknown name
        return self._edges[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._grids)

    def __len__(self) -> int:
        return len(self._grids)

    def __repr__(self) -> str:
        shapes = {n: list(g.shape) for n, (g, _) in self._grids.items()}
        return f"GridInput({shapes})"


class _TableGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, table: Tensor, index: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(index)
        ctx.size = table.numel()
        return table.index_select(0, index.reshape(-1)).view(index.shape)  # ~10x table[index]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (index,) = ctx.saved_tensors
        flat, g = index.reshape(-1), grad.reshape(-1)
        if torch.is_grad_enabled():  # create_graph=True: a differentiable sum
            return grad.new_zeros(ctx.size).index_add(0, flat, g), None
        return grad.new_zeros(ctx.size).scatter_add_(0, flat, g), None


def table_gather(table: Tensor, index: Tensor) -> Tensor:
    r"""``table[index]`` by one ``index_select`` (on CPU about 10x advanced indexing), whose
    gradient is one pass of ``scatter_add_`` over the index: every cell adds its gradient to
    its table entry (measured faster here than a weighted ``bincount`` or ``index_add_``).

    .. math:: \partial L / \partial t_r = \sum_{c : \mathrm{index}_c = r} \partial L / \partial y_c

    Shapes:
        table [R] (flat), index [...] long in [0, R) -> [...].
    """
    out: Tensor = _TableGather.apply(table, index)
    return out
