"""GGUF files (llama.cpp's format): weights in, weights (and a vocabulary) out.

Reading (header through `giraffe.files.gguf_reader`): the architecture metadata becomes
a `ModelConfig`; tensors are dequantized to float32 (or kept packed, `gguf_packed`) and
renamed through `giraffe.formats.names`, undoing llama.cpp's RoPE row permutation.
Writing (with the `gguf` package): F32/F16 and block-quantized tensors (`giraffe.quant.ptq`), architecture
metadata, and the tokenizer fields a caller hands in. This module does not build tokenizers; `giraffe.tokenizer` reads
the same file for that, and hands writers its fields.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from giraffe.formats.assemble import assemble, disassemble
from giraffe.formats.gguf_config import (  # noqa: F401 - config_from_gguf, field, open_gguf: this module's API
    GGUF_FAMILIES,
    config_from_gguf,
    field,
    gguf_arch,
    open_gguf,
    write_hparams,
)
from giraffe.formats.gguf_packed import (
    build_runtime,
    install_packed,
    packable,
    warn_unpacked_types,
)
from giraffe.formats.names import GGUF_ROPE_PERMUTED, WeightsError
from giraffe.models import Decoder
from giraffe.quant.blocks import dequantize
from giraffe.quant.ptq import quantize_matrix


def tensor_to_torch(t) -> torch.Tensor:
    """Dequantize one GGUF tensor to float32 in torch's (rows, cols) order."""
    shape = tuple(int(n) for n in reversed(t.shape))  # ggml lists the fastest dimension first
    try:
        return dequantize(t.data, t.tensor_type.name, shape)
    except ValueError as e:
        raise WeightsError(f"tensor {t.name}: {e}") from None


def load_gguf(path: str | os.PathLike, reader=None, packed: bool = False) -> Decoder:
    """Load weights; pass an already opened `reader` to avoid parsing the header twice.

    packed=True keeps block-quantized matrices (every type `giraffe.quant.types` lists) in
    their blocks or int8 tiles (`giraffe.quant.linear`, one resident copy) instead of
    dequantizing them to float32: a quarter to a sixth of the memory traffic. A type the
    kernels lack is dequantized, with one warning naming it.
    """
    reader = reader or open_gguf(path)
    cfg = config_from_gguf(reader, str(path))
    by_name = {t.name: t for t in reader.tensors}
    permuted = field(reader, "general.architecture") in GGUF_ROPE_PERMUTED
    keep = packable(cfg, by_name) if packed else {}
    if packed:
        warn_unpacked_types(by_name)

    def fetch(name: str) -> torch.Tensor:
        if name in keep:  # a shape-only stand-in; the packed layer replaces it below
            return torch.empty(tuple(int(n) for n in reversed(by_name[name].shape)), device="meta")
        return tensor_to_torch(by_name[name])

    model = assemble(cfg, "gguf", by_name, fetch, str(path), rope_permuted=permuted)
    for rule in keep.values():
        install_packed(model, rule, by_name[rule.theirs], permuted)
    if keep:  # the packed fast path, attached explicitly: without it, the plain modules
        model.attach_runtime(build_runtime(model, reader))
    return model


def save_gguf(
    model: Decoder,
    path: str | os.PathLike,
    dtype: str = "f32",
    name: str = "giraffe",
    tokenizer: dict | None = None,
) -> Path:
    """Write the model's weights and architecture metadata.

    dtype: "f32", "f16", "bf16", or a ggml block type ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1",
    "q4_k", "q5_k", "q6_k") for 2-D weights; a matrix whose rows the blocks do not divide
    falls back as llama.cpp's quantizer does (`giraffe.quant.ptq.target_type`).
    tokenizer: vocabulary fields to embed (see `giraffe.tokenizer.gguf_tokenizer_fields`);
    without them the file holds weights only, which llama.cpp cannot run.
    """
    import gguf

    cfg = model.config
    arch = gguf_arch(cfg)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_name(name)
    config_tensors = write_hparams(writer, cfg)
    if tokenizer is not None:
        _write_tokenizer(writer, tokenizer)
    for tname, array in config_tensors.items():
        writer.add_tensor(tname, array)
    for tname, tensor in disassemble(
        model, "gguf", rope_permuted=arch in GGUF_ROPE_PERMUTED
    ).items():
        _add_tensor(writer, tname, tensor.float().numpy(), dtype.upper())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)
    return path


def _write_tokenizer(writer, t: dict) -> None:
    """tokenizer: the fields of `giraffe.tokenizer.gguf_tokenizer_fields`."""
    if "copy" in t:  # a vocabulary read from GGUF: its keys as they were
        return _copy_tokenizer_keys(writer, t["copy"])
    writer.add_tokenizer_model(t["model"])
    writer.add_tokenizer_pre(t["pre"])
    writer.add_token_list(t["tokens"])
    writer.add_token_types(t["token_types"])
    writer.add_token_merges(t["merges"])
    for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                     ("pad_token_id", writer.add_pad_token_id)):  # fmt: skip
        if t.get(key) is not None:
            add(t[key])
    writer.add_add_bos_token(bool(t.get("add_bos_token")))
    if t.get("chat_template"):
        writer.add_chat_template(t["chat_template"])


def _copy_tokenizer_keys(writer, keys: list[tuple[str, str, object]]) -> None:
    from gguf import GGUFValueType as T

    scalar = {"str": T.STRING, "u32": T.UINT32, "bool": T.BOOL}
    array = {"str[]": T.STRING, "f32[]": T.FLOAT32, "i32[]": T.INT32, "u8[]": T.UINT8}
    for key, kind, value in keys:
        if kind in scalar:
            writer.add_key_value(key, value, scalar[kind])
        else:
            writer.add_key_value(key, list(value), T.ARRAY, sub_type=array[kind])


def _add_tensor(writer, name: str, array: np.ndarray, dtype: str) -> str:
    """Add one tensor; returns the type it was stored in (see `giraffe.quant.ptq`)."""
    import gguf

    # ggml keeps 1-D tensors (norms, biases) in float32 whatever the file type.
    if array.ndim < 2:
        writer.add_tensor(name, array)
        return "F32"
    data, actual = quantize_matrix(array, dtype)
    if actual in ("F32", "F16"):
        writer.add_tensor(name, data)
    else:
        writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType[actual])
    return actual
