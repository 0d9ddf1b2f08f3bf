"""Hugging Face model folders: `config.json` + `*.safetensors` (sharded or not), both ways.

A giraffe model folder *is* a Hugging Face folder, so what giraffe saves `transformers`
loads and the reverse. This module moves tensors (config.json fields are `hf_config`'s);
names go through `giraffe.formats.names`. It does not handle tokenizers or
generation defaults beyond writing the JSON it is given, nor what an encoder's
sentence-transformers modules (pooling, normalisation) say: that is `giraffe.embedder`'s.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from giraffe.config import ModelConfig
from giraffe.formats import names
from giraffe.formats.assemble import assemble, disassemble
from giraffe.formats.hf_config import config_from_hf, config_to_hf, read_json, weight_files
from giraffe.formats.hf_quantized import assemble_grouped, quantize_tensors
from giraffe.formats.names import WeightsError
from giraffe.models import Decoder, Encoder, Seq2Seq
from giraffe.quant import file_cache, step_image
from giraffe.quant.groupwise import GroupConfig, GroupQuantLinear
from giraffe.quant.linear import QuantLinear


def load_hf(folder: str | os.PathLike, dequantize: bool = False) -> Decoder | Encoder | Seq2Seq:
    """dequantize: a group-wise int8/int4 folder (hf_quantized.py) as float layers."""
    folder = Path(folder)
    raw = read_json(folder / "config.json")
    cfg = config_from_hf(raw, str(folder / "config.json"))
    handles, where = {}, {}
    for path in weight_files(folder):
        try:
            handles[path] = safe_open(str(path), framework="pt")
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise WeightsError(f"{path} is not a readable safetensors file ({e})") from None
        for key in handles[path].keys():
            where[_canonical(key, cfg)] = (path, key)
    fetch = lambda name: handles[where[name][0]].get_tensor(where[name][1])  # noqa: E731
    if "quantization_config" in raw:
        group = GroupConfig.from_json(raw["quantization_config"])
        model = assemble_grouped(cfg, group, set(where), fetch, str(folder), dequantize)
        if not dequantize:  # the next load of this folder may run without torch
            step_image.keep(model.runtime.step, file_cache.cache_dir_for(folder), cfg)
        return model
    return assemble(cfg, "hf", where, fetch, str(folder))


def _canonical(key: str, cfg: ModelConfig) -> str:
    # The original GPT-2 checkpoints name tensors without the "transformer." prefix.
    if cfg.arch == "gpt2" and not key.startswith(("transformer.", "lm_head.")):
        return "transformer." + key
    # A bare BertModel (MiniLM) saves its tensors without BertForMaskedLM's "bert.".
    if cfg.arch == "bert" and key.startswith(names.BERT_BODY):
        return names.BERT_PREFIX + key
    return key


def save_hf(
    model: Decoder | Encoder | Seq2Seq,
    folder: str | os.PathLike,
    extra_json: dict[str, dict] | None = None,
    group: GroupConfig | None = None,
) -> Path:
    """Write config.json + model.safetensors (+ any extra JSON files), each atomically.

    extra_json: file name -> content; a "config.json" entry adds its keys to the config
    written here (e.g. the tokenizer's pad_token_id / eos_token_id) instead of replacing it.
    group: store the projections group-wise in int8/int4 (see hf_quantized.py).
    """
    folder = Path(folder)
    packed = [n for n, m in model.named_modules() if isinstance(m, (QuantLinear, GroupQuantLinear))]
    if packed:
        raise ValueError(
            f"{packed[0]} (and {len(packed) - 1} more) hold quantized weights, which a float "
            "folder cannot store: load the model with packed=False to save it dequantized"
        )
    tensors = disassemble(model, "hf")
    if group is not None:  # before mkdir: a row the groups do not divide leaves nothing behind
        tensors = quantize_tensors(tensors, model.config, group)
        extra_json = {**(extra_json or {})}
        extra_json["config.json"] = {
            **extra_json.get("config.json", {}),
            "quantization_config": group.to_json(),
        }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(
        folder / "model.safetensors", lambda p: save_file(tensors, p, metadata={"format": "pt"})
    )
    head = getattr(model, "mlm_head", None) is not None
    extra = dict(extra_json or {})
    config = {**config_to_hf(model.config, head), "torch_dtype": "float32"}
    files = {"config.json": {**config, **extra.pop("config.json", {})}, **extra}
    for name, data in files.items():
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        atomic_write(folder / name, lambda p, t=text: Path(p).write_text(t, encoding="utf-8"))
    return folder


def atomic_write(path: Path, write) -> None:
    """write(tmp_path) then rename over `path`: a crash never leaves half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
