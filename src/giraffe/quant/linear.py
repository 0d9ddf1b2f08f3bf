"""`QuantLinear` and `QuantEmbedding`: layers whose weights stay packed in ggml blocks.

The reference path is the definition: dequantize the blocks, then an ordinary float32
matmul (or row lookup). The fast path multiplies straight from the packed bytes with the
compiled kernel (`giraffe.quant.kernels`); tests hold the two equal to rounding. At
inference, by default, activations are rounded to int8 per block of 32 and multiplied by
the VNNI int8 GEMM, as llama.cpp does (see `int8_activations`), tested equal to "round
x, then the float reference" (blocks.round_activations_int8).

One resident copy: a layer holds its weight either as ggml blocks (`packed`, often a view
of the memory-mapped file) or, once `compact()`ed, only as the int8 GEMM's tiles (the
blocks dropped); every other path (float activations, training, row lookups) then
dequantizes from the tiles, which give the same numbers as the blocks.
Knows nothing of file names: a loader hands it bytes and a block type.
"""

from __future__ import annotations

import sys
import threading

import torch
import torch.nn.functional as F
from torch import nn

from giraffe.quant import kernels
from giraffe.quant.blocks import BLOCK_SIZES, dequantize, row_bytes
from giraffe.quant.library import int8_activations  # noqa: F401 - this module's API too
from giraffe.quant.types import FLOAT_KINDS

KERNEL_KINDS = tuple(kernels.KIND_CODES)
# Above this many input rows, dequantize-then-matmul (MKL) beats the packed kernel, which
# unpacks each block once per 8 rows (measured on SmolLM2, 2 threads: the kernel is faster
# up to ~256 prompt tokens, 0.87x at 512).
KERNEL_MAX_ROWS = 192


def kernel_max_rows(kind: str) -> int:
    """Input rows up to which the packed float kernel beats dequantize-then-matmul: every
    count for F16/BF16, whose many-row kernel widens each 32 columns of weights once
    (csrc/qmatmul.c's half_gemm; 1536 x 576 BF16 on 2 threads: 16 rows 0.31 ms vs torch's
    1.26, 512 rows 3.27 vs 3.37; measured 2026-12-07)."""
    return sys.maxsize if kind in FLOAT_KINDS else KERNEL_MAX_ROWS


