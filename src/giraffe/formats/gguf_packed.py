"""Put GGUF block tensors into a model as packed layers instead of float32 weights.

Chooses which tensors can stay packed (2-D, a block type the kernel knows, one giraffe
weight each or a fused q/k/v) and swaps the model's `nn.Linear` / `nn.Embedding` for
`giraffe.quant.linear` layers holding the raw bytes. Row permutations from the name
table (llama.cpp's RoPE order) apply to packed rows as to float rows, since blocks run
along the input dimension. It does not parse files; `gguf.py` hands it the reader's tensors.
"""

from __future__ import annotations

import numpy as np
import torch

from giraffe.config import ModelConfig
from giraffe.formats import names
from giraffe.quant import kernels
from giraffe.quant.decode_step import FastDecode
from giraffe.quant.linear import KERNEL_KINDS, FusedQuant, QuantEmbedding, QuantLinear


def packable(cfg: ModelConfig, tensors: dict) -> dict[str, names.Rule]:
    """External name -> rule for every tensor that can stay packed."""
    keep = {}
    for rule in names.expand("gguf", cfg):
        t = tensors.get(rule.theirs)
        if t is None or t.tensor_type.name not in KERNEL_KINDS or len(t.shape) != 2:
            continue
        if all(n.endswith("_proj.weight") for n in rule.ours) or rule.ours == ("embed.weight",):
            keep[rule.theirs] = rule
    return keep


def install_packed(model, rule: names.Rule, tensor, rope_permuted: bool) -> None:
    kind = tensor.tensor_type.name
    raw = torch.from_numpy(np.array(tensor.data, dtype=np.uint8))  # (rows, bytes per row)
    in_features = int(tensor.shape[0])
    for name, rows in names.to_giraffe(rule, raw, model.config, rope_permuted).items():
        owner_path, _, attr = name.removesuffix(".weight").rpartition(".")
        owner = model.get_submodule(owner_path)  # "" is the model itself
        old = getattr(owner, attr)
        if isinstance(old, torch.nn.Embedding):
            new = QuantEmbedding(rows, kind, old.num_embeddings, old.embedding_dim)
        else:
            new = QuantLinear(rows, kind, in_features, rows.shape[0], old.bias)
        setattr(owner, attr, new)


def fuse_projections(model) -> None:
    """One kernel call for q/k/v and one for gate/up in every layer, where all are packed
    alike; compiled prompt attention; the compiled decode step where every layer qualifies."""
    for block in model.layers:
        attn, mlp = block.attn, block.mlp
        attn.fused_qkv = FusedQuant.of([attn.q_proj, attn.k_proj, attn.v_proj])
        attn.causal_kernel = kernels.attention_causal if kernels.available() else None
        if mlp.gated:
            mlp.fused_gate_up = FusedQuant.of([mlp.gate_proj, mlp.up_proj])
    model.fast_decode = FastDecode.build(model)
