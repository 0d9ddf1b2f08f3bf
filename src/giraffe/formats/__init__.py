"""Model files in and out: Hugging Face folders, GGUF, the alias registry, the name table.

`load_weights(path)` picks the reader from what the path is. Tokenizers are read by
`giraffe.tokenizer`; this package only moves weights and architecture configs.
"""

from __future__ import annotations

from pathlib import Path

from giraffe.formats.assemble import WeightsError
from giraffe.formats.gguf import load_gguf, save_gguf
from giraffe.formats.hf import load_hf, save_hf
from giraffe.formats.registry import ModelNotFound, resolve
from giraffe.models import Decoder


def load_weights(path: str | Path, packed: bool | None = None) -> Decoder:
    """A .gguf file or a Hugging Face folder -> Decoder in eval mode (float32).

    packed=False: a folder of group-wise int8/int4 weights comes back dequantized."""
    path = Path(path)
    if path.is_dir():
        return load_hf(path, dequantize=packed is False)
    if path.suffix.lower() == ".gguf":
        return load_gguf(path)
    raise WeightsError(
        f"{path}: giraffe reads .gguf files and Hugging Face model folders (config.json + "
        "*.safetensors); this is neither"
    )


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
