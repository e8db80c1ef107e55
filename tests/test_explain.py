"""PyG's explainers on gatattn models (docs/pyg.md, "Explainability").

AttentionExplainer registers message hooks on every MessagePassing module and reads the ``alpha``
argument of ``message()``. GraphAttention then runs ``propagate`` so that alpha [E, H] arrives in
the INPUT edge order. The ground truth per edge is nn.MultiheadAttention's own weight matrix
(PyTorch's attention, not gatattn's), read at [i, j] for every input edge (j, i).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch_geometric.explain import AttentionExplainer, Explainer
from torch_geometric.explain.algorithm.utils import clear_masks, set_masks
from torch_geometric.nn import GATConv

import gatattn as ga

N, H, C = 7, 3, 15  # D = 5


def _graph(self_loops: bool) -> Tensor:
    """A ring (every node has an in-edge) plus chords; optionally a few self-loops. No duplicates."""
    ring = torch.stack([torch.arange(N), (torch.arange(N) + 1) % N])
    chords = torch.tensor([[0, 3, 5, 2, 6], [4, 1, 2, 6, 3]])
    parts = [chords[:, :2], ring, chords[:, 2:]]
    if self_loops:  # loops in the middle of the edge list, where reordering would show
        parts.insert(1, torch.tensor([[2, 5, 0], [2, 5, 0]]))
    return torch.cat(parts, 1)  # [2, E]


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.att1 = ga.GraphAttention(C, H)
        self.att2 = ga.GraphAttention(C, H)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.att2(torch.relu(self.att1(x, edge_index)), edge_index)


def _torch_edge_weights(layer: ga.GraphAttention, x: Tensor, ei: Tensor) -> Tensor:
    """Attn per input edge [E, H] from nn.MultiheadAttention with the graph as its mask."""
    mha = layer.to_torch(batch_first=True)
    allowed = torch.zeros(N, N, dtype=torch.bool)
    allowed[ei[1], ei[0]] = True  # SDPA convention [i, j]
    _, w = mha(x[None], x[None], x[None], attn_mask=~allowed, average_attn_weights=False)
    return w[0][:, ei[1], ei[0]].t()  # [E, H]


def _explainer(model: nn.Module) -> Explainer:
    return Explainer(
        model=model,
        algorithm=AttentionExplainer(reduce="max"),
        explanation_type="model",
        edge_mask_type="object",
        model_config=dict(mode="regression", task_level="node", return_type="raw"),
    )


@pytest.mark.parametrize("self_loops", [False, True], ids=["no_loops", "with_loops"])
def test_attention_explainer_aligns_edge_by_edge(self_loops: bool) -> None:
    model = TwoLayers().double().eval()
    ei = _graph(self_loops)
    x = torch.randn(N, C, dtype=torch.float64)
    mask = _explainer(model)(x, ei).edge_mask  # [E]
    with torch.no_grad():
        h = torch.relu(model.att1(x, ei))
        w1 = _torch_edge_weights(model.att1, x, ei)  # [E, H]
        w2 = _torch_edge_weights(model.att2, h, ei)  # [E, H]
    expected = torch.maximum(w1.amax(-1), w2.amax(-1))  # max over heads, then layers
    assert mask.shape == (ei.size(1),)
    for e in range(ei.size(1)):  # edge by edge: the mask of edge e is the weight of edge e
        assert abs(float(mask[e] - expected[e])) < 1e-12, (e, ei[:, e].tolist())


def test_explaining_does_not_change_the_output() -> None:
    model = TwoLayers().double().eval()
    ei, x = _graph(True), torch.randn(N, C, dtype=torch.float64)
    plain = model(x, ei)
    seen: list[Tensor] = []
    handle = model.att1.register_message_forward_hook(
        lambda m, kw, out: seen.append(kw[0]["alpha"])
    )
    hooked = model(x, ei)
    handle.remove()
    torch.testing.assert_close(hooked, plain, rtol=0, atol=1e-12)
    assert len(seen) == 1 and seen[0].shape == (ei.size(1), H)


def test_gnnexplainer_edge_masks_reach_the_messages() -> None:
    # set_masks (GNNExplainer, PGExplainer...) sets explain=True: messages are multiplied by the
    # mask, so an all-zero mask leaves only the output bias and an all-one mask changes nothing.
    layer = ga.GraphAttention(C, H).double().eval()
    ei, x = _graph(True), torch.randn(N, C, dtype=torch.float64)
    plain = layer(x, ei)
    set_masks(layer, torch.zeros(ei.size(1), dtype=torch.float64), ei, apply_sigmoid=False)
    zero = layer(x, ei)
    set_masks(layer, torch.ones(ei.size(1), dtype=torch.float64), ei, apply_sigmoid=False)
    one = layer(x, ei)
    clear_masks(layer)
    torch.testing.assert_close(zero, layer.out_proj.bias.expand(N, C), rtol=0, atol=1e-12)
    torch.testing.assert_close(one, plain, rtol=0, atol=1e-12)


@pytest.mark.parametrize("self_loops", [False, True], ids=["no_loops", "with_loops"])
def test_pyg_gatconv_misaligns_only_with_existing_self_loops(self_loops: bool) -> None:
    # GATConv removes the input's self-loops and appends fresh ones, so its alpha [E', H] is in
    # another edge order; AttentionExplainer truncates it to E rows and pairs row e with input
    # edge e. Ground truth: GATConv's own weights, looked up by (j, i) pair.
    conv = GATConv(C, 4, heads=H).double().eval()
    ei, x = _graph(self_loops), torch.randn(N, C, dtype=torch.float64)
    mask = _explainer(conv)(x, ei).edge_mask  # [E]
    with torch.no_grad():
        _, (out_ei, alpha) = conv(x, ei, return_attention_weights=True)
    keys = (out_ei[1] * N + out_ei[0]).tolist()
    row = {k: r for r, k in enumerate(keys)}
    truth = torch.stack([alpha[row[int(i) * N + int(j)]].amax() for j, i in ei.t()])  # [E]
    err = float((mask - truth).abs().max())
    if self_loops:
        assert err > 0.05  # misaligned (0.12 in the measurement, other weights here)
    else:
        assert err < 1e-12  # loops appended at the end: the first E rows still align
