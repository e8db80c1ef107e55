"""TokenGraph: the neighbourhoods N(i) of attention, as a directed graph over tokens.

Convention (docs/math.md, "Conventions"): ``edge_index`` is a LongTensor [2, E] in PyG's
source→target flow. Row 0 is the source j (key/value token), row 1 the target i (query token).
The message travels j → i and the softmax runs over the incoming edges of each target, so

    N(i) = { j : (j, i) ∈ edges }                                   (docs/math.md, eq. 2)

Dense masks follow torch SDPA: ``mask[i, j] = True`` means query i may attend to key j.

This module is the graph's interface: construction, pickling, ``to()``, node positions and
sequences, CSR, dense views and set algebra. What a graph keeps (edges, counts, tag, the one
derived-data cache, the verified trust in the tag) lives in ``gatattn.graph_state``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .graph_state import VERIFIABLE, GraphState
from .validation import check_lengths, check_node_count, validate_edge_index

__all__ = [
    "VERIFIABLE",
    "TokenGraph",
    "as_token_graph",
    "check_lengths",
    "validate_edge_index",
]


class TokenGraph(GraphState):
    """A directed attention graph: edge_index [2, E] plus node counts and a structure tag.

    Graphs are immutable: their attributes cannot be set, and ``to()`` or the set operations
    return new graphs. ``edge_index`` is a tensor that torch cannot freeze, so an in-place write
    to it is detected through the tensor's version counter: it clears every cached value derived
    from the graph and withdraws the trust in the structure tag (never a stale answer).
    A write that bypasses torch's version counter (through ``edge_index.data``, which has a
    counter of its own, ``edge_index.numpy()``, DLPack or a raw pointer) is not detected: build a
    new graph instead. ``dense_mask()`` and ``csr()``
    hand out copies, so writing into what they return never changes the graph.

    Args:
        edge_index: LongTensor [2, E]; row 0 source j (key), row 1 target i (query).
        num_src: number of source (key/value) nodes N_s. Defaults to ``max(edge_index[0]) + 1``.
        num_dst: number of target (query) nodes N_t. Defaults to ``num_src`` (self-attention).
        structure: optional tag set by builders (``"complete"``, ``"causal"``, ``"window"``, ...).
            A tag that a backend relies on (complete, causal, bipartite) is checked against the
            edges before use (``trusted_structure``), unless ``verified`` says it holds.
        lengths: per-sequence node counts for a block-diagonal batch, or None for one sequence.
        params: builder parameters that go with the tag (e.g. ``{"window": 4}``); read-only.
            ``params["kv_lengths"]``, a bipartite batch's key lengths, must hold one length per
            query sequence and sum to ``num_src`` (ValueError otherwise).
        validate: check dtype, shape and index range (default True).
        verified: the caller guarantees that ``structure`` describes the edges exactly, as the
            library's builders do by construction (default False: the claim is checked).

    Shapes:
        edge_index [2, E]; ``to_dense_mask()`` [N_t, N_s]; ``positions`` [N].
    """

    def __init__(
        self,
        edge_index: Tensor,
        num_src: int | None = None,
        num_dst: int | None = None,
        *,
        structure: str | None = None,
        lengths: Sequence[int] | Tensor | None = None,
        params: Mapping[str, Any] | None = None,
        validate: bool = True,
        verified: bool = False,
    ) -> None:
        num_src = check_node_count(num_src, "num_src")
        num_dst = check_node_count(num_dst, "num_dst")
        if validate:
            validate_edge_index(edge_index, num_src, num_dst)
        if num_src is None:
            num_src = int(edge_index[0].max()) + 1 if edge_index.numel() else 0
        if num_dst is None:
            num_dst = num_src
        if num_src < 0 or num_dst < 0:
            raise ValueError(f"node counts must be >= 0, got num_src={num_src}, num_dst={num_dst}")
        seq = None if lengths is None else check_lengths(lengths)
        if seq is not None and sum(seq) != num_dst:
            raise ValueError(
                f"lengths={list(seq)} sum to {sum(seq)} but the graph has {num_dst} target nodes"
            )
        kv = None if params is None else params.get("kv_lengths")
        if kv is not None:  # a bipartite batch's key lengths: one per query sequence, sum N_s
            kv = check_lengths(kv)
            if sum(kv) != num_src or len(kv) != len(seq or (num_dst,)):
                raise ValueError(
                    f"params['kv_lengths']={list(kv)} must hold one key length per query "
                    f"sequence ({len(seq or (num_dst,))}) and sum to num_src={num_src}"
                )
        self._setup(
            edge_index=edge_index,
            build=None,
            num_edges=None,
            device=edge_index.device,
            mask=None,
            num_src=int(num_src),
            num_dst=int(num_dst),
            structure=structure,
            lengths=seq,
            params=params,
            verified=verified,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle (and deepcopy) support: the edges, counts, tag, lengths, params, the trust in
        the tag and a builder's mask. Deferred edges are made first (a builder's closure cannot
        be pickled); the cache is not carried (it is rebuilt on use)."""
        self._sync()  # an in-place edit withdraws the trust before it is copied
        state = (self.structure, self.lengths, self._params, self._verified, self._mask)
        return (_rebuild, (self.edge_index, self.num_src, self.num_dst, *state))

    def to(self, device: torch.device | str) -> TokenGraph:
        """The same graph with edge_index on ``device`` (a new graph unless already there)."""
        if self.device == torch.device(device):
            return self
        self._sync()  # an in-place edit since the last use withdraws the trust first
        if self._edge_index is None:
            assert self._build is not None and self._structure is not None
            build = self._build
            mask = None if self._mask is None else self._mask.to(device)
            return TokenGraph._deferred(
                lambda: build().to(device),
                self.num_src,
                self.num_dst,
                self.num_edges,
                device=device,
                structure=self._structure,
                lengths=self.lengths,
                params=self.params,
                mask=mask,
            )
        return TokenGraph(
            self.edge_index.to(device),
            self.num_src,
            self.num_dst,
            structure=self.structure,
            lengths=self.lengths,
            params=self.params,
            validate=False,
            verified=self._verified,
        )

    def positions(self, side: str = "dst") -> Tensor:
        """Token position of each node within its sequence, LongTensor [N].

        ``side`` is ``"dst"`` (targets/queries) or ``"src"`` (sources/keys). For a batch
        (``lengths`` set) positions restart at 0 in every sequence; otherwise they are arange(N).
        A bipartite batch keeps its key lengths in ``params["kv_lengths"]``.
        """
        if side not in ("dst", "src"):
            raise ValueError(f"side must be 'dst' or 'src', got {side!r}")
        n = self.num_dst if side == "dst" else self.num_src
        seq = self.lengths
        if side == "src" and self.params.get("kv_lengths") is not None:
            seq = tuple(self.params["kv_lengths"])
        elif side == "src" and self.num_src != self.num_dst:
            seq = None  # key lengths unknown: positions are arange
        if seq is None or n != sum(seq):
            return torch.arange(n, device=self.device)
        lengths = torch.tensor(seq, device=self.device)
        starts = torch.cumsum(lengths, 0) - lengths  # [B]
        return torch.arange(n, device=self.device) - starts.repeat_interleave(lengths)

    def sequence(self, side: str = "dst") -> Tensor:
        """Sequence id of each node of ``side``, LongTensor [N] (all zeros for one sequence)."""
        lengths = torch.tensor(self.sequence_lengths(side), device=self.device)
        return torch.arange(lengths.numel(), device=self.device).repeat_interleave(lengths)

    def in_degree(self) -> Tensor:
        """|N(i)| for every target i, LongTensor [N_t] (duplicate edges count)."""
        return torch.bincount(self.edge_index[1], minlength=self.num_dst)

    def csr(self) -> tuple[Tensor, Tensor]:
        """CSR by target, cached: ``(rowptr [N_t + 1], perm [E])``.

        ``edge_index[:, perm]`` is sorted by target (stable, so sources keep their order), and
        the incoming edges of target i are ``perm[rowptr[i]:rowptr[i + 1]]``. Copies of the
        cached tensors: writing into them leaves the cache as it was.
        """

        def build() -> tuple[Tensor, Tensor]:
            perm = torch.argsort(self.edge_index[1], stable=True)
            rowptr = torch.zeros(self.num_dst + 1, dtype=torch.long, device=self.device)
            rowptr[1:] = torch.cumsum(self.in_degree(), 0)
            return rowptr, perm

        rowptr, perm = self.derived("csr", build)
        return rowptr.clone(), perm.clone()

    # ------------------------------------------------------------------ dense views
    def to_dense_mask(self) -> Tensor:
        """Boolean mask [N_t, N_s] in the SDPA convention: ``mask[i, j]`` iff j ∈ N(i)."""
        mask = torch.zeros(self.num_dst, self.num_src, dtype=torch.bool, device=self.device)
        mask[self.edge_index[1], self.edge_index[0]] = True
        return mask

    def edge_counts(self) -> Tensor:
        """Edge multiplicities as a dense LongTensor [N_t, N_s] (duplicates add up)."""
        counts = torch.zeros(self.num_dst * self.num_src, dtype=torch.long, device=self.device)
        counts.index_add_(0, self._keys(), torch.ones_like(self.edge_index[0]))
        return counts.view(self.num_dst, self.num_src)

    def _keys(self) -> Tensor:
        return self.edge_index[1] * self.num_src + self.edge_index[0]  # [E]

    # ------------------------------------------------------------------ set algebra
    def _check_same_nodes(self, other: object, op: str) -> TokenGraph:
        if not isinstance(other, TokenGraph):
            raise TypeError(f"TokenGraph {op} needs another TokenGraph, got {type(other).__name__}")
        if (self.num_src, self.num_dst) != (other.num_src, other.num_dst):
            raise ValueError(
                f"TokenGraph {op} needs equal node counts, got (num_src, num_dst)="
                f"{(self.num_src, self.num_dst)} and {(other.num_src, other.num_dst)}"
            )
        return other

    def _from_keys(self, keys: Tensor, other: TokenGraph) -> TokenGraph:
        edge_index = torch.stack([keys % self.num_src, keys // self.num_src])
        lengths = self.lengths if self.lengths == other.lengths else None
        return TokenGraph(edge_index, self.num_src, self.num_dst, lengths=lengths, validate=False)

    def __or__(self, other: object) -> TokenGraph:
        """Union of edge sets, N(i) = N_a(i) ∪ N_b(i). Duplicate edges collapse to one."""
        other = self._check_same_nodes(other, "|")
        keys = torch.unique(torch.cat([self._keys(), other._keys()]))
        return self._from_keys(keys, other)

    def __and__(self, other: object) -> TokenGraph:
        """Intersection of edge sets, N(i) = N_a(i) ∩ N_b(i). Duplicate edges collapse to one."""
        other = self._check_same_nodes(other, "&")
        a = torch.unique(self._keys())
        keys = a[torch.isin(a, other._keys())]
        return self._from_keys(keys, other)

    def __repr__(self) -> str:
        extra = f", structure={self.structure!r}" if self.structure else ""
        if self.lengths is not None:
            extra += f", lengths={list(self.lengths)}"
        return (
            f"TokenGraph(num_src={self.num_src}, num_dst={self.num_dst}, "
            f"num_edges={self.num_edges}{extra})"
        )


def _rebuild(
    edge_index: Tensor,
    num_src: int,
    num_dst: int,
    structure: str | None,
    lengths: tuple[int, ...] | None,
    params: dict[str, Any],
    verified: bool,
    mask: Tensor | None,
) -> TokenGraph:
    """Inverse of ``TokenGraph.__reduce__``."""
    g = TokenGraph(
        edge_index,
        num_src,
        num_dst,
        structure=structure,
        lengths=lengths,
        params=params,
        validate=False,
        verified=verified,
    )
    object.__setattr__(g, "_mask", mask)
    return g


def as_token_graph(
    graph: TokenGraph | Tensor, num_src: int, num_dst: int, *, name: str = "graph"
) -> TokenGraph:
    """Accept a TokenGraph or a raw edge_index [2, E] and check it against the node counts.

    A raw edge_index is turned into a TokenGraph once and then reused while the tensor holds
    the same edges (``_RawGraphs``): the graph's cache (CSR, layouts, dispatch's decision)
    then serves every later call, as it does for a TokenGraph built once.
    """
    if isinstance(graph, TokenGraph):
        if (graph.num_src, graph.num_dst) != (num_src, num_dst):
            raise ValueError(
                f"{name} has (num_src, num_dst)={(graph.num_src, graph.num_dst)} but the inputs "
                f"have {num_src} source and {num_dst} target nodes"
            )
        return graph
    if isinstance(graph, Tensor):
        return RAW_GRAPHS.get(graph, num_src, num_dst)
    raise TypeError(
        f"{name} must be a gatattn.TokenGraph or an edge_index LongTensor [2, E], "
        f"got {type(graph).__name__}"
    )


class _RawGraphs:
    """The TokenGraphs made from raw edge_index tensors, one per (tensor, N_s, N_t).

    PyG users pass the same edge_index tensor on every call. A new TokenGraph per call would
    validate it, and every backend would redo its per-graph work (dispatch's tile-density
    estimate, CSR...), each call. Here the graph is made once per tensor and node counts, and
    reused only when it is provably the same graph:

    * the entry is found by the tensor's ``id``. No reference to the tensor is kept, weak or
      strong (``torch.utils.swap_tensors``, and so ``load_state_dict`` with swapping, refuse a
      tensor that has either), so an id may come back for another tensor: the values decide;
    * the cache keeps a private copy of the edges that no other code sees, and on every call the
      tensor's current values are compared with it (``torch.equal``, O(E)): a write of any kind
      (in place, through ``.data``, NumPy or DLPack, which no version counter sees), or another
      tensor at a reused id, gives a new, validated graph, never a stale one. Equal values give
      the same graph, which is then the right one;
    * shape, dtype, device and node counts are part of the match;
    * the graph holds a copy of its own (its ``edge_index``, handed out with returned weights),
      so a write into the caller's tensor between forward and backward does not reach it; that
      copy is compared too, so a write into it ends the entry as well.

    Not used under ``torch.compile`` or ``torch.inference_mode`` (a new graph per call, as
    before: a copy, or a value a backend caches in the graph, made there would be an inference
    tensor, which a later training call could not save for backward), nor for inference, meta
    or subclass tensors. At most ``MAX_ENTRIES`` graphs with ``MAX_EDGES`` edges in all are kept
    (least recently used first out); a larger graph gets a new TokenGraph per call (its
    per-call costs are small beside its attention).
    One lock serialises the lookups, so threads may share layers and tensors.
    """

    MAX_ENTRIES = 32
    MAX_EDGES = 1 << 21  # two int64 copies each: at most 64 MiB kept

    def __init__(self) -> None:
        self._entries: dict[tuple[int, int, int], tuple[Tensor, TokenGraph]] = {}
        self._lock = threading.Lock()

    def get(self, edge_index: Tensor, num_src: int, num_dst: int) -> TokenGraph:
        """The TokenGraph of ``edge_index`` with these node counts (validated when made).

        Raises:
            TypeError, ValueError: as ``TokenGraph`` for a bad edge_index or node count.
        """
        if (
            type(edge_index) is not Tensor
            or edge_index.dim() != 2
            or edge_index.size(-1) > self.MAX_EDGES
            or edge_index.device.type == "meta"
            or edge_index.layout != torch.strided
            or torch.compiler.is_compiling()
            or torch.is_inference_mode_enabled()
            or edge_index.is_inference()
        ):
            return TokenGraph(edge_index, num_src, num_dst)
        key = (id(edge_index), num_src, num_dst)
        with self._lock:
            hit = self._entries.get(key)
            # the caller's tensor and the graph's own edges (handed out with returned weights,
            # so writable through NumPy) both still equal the private copy
            if hit is not None and _same(hit[0], edge_index) and _same(hit[0], hit[1].edge_index):
                self._entries[key] = self._entries.pop(key)  # most recently used last
                return hit[1]
            TokenGraph(edge_index, num_src, num_dst)  # validates the tensor itself
            graph = TokenGraph(edge_index.clone(), num_src, num_dst, validate=False)
            self._entries.pop(key, None)
            self._entries[key] = (edge_index.clone(), graph)  # the copy: compared, never shown
            while len(self._entries) > self.MAX_ENTRIES or self._edges() > self.MAX_EDGES:
                self._entries.pop(next(iter(self._entries)))
            return graph

    def _edges(self) -> int:
        return sum(g.num_edges for _, g in self._entries.values())

    def clear(self) -> None:
        """Forget every graph (they are rebuilt on use)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _same(copy: Tensor, edge_index: Tensor) -> bool:
    """True when ``edge_index`` holds exactly the edges of ``copy`` (same shape, dtype and
    device, equal values): O(E), one comparison."""
    return (
        copy.shape == edge_index.shape
        and copy.dtype == edge_index.dtype
        and copy.device == edge_index.device
        and torch.equal(copy, edge_index)
    )


#: The raw edge_index -> TokenGraph cache of ``as_token_graph`` (``_RawGraphs``).
RAW_GRAPHS = _RawGraphs()
