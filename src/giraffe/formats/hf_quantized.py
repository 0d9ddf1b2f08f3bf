"""Hugging Face folders whose projection weights are stored group-wise in int8/int4.

The folder is an ordinary one (config.json, model.safetensors, tokenizer) except that each
attention/MLP projection `X.weight` is replaced by `X.weight.q`, `X.weight.scale` (and
`X.weight.min` when asymmetric), and config.json carries
`"quantization_config": {"quant_method": "giraffe-groupwise", "bits", "group_size", "symmetric"}`.
The token table (and an untied output head) is stored the same way; norms stay
float. Reading it gives a model whose projections are
`giraffe.quant.groupwise.GroupQuantLinear` layers (the table a `GroupQuantEmbedding`) (the stored integers, never a float
copy), or with `dequantize=True` plain float layers holding the dequantized weights (the
reference). Only projections stored one-to-one (`*_proj.weight`, Llama-family names) are
quantized. It does not know the safetensors file layout; `hf.py` hands it tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from giraffe.config import ModelConfig
from giraffe.formats import names
from giraffe.formats.assemble import assemble
from giraffe.formats.names import WeightsError
from giraffe.quant.groupwise import (
    PART_NAMES,
    GroupConfig,
    GroupQuantEmbedding,
    GroupQuantLinear,
    dequantize_groups,
    quantize_groups,
)
from giraffe.quant.runtime import PackedRuntime

TABLES = ("embed.weight", "lm_head.weight")  # token table and untied head: quantized too


def _projection_rules(cfg: ModelConfig) -> list[names.Rule]:
    return [
        r
        for r in names.expand("hf", cfg)
        if r.layout == "same"
        and len(r.ours) == 1
        and (r.ours[0].endswith("_proj.weight") or r.ours[0] in TABLES)
    ]


def quantize_tensors(
    tensors: dict[str, torch.Tensor], cfg: ModelConfig, group: GroupConfig
) -> dict[str, torch.Tensor]:
    """External name -> tensor, with every projection replaced by its group-wise parts."""
    rules = [r for r in _projection_rules(cfg) if r.theirs in tensors]
    if not rules:
        raise ValueError(
            f"group-wise int{group.bits} folders hold Llama-family projections; this "
            f"{cfg.arch} model has none stored one-to-one (write a GGUF with --to q8_0/q4_k instead)"
        )
    out = dict(tensors)
    for rule in rules:
        w = out.pop(rule.theirs)
        group.check_row(w.shape[1], rule.theirs)
        for part, value in quantize_groups(w, group).items():
            out[f"{rule.theirs}.{part}"] = value
    return out


def assemble_grouped(
    cfg: ModelConfig,
    group: GroupConfig,
    keys: set[str],
    fetch: Callable[[str], torch.Tensor],
    source: str,
    dequantize: bool = False,
):
    """Build the model: projections from their parts, the rest as `assemble` does."""
    grouped = {k.removesuffix(".q") for k in keys if k.endswith(".q")}

    def parts_of(name: str) -> dict[str, torch.Tensor]:
        found = {p: fetch(f"{name}.{p}") for p in PART_NAMES if f"{name}.{p}" in keys}
        if "scale" not in found or ("min" in found) == group.symmetric:
            raise WeightsError(f"{source}: {name} lacks parts of its {group} weights")
        return found

    def fetch_any(name: str) -> torch.Tensor:
        if name not in grouped:
            # its own copy (norms, biases: small), not a view of the file's map: the map
            # then closes once the groups give way to int8 tiles (PackedRuntime.build)
            # instead of keeping every page the conversion read resident
            return fetch(name).clone()
        if dequantize:
            return dequantize_groups(parts_of(name), group)
        # A placeholder of the right shape, replaced below: memory that is never written
        # is never paged in, so no float copy of the model ever exists.
        scale = fetch(f"{name}.scale")  # (out, in / group)
        return torch.empty(scale.shape[0], scale.shape[1] * group.group_size)

    plain = {k for k in keys if not k.endswith(tuple(f".{p}" for p in PART_NAMES))}
    model = assemble(cfg, "hf", plain | grouped, fetch_any, source)
    if dequantize:
        return model
    for rule in _projection_rules(cfg):
        if rule.theirs not in grouped:
            continue
        owner_path, _, attr = rule.ours[0].removesuffix(".weight").rpartition(".")
        owner = model.get_submodule(owner_path)  # "" is the model itself
        old, parts = getattr(owner, attr), parts_of(rule.theirs)
        if isinstance(old, torch.nn.Embedding):
            new = GroupQuantEmbedding(parts, group)
        else:
            new = GroupQuantLinear(parts, group, old.bias)
        setattr(owner, attr, new)
    # the compiled prompt attention and decode step, as for packed GGUF weights
    model.attach_runtime(PackedRuntime.build(model))
    return model
