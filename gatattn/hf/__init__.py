"""Hugging Face ``transformers`` models as graph attention (docs/hf.md; ``pip install gatattn[hf]``).

* ``convert(model)``: the same model (a copy by default), every attention run by gatattn on a
  TokenGraph; every weight and state_dict key kept. ``gatattn.convert`` dispatches here.
* ``attention_graphs(model, text, tokenizer=tok)``: one ``ga.Attention`` per layer, with the
  word pieces as tokens, for NetworkX export, rollout, flow and ``ga.plot.attention_html``.
* ``load_folder(path)``: a local model folder (config, safetensors, tokenizer), converted.

transformers is imported only when one of these runs: ``import gatattn`` stays light.
"""

from .attention import GraphSettings, UnsupportedModelError, graph_attention
from .families import FAMILIES, convert, is_hf_model, register, supported_modules
from .folder import load_folder
from .graphs import ModelGraphs, attention_graphs, compact

__all__ = [
    "FAMILIES",
    "GraphSettings",
    "ModelGraphs",
    "UnsupportedModelError",
    "attention_graphs",
    "compact",
    "convert",
    "graph_attention",
    "is_hf_model",
    "load_folder",
    "register",
    "supported_modules",
]
