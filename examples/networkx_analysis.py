"""From attention to NetworkX: run layers, export a graph, PageRank, rollout, flow and pictures.

    python examples/networkx_analysis.py            # 9 tokens, 4 layers, writes out/networkx_analysis/
    python examples/networkx_analysis.py --quick    # 5 tokens, 2 layers

The layers are untrained (random weights), so the numbers show the mechanics, not language.
Edge u -> v of an exported graph means token v attended to token u (weight = Attn_vu).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import gatattn as ga


def main(quick: bool = False, out: str | Path = "out/networkx_analysis") -> dict[str, Any]:
    """Run the whole route and return what it computed (the tests check it)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tokens = "the quick brown fox jumps over the lazy dog".split()[: 5 if quick else None]
    n, C, H, L = len(tokens), 24, 3, 2 if quick else 4

    # 1. run a stack of graph-attention layers on the complete token graph
    x = torch.randn(n, C)  # [N, C] stand-in token embeddings
    graph = ga.complete_graph(n)
    attentions = []
    with torch.no_grad():
        for layer in [ga.GraphAttention(C, H) for _ in range(L)]:
            res = layer(x, graph, return_attention=True)  # scores/weights [N², H]
            x = F.layer_norm(x + res.out, (C,))  # [N, C] residual + norm, as in a transformer
            attentions.append(res)

    # 2. export the last layer and analyse it with NetworkX
    G = ga.to_networkx(attentions[-1], tokens=tokens)  # edge attrs "score", "weight", "count"
    ga.analysis.check_weights_sum(G)  # each token's incoming weights sum to 1
    rank = ga.analysis.pagerank(G)  # walks along attention: who gets attended to
    received = ga.analysis.strength(G, direction="out")
    print(f"{G}; strongest edges (key -> query):")
    for u, v, w in ga.analysis.top_edges(G, 3):
        print(f"  {tokens[u]:>6} -> {tokens[v]:<6} {w:.3f}")
    print("PageRank:", ", ".join(f"{tokens[i]} {p:.3f}" for i, p in sorted(rank.items())))

    # 3. follow attention through all layers (Abnar & Zuidema 2020)
    rollout = ga.attention_rollout(attentions)  # [N, N]
    flow = ga.attention_flow(attentions, targets=[0])  # [N, N], row 0 computed
    print(f"rollout of {tokens[0]!r}: " + " ".join(f"{v:.2f}" for v in rollout[0]))
    print(f"flow into {tokens[0]!r}:    " + " ".join(f"{v:.2f}" for v in flow[0]))

    # 4. files and pictures
    files = [
        ga.write_graph(G, out / "last_layer.graphml"),
        ga.write_graph(ga.layered_graph(attentions, tokens=tokens), out / "layers.json"),
    ]
    ga.plot.heatmap(attentions[-1], head="all", tokens=tokens, path=out / "heatmap.png")
    layered = ga.layered_graph(attentions, tokens=tokens)
    ga.plot.graph(layered, threshold=0.15, path=out / "layers.png")
    files += [out / "heatmap.png", out / "layers.png"]
    print("wrote", ", ".join(str(f) for f in files))
    return {
        "tokens": tokens,
        "graph": G,
        "pagerank": rank,
        "received": received,
        "rollout": rollout,
        "flow": flow,
        "files": files,
        "attentions": attentions,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 tokens, 2 layers")
    parser.add_argument("--out", default="out/networkx_analysis", help="output folder")
    args = parser.parse_args()
    main(quick=args.quick, out=args.out)
