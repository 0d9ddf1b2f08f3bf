"""Describe a model from its metadata alone (no weights loaded): config and file facts.

Used by `giraffe info`; it reads headers, never tensor data, and imports no torch.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from giraffe.config import ModelConfig
from giraffe.formats.gguf_config import config_from_gguf, open_gguf
from giraffe.formats.hf_config import config_from_hf, read_json, weight_files
from giraffe.formats.registry import resolve

FLOAT_TYPES = {"F32", "F16", "BF16"}


def describe(name_or_path: str) -> tuple[ModelConfig, dict]:
    path = resolve(name_or_path)
    if path.is_dir():
        raw = read_json(path / "config.json")
        cfg = config_from_hf(raw, str(path / "config.json"))
        files = weight_files(path)
        size = sum(f.stat().st_size for f in files)
        quant = raw.get("quantization_config")
        details = {
            "format": "Hugging Face folder",
            "path": str(path),
            "file_bytes": size,
            "quantized": [] if quant is None else [_folder_quantization(quant)],
        }
        return cfg, details
    reader = open_gguf(path)
    types = Counter(t.tensor_type.name for t in reader.tensors)
    details = {
        "format": "GGUF",
        "path": str(path),
        "file_bytes": Path(path).stat().st_size,
        "tensor_types": ", ".join(f"{n} x {t}" for t, n in types.most_common()),
        "quantized": sorted(set(types) - FLOAT_TYPES),
    }
    return config_from_gguf(reader, str(path)), details


def _folder_quantization(raw: dict) -> str:
    """A quantization_config in a few words: "int4 symmetric, groups of 32"."""
    if "bits" not in raw:
        return str(raw.get("quant_method", "quantized"))
    kind = "symmetric" if raw.get("symmetric", True) else "asymmetric"
    return f"int{raw['bits']} {kind}, groups of {raw.get('group_size')}"
