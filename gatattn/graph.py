"""TokenGraph: the neighbourhoods N(i) of attention, as a directed graph over tokens.

Convention (docs/design.md, "Conventions"): ``edge_index`` is a LongTensor [2, E] in PyG's
source→target flow. Row 0 is the source j (key/value token), row 1 the target i (query token).
The message travels j → i and the softmax runs over the incoming edges of each target, so

    N(i) = { j : (j, i) ∈ edges }                                   (docs/math.md, eq. 2)

Dense masks follow torch SDPA: ``mask[i, j] = True`` means query i may attend to key j.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["TokenGraph", "as_token_graph", "complete_graph", "from_mask", "validate_edge_index"]

# Structure tags set by the builders. Fast backends may use them; the edge backend ignores them.
#   "complete"  every target attends to every source of its sequence (params: self_loops)
#   "causal"    j <= i within each sequence
#   "window", "global", "bigbird", "block", "strided", "fixed", "star", "knn", "radius",
#   "bipartite" (set by gatattn.patterns)
# ``lengths`` holds per-sequence node counts of a block-diagonal batch (None: one sequence).


def validate_edge_index(edge_index: Any, num_src: int | None, num_dst: int | None) -> None:
    """Check that ``edge_index`` is a LongTensor [2, E] with indices in range.

    Raises:
        TypeError: not a tensor, or not an integer dtype.
        ValueError: wrong shape, a negative index, or an index >= the node count.
    """
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"edge_index must be a torch.Tensor, got {type(edge_index).__name__}")
    if edge_index.dtype != torch.long:
        raise TypeError(
            f"edge_index must have dtype torch.long (int64), got {edge_index.dtype}; "
            "convert it with edge_index.long()"
        )
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}")
    if edge_index.numel() == 0 or torch.compiler.is_compiling():
        return
    lo = int(edge_index.min())
    if lo < 0:
        raise ValueError(f"edge_index contains a negative node index ({lo})")
    for row, name, n in ((0, "source", num_src), (1, "target", num_dst)):
        if n is None:
            continue
        hi = int(edge_index[row].max())
        if hi >= n:
            raise ValueError(
                f"edge_index has {name} index {hi} but there are only {n} {name} nodes "
                f"(valid range 0..{n - 1})"
            )


def _lengths_tuple(lengths: Sequence[int] | Tensor) -> tuple[int, ...]:
    out = tuple(int(n) for n in (lengths.tolist() if isinstance(lengths, Tensor) else lengths))
    if len(out) == 0:
        raise ValueError("lengths must name at least one sequence, got []")
    bad = [n for n in out if n < 1]
    if bad:
        raise ValueError(f"every sequence length must be >= 1, got {bad[0]} in lengths={list(out)}")
    return out


class TokenGraph:
    """A directed attention graph: edge_index [2, E] plus node counts and a structure tag.

    Args:
        edge_index: LongTensor [2, E]; row 0 source j (key), row 1 target i (query).
        num_src: number of source (key/value) nodes N_s. Defaults to ``max(edge_index[0]) + 1``.
        num_dst: number of target (query) nodes N_t. Defaults to ``num_src`` (self-attention).
        structure: optional tag set by builders (``"complete"``, ``"causal"``, ``"window"``, ...).
        lengths: per-sequence node counts for a block-diagonal batch, or None for one sequence.
        params: builder parameters that go with the tag (e.g. ``{"window": 4}``).
        validate: check dtype, shape and index range (default True).

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
        params: dict[str, Any] | None = None,
        validate: bool = True,
    ) -> None:
        if validate:
            validate_edge_index(edge_index, num_src, num_dst)
        if num_src is None:
            num_src = int(edge_index[0].max()) + 1 if edge_index.numel() else 0
        if num_dst is None:
            num_dst = num_src
        if num_src < 0 or num_dst < 0:
            raise ValueError(f"node counts must be >= 0, got num_src={num_src}, num_dst={num_dst}")
        self.edge_index = edge_index
        self.num_src = int(num_src)
        self.num_dst = int(num_dst)
        self.structure = structure
        self.lengths = None if lengths is None else _lengths_tuple(lengths)
        if self.lengths is not None and sum(self.lengths) != self.num_dst:
            raise ValueError(
                f"lengths={list(self.lengths)} sum to {sum(self.lengths)} but the graph has "
                f"{self.num_dst} target nodes"
            )
        self.params: dict[str, Any] = dict(params or {})
        self._csr: tuple[Tensor, Tensor] | None = None
        self._memo: dict[
            Any, Any
        ] = {}  # per-graph values that backends derive once (dense padding)

    # ------------------------------------------------------------------ basic properties
    @property
    def num_edges(self) -> int:
        """E, the number of edges (duplicates count separately)."""
        return int(self.edge_index.size(1))

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
        return self.edge_index.device

    def to(self, device: torch.device | str) -> TokenGraph:
        """The same graph with edge_index on ``device``."""
        if self.edge_index.device == torch.device(device):
            return self
        return self._replace(self.edge_index.to(device))

    def _replace(self, edge_index: Tensor, structure: str | bool | None = True) -> TokenGraph:
        return TokenGraph(
            edge_index,
            self.num_src,
            self.num_dst,
            structure=self.structure if structure is True else structure or None,
            lengths=self.lengths,
            params=self.params,
            validate=False,
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

    def sequence(self) -> Tensor:
        """Sequence id of each target node, LongTensor [N_t] (all zeros for one sequence)."""
        if self.lengths is None:
            return torch.zeros(self.num_dst, dtype=torch.long, device=self.device)
        lengths = torch.tensor(self.lengths, device=self.device)
        return torch.arange(len(self.lengths), device=self.device).repeat_interleave(lengths)

    def in_degree(self) -> Tensor:
        """|N(i)| for every target i, LongTensor [N_t] (duplicate edges count)."""
        return torch.bincount(self.edge_index[1], minlength=self.num_dst)

    def csr(self) -> tuple[Tensor, Tensor]:
        """CSR by target, cached: ``(rowptr [N_t + 1], perm [E])``.

        ``edge_index[:, perm]`` is sorted by target (stable, so sources keep their order), and
        the incoming edges of target i are ``perm[rowptr[i]:rowptr[i + 1]]``.
        """
        if self._csr is None:
            perm = torch.argsort(self.edge_index[1], stable=True)
            rowptr = torch.zeros(self.num_dst + 1, dtype=torch.long, device=self.device)
            rowptr[1:] = torch.cumsum(self.in_degree(), 0)
            self._csr = (rowptr, perm)
        return self._csr

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


def as_token_graph(
    graph: TokenGraph | Tensor, num_src: int, num_dst: int, *, name: str = "graph"
) -> TokenGraph:
    """Accept a TokenGraph or a raw edge_index [2, E] and check it against the node counts."""
    if isinstance(graph, TokenGraph):
        if (graph.num_src, graph.num_dst) != (num_src, num_dst):
            raise ValueError(
                f"{name} has (num_src, num_dst)={(graph.num_src, graph.num_dst)} but the inputs "
                f"have {num_src} source and {num_dst} target nodes"
            )
        return graph
    if isinstance(graph, Tensor):
        return TokenGraph(graph, num_src, num_dst)
    raise TypeError(
        f"{name} must be a gatattn.TokenGraph or an edge_index LongTensor [2, E], "
        f"got {type(graph).__name__}"
    )


def complete_graph(
    n: int | None = None,
    *,
    lengths: Sequence[int] | Tensor | None = None,
    self_loops: bool = True,
    device: torch.device | str | None = None,
) -> TokenGraph:
    """The complete token graph: every token attends to every token of its sequence.

    .. math::
        N(i) = \\{ j : \\mathrm{seq}(j) = \\mathrm{seq}(i) \\}  \\;(\\setminus \\{i\\}
        \\text{ if } self\\_loops=False)

    With ``lengths=[L_1, ..., L_B]`` the sequences are concatenated and the graph is
    block-diagonal (no padding). With N(i) = all tokens, graph attention is exactly dense
    self-attention (docs/math.md, eq. 4). Edges are sorted by target, then source, so
    ``scores.view(n, n)[i, j]`` is α_ij for one sequence with self-loops.

    Args:
        n: number of tokens of a single sequence.
        lengths: per-sequence token counts of a batch; give either ``n`` or ``lengths``.
        self_loops: include the edge i → i (default True, as dense attention does).
        device: where edge_index lives.

    Shapes:
        edge_index [2, E] with E = Σ_b L_b² (or Σ_b L_b (L_b − 1) without self-loops).
    """
    if (n is None) == (lengths is None):
        raise ValueError("complete_graph takes either n or lengths=[...], not both and not neither")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        seq: tuple[int, ...] = (n,)
    else:
        assert lengths is not None
        seq = _lengths_tuple(lengths)
    lens = torch.tensor(seq, device=device)  # [B]
    num = int(lens.sum())
    starts = torch.cumsum(lens, 0) - lens  # [B]
    node_len = lens.repeat_interleave(lens)  # [N] length of each node's sequence
    node_start = starts.repeat_interleave(lens)  # [N]
    dst = torch.arange(num, device=device).repeat_interleave(node_len)  # [E]
    edge_start = torch.cumsum(node_len, 0) - node_len  # [N] first edge of each target
    src = node_start[dst] + torch.arange(dst.numel(), device=device) - edge_start[dst]  # [E]
    edge_index = torch.stack([src, dst])
    if not self_loops:
        edge_index = edge_index[:, src != dst]
    return TokenGraph(
        edge_index,
        num,
        num,
        structure="complete",
        lengths=seq if lengths is not None else None,
        params={"self_loops": self_loops},
        validate=False,
    )


def from_mask(mask: Tensor) -> TokenGraph:
    """Build a TokenGraph from a boolean mask [N_t, N_s] in the SDPA convention.

    .. math:: N(i) = \\{ j : mask[i, j] \\}

    Edges come out sorted by target, then source. A full mask is tagged ``"complete"``.

    Raises:
        TypeError: the mask is not boolean (float masks are additive biases, not graphs).
        ValueError: the mask is not 2-D.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"mask must be boolean (True = may attend), got dtype {mask.dtype}; an additive "
            "float mask is a score bias, not a graph"
        )
    if mask.dim() != 2:
        raise ValueError(f"mask must have shape [N_t, N_s], got {list(mask.shape)}")
    num_dst, num_src = mask.shape
    dst, src = mask.nonzero(as_tuple=True)
    full = bool(mask.all()) and num_dst == num_src and num_src > 0
    return TokenGraph(
        torch.stack([src, dst]),
        num_src,
        num_dst,
        structure="complete" if full else None,
        params={"self_loops": True} if full else None,
        validate=False,
    )
