"""Model files in and out: Hugging Face folders, GGUF, the alias registry, the name table.

`load_weights(path)` picks the reader from what the path is. Tokenizers are read by
`giraffe.tokenizer`; this package only moves weights and architecture configs. Its
names load on first use: the registry, the name table and the config readers import no
torch, and `giraffe models`, `tokenize` and `info` start without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from giraffe.formats.names import WeightsError
from giraffe.formats.registry import ModelNotFound, resolve

if TYPE_CHECKING:
    from giraffe.models import Decoder

_LAZY = {"load_gguf": "gguf", "save_gguf": "gguf", "load_hf": "hf", "save_hf": "hf"}


def load_weights(path: str | Path, packed: bool | None = None) -> Decoder:
    """A .gguf file or a Hugging Face folder -> Decoder in eval mode (float32).

    packed=False: a folder of group-wise int8/int4 weights comes back dequantized."""
    from giraffe.formats.gguf import load_gguf
    from giraffe.formats.hf import load_hf

    path = Path(path)
    if path.is_dir():
        return load_hf(path, dequantize=packed is False)
    if path.suffix.lower() == ".gguf":
        return load_gguf(path)
    raise WeightsError(
        f"{path}: giraffe reads .gguf files and Hugging Face model folders (config.json + "
        "*.safetensors); this is neither"
    )


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"giraffe.formats.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'giraffe.formats' has no attribute {name!r}")


__all__ = [
    "ModelNotFound",
    "WeightsError",
    "load_gguf",
    "load_hf",
    "load_weights",
    "resolve",
    "save_gguf",
    "save_hf",
]
