"""Put GGUF block tensors into a model as packed layers instead of float32 weights.

Chooses which tensors can stay packed (2-D, a block type the kernel knows, one giraffe
weight each or a fused q/k/v, the token embedding and an untied output head) and swaps
the model's `nn.Linear` / `nn.Embedding` for `giraffe.quant.linear` layers over the raw
bytes - views of the memory-mapped file, not copies. Products that will run on the int8
GEMM are compacted at once (their tiles become the one resident copy and the file's pages
are handed back); an untied embedding only looks rows up, so it stays in the file's
blocks and costs memory only for the rows read. Row permutations from the name table
(llama.cpp's RoPE order) apply to packed rows as to float rows, since blocks run along
the input dimension. It does not parse files; `gguf.py` hands it the reader's tensors.
"""

from __future__ import annotations

import warnings

import torch

from giraffe.config import ModelConfig
from giraffe.formats import names
from giraffe.formats.assemble import WeightsError
from giraffe.quant import kernels, tile_cache
from giraffe.quant.decode_step import FastDecode
from giraffe.quant.linear import (
    KERNEL_KINDS,
    FusedQuant,
    QuantEmbedding,
    QuantLinear,
    int8_activations,
)
from giraffe.quant.tile_cache import TileCache

FLOAT_TYPES = ("F32", "F16")


def packable(cfg: ModelConfig, tensors: dict) -> dict[str, names.Rule]:
    """External name -> rule for every tensor that can stay packed."""
    keep = {}
    for rule in names.expand("gguf", cfg):
        t = tensors.get(rule.theirs)
        if t is None or t.tensor_type.name not in KERNEL_KINDS or len(t.shape) != 2:
            continue
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
    raw = torch.from_numpy(tensor.data)  # (rows, bytes per row): no bytes read yet
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


def fuse_projections(model, reader=None) -> None:
    """One kernel call for q/k/v and one for gate/up in every layer, where all are packed
    alike; products compacted to their int8 tiles (the file's pages handed back to
    `reader`); compiled prompt attention; the compiled decode step where every layer
    qualifies (built last: it keeps pointers to whichever form is resident)."""
    cache = _tile_cache(reader)
    repack = None if cache is None else cache.repack
    for block in model.layers:
        attn, mlp = block.attn, block.mlp
        attn.fused_qkv = FusedQuant.of([attn.q_proj, attn.k_proj, attn.v_proj], repack)
        attn.causal_kernel = kernels.attention_causal if kernels.available() else None
        if mlp.gated:
            mlp.fused_gate_up = FusedQuant.of([mlp.gate_proj, mlp.up_proj], repack)
    compact(model, reader, repack)
    if cache is not None:
        cache.finish()
    model.fast_decode = FastDecode.build(model)


def _tile_cache(reader) -> TileCache | None:
    """Tiles of this file kept on disk between loads (when the reader maps a file)."""
    if not hasattr(reader, "map_span") or not tile_cache.enabled() or not int8_activations():
        return None
    return TileCache(reader.path, *reader.map_span())


def compact(model, reader=None, repack=None) -> None:
    """Every packed product keeps one resident copy (QuantLinear.compact). An untied
    embedding is only looked up: it stays in the file's blocks, read row by row."""
    release = None
    if hasattr(reader, "release"):

        def release(t: torch.Tensor) -> None:
            reader.release(t.data_ptr(), t.numel() * t.element_size())

    lookups_only = getattr(model.embed, "table", None) if model.lm_head is not None else None
    for block in model.layers:
        for fused in (block.attn.fused_qkv, getattr(block.mlp, "fused_gate_up", None)):
            if fused is not None:
                fused.compact(release, repack)
    for m in model.modules():
        if isinstance(m, QuantLinear) and m is not lookups_only:
            m.compact(release, repack)
