"""``gatattn verify``: the equivalence matrix, score functions × graphs × dtypes, against PyTorch.

Each case runs a GraphAttention layer and a reference on the same weights and input, then compares
the outputs and the gradients with respect to the input and every parameter:

* scaled_dot on complete graphs: ``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention``
  (with ``key_padding_mask`` for a batch of sequences of different lengths);
* every other score and bias (rotary positions and softcapping included), and the layer options
  grouped-query attention and attention sinks: the same formula computed densely on the full
  N × N matrix (``gatattn.reference``), on a complete and on an irregular graph (duplicate edges,
  an isolated target).

The error of a case is the largest, over the output and every gradient, of
max |got − ref| / max(1, max |ref|): the absolute error for tensors of magnitude up to 1, and the
error relative to the tensor's magnitude above (a weight gradient of magnitude 20 in fp32 carries
rounding of ~1e-5 in any implementation, PyTorch's own included). Bounds: fp64 1e-10, fp32 1e-5.
fp16/bf16 cases are compared with the fp64 golden; their bound is the larger of a fixed floor
(3e-2 bf16, 5e-3 fp16) and twice the error of the PyTorch reference itself run in the same dtype.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

import gatattn as ga

from ..reference import dense_reference
from . import progress_bar
from .options import check_seed

__all__ = ["Case", "run_matrix"]

N, H, D = 5, 3, 7  # pairwise-distinct sizes: a transposed axis fails
C = H * D
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}
HALF = {torch.bfloat16, torch.float16}
SCORES = [
    "dot",
    "additive",
    "gatv2",
    "cosine",
    "bilinear",
    "neg_distance",
    "scaled_dot+alibi",
    "scaled_dot+relative_position",
    "rotary",
    "softcap",
]
#: layer options beside the score: grouped-query keys/values and attention sinks
OPTIONS: dict[str, dict[str, object]] = {
    "gqa (num_kv_heads=1)": {"num_kv_heads": 1},
    "sinks": {"sinks": True},
}


@dataclass
class Case:
    """One row of the table."""

    name: str
    error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance  # NaN fails


Runner = Callable[[ga.GraphAttention, Tensor], Tensor]


def _irregular_graph() -> ga.TokenGraph:
    # duplicate edge 1→1, unsorted edges, self-loops, and target 4 with no incoming edge
    ei = torch.tensor([[0, 1, 1, 3, 2, 4, 2, 0], [1, 1, 1, 0, 3, 2, 2, 3]])
    return ga.TokenGraph(ei, N, N)


def _sdpa(layer: ga.GraphAttention, x: Tensor) -> Tensor:
    q = layer.q_proj(x).view(-1, H, D).transpose(0, 1)  # [H, N, D]
    k = layer.k_proj(x).view(-1, H, D).transpose(0, 1)
    v = layer.v_proj(x).view(-1, H, D).transpose(0, 1)
    out = F.scaled_dot_product_attention(q, k, v)  # [H, N, D]
    return layer.out_proj(out.transpose(0, 1).reshape(-1, C))


def _mha_padded(lengths: list[int]) -> Runner:
    """nn.MultiheadAttention's own forward (F.multi_head_attention_forward) on the layer's
    weights, so gradients reach the layer's parameters; sequences are padded and masked."""

    def run(layer: ga.GraphAttention, x: Tensor) -> Tensor:
        seqs = list(x.split(lengths))
        padded = torch.nn.utils.rnn.pad_sequence(seqs)  # [L, B, C] (MHA's sequence-first layout)
        pad = torch.arange(padded.size(0))[None, :] >= torch.tensor(lengths)[:, None]  # [B, L]
        w = torch.cat([layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight])
        b = torch.cat([layer.q_proj.bias, layer.k_proj.bias, layer.v_proj.bias])
        y, _ = F.multi_head_attention_forward(
            padded,
            padded,
            padded,
            C,
            H,
            w,
            b,
            None,
            None,
            False,
            0.0,
            layer.out_proj.weight,
            layer.out_proj.bias,
            training=False,
            key_padding_mask=pad,
            need_weights=False,
        )  # [L, B, C]
        return torch.cat([y[:n, i] for i, n in enumerate(lengths)])

    return run


def _dense_formula(graph: ga.TokenGraph) -> Runner:
    return lambda layer, x: dense_reference(layer, x, graph).out


def _errors(want: list[Tensor | None], got: list[Tensor | None]) -> float:
    """max over paired tensors of max |got - want| / max(1, max |want|)."""
    err = 0.0
    for w, g in zip(want, got):
        if w is None or g is None:
            if (w is None) != (g is None):
                return float("nan")
            continue
        diff = float((g.detach().double() - w.detach().double()).abs().max())
        diff /= max(1.0, float(w.detach().abs().max()))
        if diff != diff:
            return diff
        err = max(err, diff)
    return err


