"""Put GGUF block tensors into a model as packed layers instead of float32 weights.

Chooses which tensors can stay packed (2-D, a block type the kernel knows - F16 and BF16
included, which the float kernel reads in place - one giraffe
weight each or a fused q/k/v, the token embedding and an untied output head) and swaps
the model's `nn.Linear` / `nn.Embedding` for `giraffe.quant.linear` layers over the raw
bytes - views of the memory-mapped file, not copies. Products that will run on the int8
GEMM are compacted at once (their tiles become the one resident copy and the file's pages
are handed back); an untied embedding only looks rows up, so it stays in the file's
blocks and costs memory only for the rows read. `build_runtime` makes the model's packed
runtime (`giraffe.quant.runtime`) with this file's tile cache; `gguf.py` attaches it.
Row permutations from the name table (llama.cpp's RoPE order) apply to packed rows as
to float rows, since blocks run along the input dimension. It does not parse files;
`gguf.py` hands it the reader's tensors.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from giraffe.config import ModelConfig
from giraffe.formats import names
from giraffe.formats.names import WeightsError
from giraffe.quant import file_cache, step_image
from giraffe.quant.linear import KERNEL_KINDS, QuantEmbedding, QuantLinear, int8_activations
from giraffe.quant.runtime import PackedRuntime
from giraffe.quant.tile_cache import TileCache
from giraffe.quant.types import BLOCK_TYPES

FLOAT_TYPES = ("F32", "F16")


def packable(cfg: ModelConfig, tensors: dict) -> dict[str, names.Rule]:
    """External name -> rule for every tensor that can stay packed."""
    keep = {}
    for rule in names.expand("gguf", cfg):
        t = tensors.get(rule.theirs)
        if t is None or t.tensor_type.name not in KERNEL_KINDS or len(t.shape) != 2:
            continue
        if t.shape[0] % BLOCK_TYPES[t.tensor_type.name].weights:
            continue  # an F16/BF16 row the kernels cannot walk 32 at a time: stays float
        projection = all(n.endswith("_proj.weight") for n in rule.ours)
        if projection or rule.ours in (("embed.weight",), ("lm_head.weight",)):
            keep[rule.theirs] = rule
    return keep


def warn_unpacked_types(tensors: dict) -> None:
    """One warning naming the block types the kernels lack (those tensors run dequantized)."""
    missing = sorted(
        {t.tensor_type.name for t in tensors.values()} - set(KERNEL_KINDS) - set(FLOAT_TYPES)
    )
    if missing:
        warnings.warn(
            f"giraffe has no packed kernel for block type(s) {', '.join(missing)}: those "
            "tensors are dequantized to float32 (the reference path: slower, more memory)",
            stacklevel=3,
        )


def install_packed(model, rule: names.Rule, tensor, rope_permuted: bool) -> None:
    """Swap in the packed layer(s) of one file tensor, over a view of the mapped file."""
    kind = tensor.tensor_type.name
    # (rows, bytes per row): no bytes read yet (an F16 tensor comes as float16 values)
    raw = torch.from_numpy(tensor.data.view(np.uint8))
    in_features = int(tensor.shape[0])
    for name, rows in names.to_giraffe(rule, raw, model.config, rope_permuted).items():
        owner_path, _, attr = name.removesuffix(".weight").rpartition(".")
        owner = model.get_submodule(owner_path)  # "" is the model itself
        old = getattr(owner, attr)
        try:
            if isinstance(old, torch.nn.Embedding):
                new = QuantEmbedding(rows, kind, old.num_embeddings, old.embedding_dim)
            else:
                new = QuantLinear(rows, kind, in_features, rows.shape[0], old.bias)
        except ValueError as e:
            raise WeightsError(f"tensor {tensor.name}: {e}") from None
        setattr(owner, attr, new)


def build_runtime(model, reader=None) -> PackedRuntime:
    """The model's packed runtime (fused products, compiled attention and decode step;
    giraffe.quant.runtime), its int8 tiles taken from and recorded in this file's tile
    cache, and the file's pages of every ggml block dropped handed back to `reader`.
    The caller attaches it (`model.attach_runtime`)."""
    cache = _tile_cache(reader)
    release = None
    if hasattr(reader, "release"):

        def release(t: torch.Tensor) -> None:
            reader.release(t.data_ptr(), t.numel() * t.element_size())

    runtime = PackedRuntime.build(model, None if cache is None else cache.repack, release)
    if cache is not None:
        cache.finish()
        # the next load of this file may run without torch (formats/saved_step.py)
        step_image.keep(runtime.step, cache.dir, model.config, reader, cache.offset_of)
    return runtime


def _tile_cache(reader) -> TileCache | None:
    """Tiles of this file kept on disk between loads (when the reader maps a file)."""
    if not hasattr(reader, "map_span") or not file_cache.enabled() or not int8_activations():
        return None
    return TileCache(reader.path, *reader.map_span())
