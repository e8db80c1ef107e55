"""The state under a TokenGraph: stored or deferred edges, immutability, one cache, a trusted tag.

``gatattn.graph.TokenGraph`` is the graph users build and read; this module holds what it keeps
and how that state stays true (docs/architecture.md, "Rules the structure keeps"):

- the edge_index [2, E] (or a builder's function that makes it on first access), node counts,
  structure tag, per-sequence lengths and builder parameters, all read-only;
- ``derived(key, fn, device)``, the graph's only cache of derived data (CSR, padding indices,
  block layouts, masks), cleared when edge_index is written in place (its version counter);
- ``trusted_structure()``, the structure tag verified against the edges (``VERIFIABLE`` tags).

Structure tags set by the builders. Fast backends may use them; the edge backend ignores them:

- ``"complete"``: every target attends to every source of its sequence (params: self_loops);
- ``"causal"``: j <= i within each sequence;
- ``"window"``, ``"global"``, ``"bigbird"``, ``"block"``, ``"strided"``, ``"fixed"``, ``"star"``,
  ``"knn"``, ``"radius"``, ``"bipartite"`` (set by gatattn.patterns);
- ``"masked"``: built from a dense mask (``from_mask``); ``dense_mask()`` returns it.

``lengths`` holds per-sequence node counts of a block-diagonal batch (None: one sequence).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor

from .validation import structure_holds

__all__ = ["VERIFIABLE", "GraphState"]

#: Tags whose claim a backend relies on; ``trusted_structure`` verifies them against the edges.
VERIFIABLE = ("complete", "causal", "bipartite")

T = TypeVar("T")
G = TypeVar("G", bound="GraphState")


class GraphState:
    """What a TokenGraph keeps: edges, node counts, tag, lengths, params, one cache, the trust.

    The base of ``gatattn.TokenGraph`` (which documents the arguments). Attributes cannot be set;
    an in-place write to ``edge_index`` is detected through the tensor's version counter and
    clears the cache, the trust in the tag and a builder's mask.

    Shapes:
        edge_index [2, E]; ``dense_mask()`` [B, L_q, L_k].
    """

    _edge_index: Tensor | None
    _build: Callable[[], Tensor] | None
    _num_edges: int | None
    _device: torch.device
    _mask: Tensor | None
    _num_src: int
    _num_dst: int
    _structure: str | None
    _lengths: tuple[int, ...] | None
    _params: dict[str, Any]
    _cache: dict[tuple[Hashable, str, bool], Any]
    _version: int
    _verified: bool

    def _setup(
        self,
        *,
        edge_index: Tensor | None,
        build: Callable[[], Tensor] | None,
        num_edges: int | None,
        device: torch.device,
        mask: Tensor | None,
        num_src: int,
        num_dst: int,
        structure: str | None,
        lengths: tuple[int, ...] | None,
        params: Mapping[str, Any] | None,
        verified: bool,
    ) -> None:
        init = object.__setattr__
        edge_index = None if edge_index is None else _owned(edge_index)
        init(self, "_edge_index", edge_index)
        init(self, "_build", build)  # makes edge_index on first access (deferred graphs)
        init(self, "_num_edges", num_edges)
        init(self, "_device", device)
        init(self, "_mask", mask)  # [B, 1 | L_q, L_k] bool when the graph was built from one
        init(self, "_num_src", num_src)
        init(self, "_num_dst", num_dst)
        init(self, "_structure", structure)
        init(self, "_lengths", lengths)
        init(self, "_params", dict(params or {}))
        # one cache of derived data (CSR, padding indices, block layouts...), keyed by
        # (key, device); valid while edge_index keeps the version it had when filled
        init(self, "_cache", {})
        init(self, "_version", -1 if edge_index is None else edge_index._version)
        init(self, "_verified", bool(verified and structure is not None))

    @classmethod
    def _deferred(
        cls: type[G],
        build: Callable[[], Tensor],
        num_src: int,
        num_dst: int,
        num_edges: int | None,
        *,
        device: torch.device | str | None = None,
        structure: str,
        lengths: tuple[int, ...] | None = None,
        params: Mapping[str, Any] | None = None,
        mask: Tensor | None = None,
    ) -> G:
        """A builder's graph whose edge_index [2, E] is made by ``build()`` on first access.

        The dense backend never reads the edges of a complete, causal or mask graph, so they
        are not made there: no O(E) memory, and no data-dependent sizes under torch.compile.
        The builder guarantees that ``structure`` (and ``mask``) describe ``build()`` exactly.
        """
        g = cls.__new__(cls)
        g._setup(
            edge_index=None,
            build=build,
            num_edges=num_edges,
            device=torch.device("cpu") if device is None else torch.device(device),
            mask=mask,
            num_src=num_src,
            num_dst=num_dst,
            structure=structure,
            lengths=lengths,
            params=params,
            verified=True,
        )
        return g

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(
            f"TokenGraph is immutable: cannot set {name!r}; build a new graph (e.g. "
            "TokenGraph(new_edge_index, num_src, num_dst)) instead"
        )

    # ------------------------------------------------------------------ read-only attributes
    @property
    def edge_index(self) -> Tensor:
        """LongTensor [2, E]: row 0 source j, row 1 target i (made on first access when the
        builder deferred it)."""
        edge_index = self._edge_index
        if edge_index is None:
            assert self._build is not None
            edge_index = _owned(self._build())
            object.__setattr__(self, "_edge_index", edge_index)
            object.__setattr__(self, "_version", edge_index._version)
        return edge_index

    @property
    def num_src(self) -> int:
        """N_s, the number of source (key/value) nodes."""
        return self._num_src

    @property
    def num_dst(self) -> int:
        """N_t, the number of target (query) nodes."""
        return self._num_dst

    @property
    def structure(self) -> str | None:
        """The builder's tag (``"complete"``, ``"window"``...), or None. Not a verified claim:
        backends use ``trusted_structure()``."""
        return self._structure

    @property
    def lengths(self) -> tuple[int, ...] | None:
        """Per-sequence target counts of a block-diagonal batch, or None for one sequence."""
        return self._lengths

    @property
    def params(self) -> dict[str, Any]:
        """The builder's parameters (a copy: the graph's own cannot be changed)."""
        return dict(self._params)

    # ------------------------------------------------------------------ derived data
    def _sync(self) -> None:
        """Drop every derived value if edge_index was written in place since it was cached.
        (Not under torch.compile, which cannot read a version counter; compiled code reads the
        cache as it was when tracing.)"""
        if torch.compiler.is_compiling() or self._edge_index is None:
            return
        version = self._edge_index._version
        if version != self._version:
            self._cache.clear()
            object.__setattr__(self, "_version", version)
            object.__setattr__(self, "_verified", False)
            object.__setattr__(self, "_mask", None)  # the mask no longer describes the edges

    def derived(self, key: Hashable, fn: Callable[[], T], device: torch.device | None = None) -> T:
        """The value ``fn()`` derived from this graph, computed once per (key, device).

        This is the graph's only cache; every backend keeps its per-graph data here (CSR,
        padding indices, block layouts, masks). It is cleared when edge_index is modified in
        place, so a cached value always describes the current edges.

        Args:
            key: any hashable name of the value (e.g. ``("block_layout", 32)``).
            fn: computes the value from the graph.
            device: the device the value lives on (default the graph's).

        Values made under ``torch.inference_mode`` are kept apart from the others: an inference
        tensor cannot be saved for backward, so a later training call must not be served one.
        """
        self._sync()
        dev = str(self.device if device is None else device)
        inference = not torch.compiler.is_compiling() and torch.is_inference_mode_enabled()
        k = (key, dev, inference)
        if k not in self._cache:
            self._cache[k] = fn()
        return self._cache[k]

    def trusted_structure(self) -> str | None:
        """The structure tag if it is known to describe the edges exactly, else None.

        Only the tags that backends rely on (``VERIFIABLE``: complete, causal, bipartite) can be
        trusted. A builder's graph is trusted by construction; any other claim is checked once
        (cached) in O(E): the edge count equals the pattern's, the edges are sorted by (target,
        source) without repeats, and every edge belongs to the pattern. Together these prove
        the edge set equals the pattern. Under ``torch.compile`` an unverified claim is not
        checked (that would need data-dependent control flow) and is not trusted.
        """
        tag = self._structure
        if tag not in VERIFIABLE:
            return None
        self._sync()
        if self._verified:
            return tag
        if torch.compiler.is_compiling():
            return None
        ok = self.derived(
            "structure_holds",
            lambda: structure_holds(
                tag,
                self.edge_index,
                self.sequence_lengths("dst"),
                self.sequence_lengths("src"),
                bool(self.params.get("self_loops", True)),
            ),
        )
        return tag if ok else None

    @property
    def num_edges(self) -> int:
        """E, the number of edges (duplicates count separately)."""
        if self._edge_index is None:
            if self._num_edges is not None:
                return self._num_edges
            if self._mask is not None:  # a [B, 1, L_k] mask stands for L_q equal rows
                rows = len(self.sequence_lengths("dst")) * self._mask.size(1)
                return int(self._mask.sum()) * (self.num_dst // rows) if rows else 0
        return int(self.edge_index.size(1))

    def dense_mask(self, compact: bool = False) -> Tensor | None:
        """The batched mask [B, L_q, L_k] (True = may attend) this graph was built from by
        ``from_mask`` / ``from_padding_mask``, or None. Dropped when edge_index is written in
        place. ``compact=True`` returns it in its stored layout: [B, 1, L_k] when every query
        of a sequence has the same keys (a padding mask), which SDPA broadcasts.

        A copy: writing into it leaves the graph as it was (the backends read the stored one).
        """
        m = self._stored_mask()
        if m is None:
            return None
        m = m.clone()
        return m if compact else m.expand(-1, self.num_dst // max(m.size(0), 1), -1)

    def _stored_mask(self) -> Tensor | None:
        """The stored mask itself, [B, 1 | L_q, L_k], for the backends: never handed out."""
        self._sync()
        return self._mask

    @property
    def num_nodes(self) -> int:
        """N for a self-attention graph; raises for a bipartite graph with N_s != N_t."""
        if self.num_src != self.num_dst:
            raise ValueError(
                f"bipartite graph has num_src={self.num_src} != num_dst={self.num_dst}; "
                "use num_src / num_dst"
            )
        return self.num_src

    @property
    def device(self) -> torch.device:
        """The device of edge_index."""
        return self._device if self._edge_index is None else self._edge_index.device

    def sequence_lengths(self, side: str = "dst") -> tuple[int, ...]:
        """Per-sequence node counts of one side: ``lengths`` for targets; for sources the key
        lengths of a bipartite batch (``params["kv_lengths"]``), else the target lengths of a
        self-attention graph, else one sequence of all sources."""
        if side == "dst":
            return self.lengths or (self.num_dst,)
        kv = self._params.get("kv_lengths")  # read, not copied
        if kv is not None:
            return tuple(kv)
        if self.num_src == self.num_dst and self.structure != "bipartite":
            return self.lengths or (self.num_src,)
        return (self.num_src,)


def _owned(edge_index: Tensor) -> Tensor:
    """``edge_index`` itself, or for an inference tensor (made under ``torch.inference_mode``)
    a normal copy: an inference tensor has no version counter, so a write into it could not be
    detected, and it could not be saved for backward by a later training call."""
    if torch.compiler.is_compiling() or not edge_index.is_inference():
        return edge_index
    with torch.inference_mode(False):
        return edge_index.clone()
