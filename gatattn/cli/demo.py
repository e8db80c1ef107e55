"""``gatattn demo``: where do W_q, W_k, W_v come from? (docs/demo.md)

They are ordinary, randomly initialised weight matrices, learned by backprop like any other
weights. This demo shows it happen. A tiny transformer built from GraphAttention layers
(``GraphTransformerBlock`` on the complete token graph) starts from a random initialisation and
learns the toy task "copy the previous token",

    y_i = t_{i-1}   (i = 1 .. L-1; position 0 has no target)

with the cross-entropy loss. It then reports

* the loss, falling from about log V (chance),
* how far each W_q, W_k, W_v moved:  ||W_after - W_before||_F / ||W_before||_F,
* each head's attention graph before and after training (PNG heatmaps of Attn_ij, eq. 2),
* head specialisation: the mean weight each head puts on the previous token,
  prev_h = mean_{i>=1} Attn_h(i, i-1); 1/L at random, close to 1 for a previous-token head.

Same seed, same numbers (the data come from a seeded generator and the ops are deterministic on CPU).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gatattn as ga

from . import progress_bar
from ._toy import ToyEncoder, dense_weights
from .options import check_output_dir, check_positive, check_seed

__all__ = ["DemoResult", "TinyTransformer", "configure", "report", "run", "train_demo"]


class TinyTransformer(nn.Module):
    """Token + position embeddings, the toy encoder (``layers`` GraphTransformerBlocks and a
    LayerNorm, ``gatattn.cli._toy``), a linear read-out.

    Shapes:
        tokens [N] (B sequences of length L, concatenated), graph over N nodes -> logits [N, V].
    """

    def __init__(self, vocab: int, length: int, dim: int, heads: int, layers: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.encoder = ToyEncoder(dim, heads, layers)
        self.head = nn.Linear(dim, vocab)

    def embed(self, tokens: Tensor, graph: ga.TokenGraph) -> Tensor:
        return self.tok(tokens) + self.pos(graph.positions())  # [N, C]

    def forward(self, tokens: Tensor, graph: ga.TokenGraph) -> Tensor:
        return self.head(self.encoder(self.embed(tokens, graph), graph))  # [N, V]

    @torch.no_grad()
    def attention(self, tokens: Tensor, graph: ga.TokenGraph) -> list[Tensor]:
        """Attn per layer as dense matrices [H, N, N] (row i: the weights of target i, eq. 2)."""
        res = self.encoder.attentions(self.embed(tokens, graph), graph)
        return [dense_weights(r, tokens.numel()) for r in res]


@dataclass
class DemoResult:
    """What ``train_demo`` measured.

    Attributes:
        losses: training loss per step.
        accuracy: accuracy on a fresh batch after training.
        moved: relative Frobenius change of each W_q/W_k/W_v, e.g. ``{"layer 0 W_q": 0.8}``.
        prev_before, prev_after: previous-token weight per head [layers, H].
        pngs: the pictures written.
    """

    losses: list[float]
    accuracy: float
    moved: dict[str, float]
    prev_before: Tensor
    prev_after: Tensor
    pngs: list[Path] = field(default_factory=list)


def _batch(gen: torch.Generator, batch: int, length: int, vocab: int) -> tuple[Tensor, Tensor]:
    tokens = torch.randint(0, vocab, (batch, length), generator=gen)  # [B, L]
    target = torch.full_like(tokens, -100)  # ignored by cross_entropy at position 0
    target[:, 1:] = tokens[:, :-1]  # y_i = t_{i-1}
    return tokens.reshape(-1), target.reshape(-1)  # [N], [N]


def previous_token_weight(maps: list[Tensor], length: int) -> Tensor:
    """prev_h = mean_{i>=1} Attn_h(i, i-1) on one sequence, per layer and head -> [layers, H]."""
    i = torch.arange(1, length)
    return torch.stack([m[:, i, i - 1].mean(-1) for m in maps])


def _projections(model: TinyTransformer) -> dict[str, Tensor]:
    out = {}
    for li, block in enumerate(model.encoder.blocks):
        assert isinstance(block, ga.GraphTransformerBlock)
        att = block.self_attn
        for name, proj in (("W_q", att.q_proj), ("W_k", att.k_proj), ("W_v", att.v_proj)):
            out[f"layer {li} {name}"] = proj.weight.detach().clone()
    return out


def draw_attention(maps: list[Tensor], tokens: Tensor, path: Path, title: str) -> Path:
    """Each head's attention graph as a heatmap of Attn_ij (rows: query i, columns: key j)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, heads = len(maps), maps[0].size(0)
    labels = [str(int(t)) for t in tokens]
    fig, axes = plt.subplots(layers, heads, figsize=(3.2 * heads, 3.0 * layers), squeeze=False)
    for li, m in enumerate(maps):
        for h in range(heads):
            ax = axes[li][h]
            ax.imshow(m[h].numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
            ax.set_title(f"layer {li}, head {h}", fontsize=9)
            ax.set_xticks(range(len(labels)), labels, fontsize=6)
            ax.set_yticks(range(len(labels)), labels, fontsize=6)
            ax.set_xlabel("key j (token)", fontsize=7)
            ax.set_ylabel("query i", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def train_demo(
    *,
    steps: int = 300,
    seed: int = 0,
    out_dir: str | Path = "gatattn-demo",
    vocab: int = 11,
    length: int = 9,
    dim: int = 32,
    heads: int = 2,
    layers: int = 2,
    batch: int = 32,
    lr: float = 3e-3,
    progress: bool = True,
    draw: bool = True,
) -> DemoResult:
    """Train the tiny transformer on "copy the previous token" and measure what changed.

    Returns a ``DemoResult``; writes ``attention_before.png`` and ``attention_after.png`` to
    ``out_dir`` unless ``draw=False``. Raises ValueError for a non-positive ``steps``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    threads = torch.get_num_threads()
    # A model this small runs fastest on one thread (more threads only add sync overhead,
    # ~100x on a busy 2-core machine); restored on exit.
    torch.set_num_threads(1)
    try:
        return _train(
            steps, seed, Path(out_dir), vocab, length, dim, heads, layers, batch, lr, progress, draw
        )
    finally:
        torch.set_num_threads(threads)


def _train(
    steps: int,
    seed: int,
    out: Path,
    vocab: int,
    length: int,
    dim: int,
    heads: int,
    layers: int,
    batch: int,
    lr: float,
    progress: bool,
    draw: bool,
) -> DemoResult:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = TinyTransformer(vocab, length, dim, heads, layers)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    graph = ga.complete_graph(lengths=[length] * batch)  # B complete token graphs, block-diagonal
    probe_graph = ga.complete_graph(length)
    probe, _ = _batch(gen, 1, length, vocab)  # one sequence to draw

    before = _projections(model)
    maps_before = model.attention(probe, probe_graph)
    losses: list[float] = []
    bar = progress_bar(range(steps), desc="learning W_q, W_k, W_v", enabled=progress)
    for _ in bar:
        tokens, target = _batch(gen, batch, length, vocab)
        loss = F.cross_entropy(model(tokens, graph), target, ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", chance=f"{math.log(vocab):.3f}")
    bar.close()

    model.eval()
    with torch.no_grad():
        tokens, target = _batch(gen, batch, length, vocab)
        pred = model(tokens, graph).argmax(-1)  # [N]
        keep = target != -100
        accuracy = float((pred[keep] == target[keep]).float().mean())
    after = _projections(model)
    moved = {k: float((after[k] - before[k]).norm() / before[k].norm()) for k in before}
    maps_after = model.attention(probe, probe_graph)
    pngs = []
    if draw:
        pngs = [
            draw_attention(maps_before, probe, out / "attention_before.png", "before training"),
            draw_attention(maps_after, probe, out / "attention_after.png", "after training"),
        ]
    return DemoResult(
        losses,
        accuracy,
        moved,
        previous_token_weight(maps_before, length),
        previous_token_weight(maps_after, length),
        pngs,
    )


def report(res: DemoResult) -> str:
    """The demo's printed summary."""
    lines = [
        f"loss: {res.losses[0]:.3f} -> {res.losses[-1]:.3f}   accuracy after: {res.accuracy:.1%}",
        "How far the projections moved from their random start, ||W - W0||_F / ||W0||_F:",
    ]
    lines += [f"  {name:<12} {value:6.3f}" for name, value in res.moved.items()]
    lines.append("Mean attention on the previous token (1/L at random):")
    for li in range(res.prev_after.size(0)):
        for h in range(res.prev_after.size(1)):
            b, a = float(res.prev_before[li, h]), float(res.prev_after[li, h])
            lines.append(f"  layer {li} head {h}: {b:.2f} -> {a:.2f}")
    li, h = divmod(int(res.prev_after.argmax()), res.prev_after.size(1))
    lines.append(f"Previous-token head: layer {li}, head {h}.")
    lines += [f"wrote {p}" for p in res.pngs]
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gatattn demo``."""
    parser.description = __doc__
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", default="gatattn-demo", help="folder for the PNGs")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its report; exit code 0."""
    check_positive(args.steps, "--steps")
    check_seed(args.seed)
    check_output_dir(args.out)
    res = train_demo(
        steps=args.steps, seed=args.seed, out_dir=args.out, progress=not args.no_progress
    )
    print(report(res))
    return 0