def _compare(
    layer64: ga.GraphAttention,
    graph: ga.TokenGraph,
    dtype: torch.dtype,
    golden: Runner,
    x64: Tensor,
    grad64: Tensor,
) -> tuple[float, float]:
    """(error, tolerance) over output, input gradient and parameter gradients.

    The error is max |got - ref| / max(1, max |ref|) per tensor (see the module docstring).
    fp64/fp32: against the reference, with the fixed bounds in TOLERANCE.
    fp16/bf16: against the fp64 golden. The bound is the larger of TOLERANCE and twice
    the error that the PyTorch reference itself makes in the same dtype (its own rounding sets
    the floor: cosine scores, for example, reach |α| = τ = 10, where bf16 keeps ~2 digits).
    """

    def run(layer: ga.GraphAttention, x: Tensor, fn: Runner) -> list[Tensor | None]:
        x = x.clone().requires_grad_(True)
        out = fn(layer, x)
        out.backward(grad64.to(out.dtype))
        return [out, x.grad, *(p.grad for p in layer.parameters())]

    want = run(copy.deepcopy(layer64), x64, golden)
    cand = copy.deepcopy(layer64).to(dtype)
    got = run(cand, x64.to(dtype), lambda m, x: m(x, graph))
    tol = TOLERANCE[dtype]
    if dtype in HALF:
        torch_low = run(copy.deepcopy(layer64).to(dtype), x64.to(dtype), golden)
        tol = max(tol, 2 * _errors(want, torch_low))
    return _errors(want, got), tol


def run_matrix(quick: bool = False, progress: bool = False, seed: int = 0) -> list[Case]:
    """Run the equivalence matrix and return one Case per (reference, score, graph, dtype).

    ``progress``: a progress bar on stderr, shown only when stderr is a terminal.
    """
    dtypes = [torch.float64, torch.float32]
    if not quick:
        dtypes += [torch.bfloat16, torch.float16]
    lengths = [3, 6, 4]
    plan: list[tuple[str, str, ga.TokenGraph, Runner]] = [
        ("sdpa", "scaled_dot", ga.complete_graph(N), _sdpa),
        ("mha", "scaled_dot", ga.complete_graph(N), _mha_padded([N])),
        ("mha+padding", "scaled_dot", ga.complete_graph(lengths=lengths), _mha_padded(lengths)),
    ]
    graphs = [("complete", ga.complete_graph(N)), ("irregular", _irregular_graph())]
    if not quick:
        graphs.append(("batched", ga.complete_graph(lengths=[2, 3])))
    for score in [*(["scaled_dot"] if not quick else []), *SCORES, *OPTIONS]:
        for gname, graph in graphs:
            plan.append((f"dense:{gname}", score, graph, _dense_formula(graph)))
    jobs = [(p, dt) for p in plan for dt in dtypes]
    cases = []
    for (ref, score, graph, golden), dtype in progress_bar(
        jobs, desc="gatattn verify", enabled=progress
    ):
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        n = graph.num_dst
        opts = OPTIONS.get(score, {"score": score})
        layer = ga.GraphAttention(C, H, backend="auto", **opts).double()  # type: ignore[arg-type]
        with torch.no_grad():  # non-zero biases (and sink logits), so a bias bug cannot hide
            for p in layer.parameters():
                if p.dim() == 1 and p.numel() in (C, H):
                    p.normal_(0, 0.1, generator=gen)
        x = torch.randn(n, C, dtype=torch.float64, generator=gen)
        grad = torch.randn(n, C, dtype=torch.float64, generator=gen)
        err, tol = _compare(layer, graph, dtype, golden, x, grad)
        name = f"{score:<28} {ref:<16} {str(dtype).replace('torch.', ''):<9}"
        cases.append(Case(name, err, tol))
    return cases


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Prove that graph attention equals PyTorch's attention: outputs and gradients of every "
        "score function on complete, batched and irregular graphs, in fp64/fp32/bf16/fp16."
    )
    parser.add_argument("--quick", action="store_true", help="fp64/fp32 only, fewer graphs")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    check_seed(args.seed)
    cases = run_matrix(
        quick=args.quick, progress=not args.no_progress and not args.quick, seed=args.seed
    )
    print(f"{'case':<56} {'max abs err*':>12} {'tolerance':>10}  result")
    for c in cases:
        print(
            f"{c.name:<56} {c.error:>12.3e} {c.tolerance:>10.1e}  {'pass' if c.passed else 'FAIL'}"
        )
    failed = sum(not c.passed for c in cases)
    print("* max |got - ref| / max(1, max |ref|) over the output and every gradient")
    print(
        f"\n{len(cases) - failed}/{len(cases)} cases passed"
        + ("" if not failed else f"; {failed} FAILED")
    )
    return 1 if failed else 0
