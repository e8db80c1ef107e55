"""A local Hugging Face model folder (config.json, *.safetensors, tokenizer files), converted.

Nothing is downloaded: transformers runs with ``local_files_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .families import convert

__all__ = ["load_folder"]


def load_folder(path: str | Path, *, backend: str = "auto") -> tuple[nn.Module, Any]:
    """Load the model and tokenizer saved in ``path`` and convert the model (``convert``).

    The model class comes from config.json (``AutoModel``: the bare encoder, no task head),
    the weights from its safetensors file, the tokenizer from its tokenizer files.

    Args:
        path: a folder written by ``model.save_pretrained(path)`` and
            ``tokenizer.save_pretrained(path)``.
        backend: the gatattn backend of every attention.

    Returns:
        (converted model in eval mode, tokenizer).

    Raises:
        FileNotFoundError: ``path`` is not a folder with a config.json.
        ImportError: transformers is missing (``pip install gatattn[hf]``).
        UnsupportedModelError: the model's attention is not supported (names the class).
    """
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a Hugging Face model folder")
    try:
        import transformers
    except ImportError as err:
        raise ImportError(f"loading {folder} needs transformers: pip install gatattn[hf]") from err
    model = transformers.AutoModel.from_pretrained(folder, local_files_only=True)
    model = convert(model.eval(), backend=backend, inplace=True)  # refuses before the tokenizer
    return model, transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
