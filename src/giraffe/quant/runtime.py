"""The packed fast path of one decoder, held by one object the model is handed explicitly.

A `PackedRuntime` owns what a decoder with packed weights runs beside its plain modules:
per layer, q/k/v as one packed product and gate/up as another (`FusedQuant`) and the
compiled causal attention for prompts (`LayerKernels`); and the compiled whole-layer step
(`giraffe.quant.decode_step.FastDecode`) where every layer qualifies. A loader builds it
(`PackedRuntime.build`) and gives it to the model (`Decoder.attach_runtime`); the
decoder's forward asks it first and hands each block its `LayerKernels`, so the one place
the fast path branches off is visible in `models/decoder.py`. Whoever changes the
model's layers (LoRA wrapping projections) takes it off (`Decoder.detach_runtime`) and
builds a new one around the new layers. Without a runtime the model is the plain
reference every fast path is tested against.

It knows packed layers and the decoder's block layout (`layers[i].attn.q_proj`, ...),
not files (the loaders hand it a `repack` and a `release`) nor training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from giraffe.quant import kernels
from giraffe.quant.decode_step import FastDecode
from giraffe.quant.groupwise import GroupQuantLinear
from giraffe.quant.linear import FusedQuant, QuantLinear


@dataclass
class LayerKernels:
    """One layer's packed kernels, as a block hands them to its attention and MLP.

    qkv / gate_up: one call computing (q, k, v) / (gate, up); None where the parts are not
    all packed alike (the module's own projections run). causal_attention: whether prompts
    take the compiled causal kernel (`giraffe.quant.kernels.attention_causal`)."""

    qkv: FusedQuant | None = None
    gate_up: FusedQuant | None = None
    causal_attention: bool = False

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
        """Causal attention (B, H, T, D) over k, v with no mask, or None when the kernel
        is off or cannot take these tensors (the caller runs torch's)."""
        if not self.causal_attention:
            return None
        return kernels.attention_causal(q, k, v, scale, None)


class PackedRuntime:
    """Per-layer `LayerKernels` and the compiled step (`step`: a FastDecode, or None when
    some layer does not qualify; tests and benchmarks set it None to time the layers'
    kernels alone)."""

    def __init__(self, layers: list[LayerKernels], step: FastDecode | None) -> None:
        self.layers, self.step = layers, step

    @staticmethod
    def build(model, repack=None, release=None) -> PackedRuntime:
        """Fuse every layer's q/k/v and gate/up where all parts are packed alike, keep one
        resident copy of every packed product (`compact`), then the compiled step - last,
        since it keeps pointers to whichever form is resident.

        repack: how int8 tiles are made (kernels.repack_int8 or a tile cache); release:
        told of ggml blocks dropped (a loader hands the file's pages back)."""
        causal = kernels.available()
        layers = [
            LayerKernels(
                FusedQuant.of([b.attn.q_proj, b.attn.k_proj, b.attn.v_proj], repack),
                FusedQuant.of([b.mlp.gate_proj, b.mlp.up_proj], repack) if b.mlp.gated else None,
                causal,
            )
            for b in model.layers
        ]
        compact(model, layers, release, repack)
        return PackedRuntime(layers, FastDecode.build(model, layers))

    def decode(self, model, ids: torch.Tensor, cache, positions) -> torch.Tensor | None:
        """The compiled step's final-norm hidden states (B, T, C), or None when there is
        none or it cannot take this call (see FastDecode.__call__)."""
        if self.step is None:
            return None
        return self.step(model, ids, cache, positions)

    def next_logits(self, model, ids: torch.Tensor, cache, positions) -> tuple | None:
        """(logits (B, V) float32 numpy, argmax list) of each sequence's last new token from one C call
        (lookup, layers, head), or None when it cannot take this call (nothing ran)."""
        if self.step is None:
            return None
        return self.step.next_logits(model, ids, cache, positions)


def compact(model, layers: list[LayerKernels], release=None, repack=None) -> None:
    """Every packed product keeps one resident copy (QuantLinear.compact: the ggml blocks
    give way to the int8 tiles; GroupQuantLinear.compact: the stored groups do). An untied
    embedding is only looked up: it stays in the file's blocks (or groups), read row by row."""
    lookups_only = getattr(model.embed, "table", None) if model.lm_head is not None else None
    for layer in layers:
        for fused in (layer.qkv, layer.gate_up):
            if fused is not None:
                fused.compact(release, repack)
    for m in model.modules():
        if m is lookups_only:
            continue
        if isinstance(m, QuantLinear):
            m.compact(release, repack)
        elif isinstance(m, GroupQuantLinear):  # its stored groups give way to the tiles
            m.compact()
