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

from collections.abc import Callable, Iterator, Mapping

from torch import Tensor

__all__ = ["GridInput"]


class GridInput(Mapping[str, Tensor]):
    """Named per-edge inputs, each held as a grid and given per edge on demand.

    A ``Mapping`` of per-edge tensors, as ``edge_attr`` may be (``Edges.input``): reading
    ``attr[name]`` calls that entry's ``per_edge`` once and keeps the result, so a per-edge
    path (the edge backend, returned weights) sees exactly the tensor it would have been given.
    ``grid(name)`` gives the grid itself, without making the per-edge form.

    Shapes:
        grids: {name: ([B | 1, F | 1, L_q, L_k], per_edge)} with per_edge() -> [E, F].
    """

    def __init__(self, grids: Mapping[str, tuple[Tensor, Callable[[], Tensor]]]) -> None:
        self._grids = dict(grids)
        self._edges: dict[str, Tensor] = {}

    def grid(self, name: str) -> Tensor | None:
        """The grid of input ``name`` [B | 1, F | 1, L_q, L_k], or None when there is none."""
        entry = self._grids.get(name)
        return None if entry is None else entry[0]

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