class _GradToInput(torch.autograd.Function):
    """y = layer(x) computed without a graph; grad_x = grad_y @ W, W dequantized just then.

    The packed weight is frozen, so no float copy of it lives between the passes.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
        ctx.layer = layer
        return layer(x)  # autograd is off inside: the fast kernels take it

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        w = ctx.layer.dequantized_weight().to(grad_y.dtype)  # (out, in)
        return grad_y @ w, None


class QuantLinear(nn.Module):
    def __init__(
        self, packed: torch.Tensor, kind: str, in_features: int, out_features: int, bias=None
    ):
        super().__init__()
        if kind in BLOCK_SIZES and packed.shape != (out_features, row_bytes(kind, in_features)):
            raise ValueError(
                f"{kind} weight of {out_features}x{in_features} needs "
                f"{row_bytes(kind, in_features)} bytes per row, got {tuple(packed.shape)}"
            )
        self.register_buffer(
            "packed", packed.contiguous(), persistent=False
        )  # (out, bytes per row) uint8
        self.kind, self.in_features, self.out_features = kind, in_features, out_features
        self._int8: kernels.Int8Weights | None = None  # the int8 GEMM's tiles, made at first use
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @property
    def device(self) -> torch.device:
        """Where the weight lives, whichever form is resident."""
        return (self._int8.q if self.packed is None else self.packed).device

    def dequantized_weight(self) -> torch.Tensor:
        if self.packed is None:  # compacted: the int8 tiles are the only copy
            return self._int8.dequantize()
        fast = kernels.dequantize(self.packed, self.kind, self.out_features, self.in_features)
        if fast is not None:  # the C unpacker: ~10x quicker, same numbers (tested)
            return fast
        return dequantize(self.packed.numpy(), self.kind, (self.out_features, self.in_features))

    def int8_weights(self, repack=None) -> kernels.Int8Weights | None:
        """The weight repacked for the int8 GEMM (made at first use), or None if its type has
        none. repack: kernels.repack_int8 or a stand-in with its signature (a tile cache)."""
        if self._int8 is None:
            if self.kind not in kernels.int8_kinds():
                return None
            repack = repack or kernels.repack_int8
            self._int8 = repack(self.packed, self.kind, self.out_features, self.in_features)
        return self._int8

    def compact(self, release=None, repack=None) -> bool:
        """Keep only the int8 tiles (drop the ggml blocks) when inference will use them.

        Returns whether it did: not without the int8 GEMM, nor with float activations
        chosen (GIRAFFE_INT8_ACTIVATIONS=0), where the blocks serve the float kernel.
        `release(tensor)` is told of the blocks dropped (a loader hands back file pages);
        `repack` makes the tiles (see int8_weights)."""
        if self.packed is None:
            return True
        if not int8_activations() or self.int8_weights(repack) is None:
            return False
        if release is not None:
            release(self.packed)
        self.packed = None
        return True

    def forward(self, x: torch.Tensor, reference: bool = False) -> torch.Tensor:
        # The weight is frozen, but an input may need its gradient (QLoRA: adapters below
        # this layer learn through it): the product runs without a graph and the gradient
        # to x is added by hand, with the weight dequantized only in the backward pass.
        if not reference and torch.is_grad_enabled() and x.requires_grad:
            return _GradToInput.apply(x, self)
        rows = x.numel() // self.in_features
        needs_grad = torch.is_grad_enabled() and x.requires_grad  # reference with a graph
        float_input = x.dtype == torch.float32 and not reference and not needs_grad
        # int8 only for inference: training (QLoRA, QAT) keeps float activations
        inference = float_input and not torch.is_grad_enabled()
        if inference and int8_activations() and self.int8_weights() is not None:
            y = kernels.gemm_int8(self._int8, x)
            return y if self.bias is None else y + self.bias
        if self.packed is None:  # compacted: float paths dequantize the tiles
            return F.linear(x, self.dequantized_weight().to(x.dtype), self.bias)
        fast = float_input and self.kind in KERNEL_KINDS and rows <= kernel_max_rows(self.kind)
        if fast and kernels.available():
            y = kernels.qmatmul(self.packed, self.kind, self.out_features, self.in_features, x)
            return y if self.bias is None else y + self.bias
        # The shared buffer is only safe when autograd keeps no reference to the weight.
        if not reference and x.dtype == torch.float32 and not torch.is_grad_enabled():
            weight = kernels.dequantize(
                self.packed, self.kind, self.out_features, self.in_features, _scratch(self)
            )
            if weight is not None:
                return F.linear(x, weight, self.bias)
        return F.linear(x, self.dequantized_weight().to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {self.kind} packed"


# One reusable float buffer per thread for the unpacked weight of large-batch calls: a
# fresh 10 MB allocation per layer per call spends more time in page faults than in
# unpacking; one per thread, as threads sharing a model would overwrite each other's.
SCRATCH_MAX = 16 * 2**20  # floats; larger weights (e.g. a 49k-row head) get their own
_SCRATCH = threading.local()


def _scratch(layer: QuantLinear) -> torch.Tensor | None:
    n = layer.out_features * layer.in_features
    if n > SCRATCH_MAX:
        return None
    buffer = getattr(_SCRATCH, "buffer", None)
    if buffer is None or buffer.numel() < n:
        buffer = _SCRATCH.buffer = torch.empty(n)
    return buffer[:n].view(layer.out_features, layer.in_features)


class QuantEmbedding(nn.Module):
    """Token embedding kept packed; `project` is the tied output head (h @ E^T)."""

    def __init__(self, packed: torch.Tensor, kind: str, vocab: int, dim: int):
        super().__init__()
        self.table = QuantLinear(packed, kind, dim, vocab)
        self.weight_kind, self.num_embeddings, self.embedding_dim = kind, vocab, dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.table.packed is None:  # compacted (a tied head): rows from the int8 tiles
            values = self.table._int8.dequantize(ids)  # (N, dim)
            return values.reshape(*ids.shape, self.embedding_dim)
        rows = self.table.packed[ids.flatten()]  # (N, bytes per row): only the rows asked for
        shape = (ids.numel(), self.embedding_dim)
        values = kernels.dequantize(rows, self.weight_kind, *shape)
        if values is None:
            values = dequantize(rows.numpy(), self.weight_kind, shape)
        return values.reshape(*ids.shape, self.embedding_dim)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return self.table(h)


class FusedQuant:
    """Several packed projections of the same input as one kernel call (q/k/v, gate/up).

    Not an nn.Module on purpose: it owns no parameters, so state dicts and savers never
    see it. When the parts share a block type, their weights become views of one
    concatenated buffer (no extra memory) and one call computes all: the ggml blocks, or,
    for compacted parts, their int8 tiles (when every part but the last is a whole number
    of 16-row tiles). Parts of different types (a Q4_K_M file keeps v in Q8_0 beside Q5_0
    q/k) stay separate `segments`, which the compiled decode step still takes in one layer
    call. Whoever replaces one of the parts (e.g. with a LoRA layer) must drop the fusion.
    """

    def __init__(self, parts: list[QuantLinear], repack=None) -> None:
        self.in_features = parts[0].in_features
        self.sizes = [p.out_features for p in parts]
        biases = [p.bias for p in parts]
        self.bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
        self.parts = parts
        self.kind = parts[0].kind if len({p.kind for p in parts}) == 1 else None
        self.packed, self._int8 = None, None
        compacted = [p.packed is None for p in parts]
        tiled = all(n % 16 == 0 for n in self.sizes[:-1])
        if self.kind is None or any(compacted) or self.kind in FLOAT_KINDS:
            # separate segments, each part its own form; F16/BF16 parts stay views of the
            # file's map (one buffer would copy them, at 2 bytes a weight)
            self.kind = None
        elif tiled and int8_activations() and self.kind in kernels.int8_kinds():
            # the parts' blocks repacked into one buffer of tiles; compact() drops the blocks
            packed, repack = [p.packed for p in parts], repack or kernels.repack_int8
            self._int8 = repack(packed, self.kind, sum(self.sizes), self.in_features)
            self._share_int8()
        else:
            self.packed = torch.cat([p.packed for p in parts])  # (sum out, bytes per row)
            start = 0
            for p, n in zip(parts, self.sizes, strict=True):
                p.packed = self.packed[start : start + n]
                start += n

    @property
    def segments(self) -> list[tuple]:
        """(ggml blocks or None when compacted, block type, rows) per separate product."""
        if self.kind is None:
            return [(p.packed, p.kind, p.out_features) for p in self.parts]
        return [(self.packed, self.kind, sum(self.sizes))]

    def _share_int8(self) -> None:
        start = 0
        for p, n in zip(self.parts, self.sizes, strict=True):
            p._int8 = self._int8.rows(start, start + n)
            start += n

    def compact(self, release=None, repack=None) -> None:
        """Keep only int8 tiles (see QuantLinear.compact) where every part allows it; parts
        of one buffer of tiles already hold views of it."""
        for p in self.parts:
            p.compact(release, repack)

    @staticmethod
    def of(parts, repack=None) -> FusedQuant | None:
        """A fusion when every part is packed in a type the kernel knows, else None.
        repack: how tiles are made (kernels.repack_int8 or a tile cache)."""
        ok = all(isinstance(p, QuantLinear) and p.kind in KERNEL_KINDS for p in parts)
        if not ok or not kernels.available():
            return None
        if len({(p.in_features, p.bias is None) for p in parts}) != 1:
            return None
        return FusedQuant(parts, repack)

    def int8_segments(self) -> list[kernels.Int8Weights | None]:
        """Per segment, its weight repacked for the int8 GEMM (None where its type has none)."""
        if self.kind is None:
            return [p.int8_weights() for p in self.parts]
        if self._int8 is None:
            whole = QuantLinear(self.packed, self.kind, self.in_features, sum(self.sizes))
            self._int8 = whole.int8_weights()
        return [self._int8]

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows = x.numel() // self.in_features
        needs_grad = torch.is_grad_enabled() and x.requires_grad
        whole = self.kind is not None and x.dtype == torch.float32 and not needs_grad
        inference = whole and not torch.is_grad_enabled()
        if inference and int8_activations() and self.int8_segments()[0] is not None:
            y = kernels.gemm_int8(self._int8, x)
        elif whole and self.packed is not None and rows <= kernel_max_rows(self.kind):
            y = kernels.qmatmul(self.packed, self.kind, sum(self.sizes), self.in_features, x)
        else:
            return tuple(p(x) for p in self.parts)
        if self.bias is not None:
            y = y + self.bias
        return y.split(self.sizes, dim=-1)
