"""Activation checkpointing (torch.utils.checkpoint, non-reentrant) works with every backend.

A stack of two GraphTransformerBlocks with one backend forced runs with and without
``checkpoint(block, x, graph, use_reentrant=False)``: the recomputation in the backward must give
the same gradients. The checkpointed run gets a graph that no forward has used yet, so its first
forward fills the graph's caches (deferred edges, block layouts) and the recomputation reads
them: non-reentrant checkpointing then checks that the recomputation saves the same tensors.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import gatattn as ga

pytestmark = pytest.mark.usefixtures("one_thread")

H = 3
GRAPHS: dict[str, Callable[[], ga.TokenGraph]] = {
    "edge": lambda: ga.window_graph(lengths=[37, 29], window=4),
    "dense": lambda: ga.causal_graph(lengths=[13, 11]),
    "block": lambda: ga.window_graph(97, 9),
    "flex": lambda: ga.window_graph(160, 9),
}


def _stack(backend: str, head_dim: int, dtype: torch.dtype, device: str) -> nn.ModuleList:
    torch.manual_seed(0)
    C = H * head_dim
    blocks = [ga.GraphTransformerBlock(C, H, ffn_dim=22, backend=backend) for _ in range(2)]
    return nn.ModuleList(blocks).to(device, dtype)


def _grads(
    stack: nn.ModuleList, x: torch.Tensor, graph: ga.TokenGraph, checkpointed: bool
) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    h = x
    for block in stack:
        h = checkpoint(block, h, graph, use_reentrant=False) if checkpointed else block(h, graph)
    torch.manual_seed(1)
    (h * torch.randn_like(h)).sum().backward()
    assert x.grad is not None
    return [x.grad, *(p.grad for p in stack.parameters() if p.grad is not None)]


@pytest.mark.parametrize("backend", ["edge", "dense", "block", "flex"])
def test_checkpointed_gradients_equal_plain(backend: str, within_torch_error) -> None:
    if backend == "flex" and not torch.cuda.is_available():
        pytest.skip("flex runs on CUDA only")
    device = "cuda" if backend == "flex" else "cpu"
    dtype = torch.float32 if backend == "flex" else torch.float64
    head_dim = 16 if backend == "flex" else 5  # FlexAttention kernels want D >= 16
    stack = _stack(backend, head_dim, dtype, device)
    calls = []
    for block in stack:
        block.self_attn.register_forward_hook(lambda *_: calls.append(1))
    g = GRAPHS[backend]().to(device)
    x = torch.randn(g.num_dst, H * head_dim, dtype=dtype, device=device)  # [N, C]
    probe = stack[0].self_attn
    assert probe.explain_backend(x, g).startswith(f"{backend}:")

    plain = _grads(stack, x, g, checkpointed=False)
    assert len(calls) == 2
    stack.zero_grad()
    fresh = GRAPHS[backend]().to(device)  # nothing cached yet
    ckpt = _grads(stack, x, fresh, checkpointed=True)
    assert len(calls) == 2 + 4  # forward and recomputation of each block: checkpointing ran
    assert len(ckpt) == len(plain) == 1 + len(list(stack.parameters()))
    if dtype == torch.float64:
        for a, b in zip(ckpt, plain, strict=True):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    else:  # fp32 on CUDA: both against the fp64 edge-backend golden, as the backend tests do
        gold_stack = copy.deepcopy(stack).double()
        for block in gold_stack:
            block.self_attn.backend = "edge"
        gold = _grads(gold_stack, x.double(), g, checkpointed=False)
        for a, b, c in zip(ckpt, plain, gold, strict=True):
            within_torch_error(a, b, c, factor=4.0, what=f"{backend} checkpointed")


def test_checkpoint_with_attention_dropout_replays_the_same_mask() -> None:
    """Dropout on the attention weights: checkpoint restores the RNG state for the recompute,
    so the gradients equal the plain run's with the same seed."""
    torch.manual_seed(0)
    block = ga.GraphTransformerBlock(15, H, ffn_dim=22, attn_dropout=0.3, backend="edge").double()
    g = ga.window_graph(31, 3)
    x = torch.randn(31, 15, dtype=torch.float64)  # [N, C]
    runs = []
    for checkpointed in (False, True):
        block.zero_grad()
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(7)
        y = checkpoint(block, xi, g, use_reentrant=False) if checkpointed else block(xi, g)
        y.sum().backward()
        runs.append([xi.grad, *(p.grad for p in block.parameters())])
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
