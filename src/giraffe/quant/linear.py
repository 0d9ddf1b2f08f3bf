"""`QuantLinear` and `QuantEmbedding`: layers whose weights stay packed in ggml blocks.

The reference path is the definition: dequantize the blocks, then an ordinary float32
matmul (or row lookup). The fast path multiplies straight from the packed bytes with the
compiled kernel (`giraffe.quant.kernels`); tests hold the two equal to rounding. Large
batches of rows (prefill) dequantize once per call and use torch's float matmul, which
is faster there. Knows nothing of file names: a loader hands it bytes and a block type.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from giraffe.quant import kernels
from giraffe.quant.blocks import BLOCK_SIZES, dequantize, row_bytes

KERNEL_KINDS = tuple(kernels.KIND_CODES)
# Above this many input rows, dequantize-then-matmul (MKL) beats the packed kernel, which
# unpacks each block once per 8 rows (measured on SmolLM2, 2 threads: the kernel is faster
# up to ~256 prompt tokens, 0.87x at 512).
KERNEL_MAX_ROWS = 192


def use_int8_activations() -> bool:
    """llama.cpp-style int8 activations (GIRAFFE_INT8_ACTIVATIONS=1, needs AVX-512 VNNI).

    Off by default: it measured only ~13% faster decoding on SmolLM2-135M (Python
    overhead, not the kernel, dominates there) while moving each product ~0.6% away from
    the float reference; the float-activation kernel agrees with it to rounding.
    """
    return os.environ.get("GIRAFFE_INT8_ACTIVATIONS") == "1" and kernels.int8_available()


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
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def dequantized_weight(self) -> torch.Tensor:
        fast = kernels.dequantize(self.packed, self.kind, self.out_features, self.in_features)
        if fast is not None:  # the C unpacker: ~10x quicker, same numbers (tested)
            return fast
        return dequantize(self.packed.numpy(), self.kind, (self.out_features, self.in_features))

    def forward(self, x: torch.Tensor, reference: bool = False) -> torch.Tensor:
        rows = x.numel() // self.in_features
        fast = not reference and self.kind in KERNEL_KINDS and rows <= KERNEL_MAX_ROWS
        if fast and x.dtype == torch.float32 and kernels.available():
            y = kernels.qmatmul(
                self.packed,
                self.kind,
                self.out_features,
                self.in_features,
                x,
                use_int8_activations(),
            )
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


# One reusable float buffer for the unpacked weight of large-batch calls: a fresh 10 MB
# allocation per layer per call spends more time in page faults than in unpacking.
SCRATCH_MAX = 16 * 2**20  # floats; larger weights (e.g. a 49k-row head) get their own
_SCRATCH: list[torch.Tensor] = [torch.empty(0)]


def _scratch(layer: QuantLinear) -> torch.Tensor | None:
    n = layer.out_features * layer.in_features
    if n > SCRATCH_MAX:
        return None
    if _SCRATCH[0].numel() < n:
        _SCRATCH[0] = torch.empty(n)
    return _SCRATCH[0][:n].view(layer.out_features, layer.in_features)


class QuantEmbedding(nn.Module):
    """Token embedding kept packed; `project` is the tied output head (h @ E^T)."""

    def __init__(self, packed: torch.Tensor, kind: str, vocab: int, dim: int):
        super().__init__()
        self.table = QuantLinear(packed, kind, dim, vocab)
        self.weight_kind, self.num_embeddings, self.embedding_dim = kind, vocab, dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
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
    see it. When the parts share a block type, their buffers become views of one
    concatenated buffer (no extra memory) and one call computes all. Parts of different
    types (a Q4_K_M file keeps v in Q8_0 beside Q5_0 q/k) stay separate `segments`, which
    the compiled decode step still takes in one layer call. Whoever replaces one of the
    parts (e.g. with a LoRA layer) must drop the fusion.
    """

    def __init__(self, parts: list[QuantLinear]) -> None:
        self.in_features = parts[0].in_features
        self.sizes = [p.out_features for p in parts]
        biases = [p.bias for p in parts]
        self.bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
        self.parts = parts
        self.kind = parts[0].kind if len({p.kind for p in parts}) == 1 else None
        if self.kind is None:
            self.segments = [(p.packed, p.kind, p.out_features) for p in parts]
            return
        self.packed = torch.cat([p.packed for p in parts])  # (sum out, bytes per row)
        start = 0
        for p, n in zip(parts, self.sizes, strict=True):
            p.packed = self.packed[start : start + n]
            start += n
        self.segments = [(self.packed, self.kind, sum(self.sizes))]

    @staticmethod
    def of(parts) -> FusedQuant | None:
        """A fusion when every part is packed in a type the kernel knows, else None."""
        ok = all(isinstance(p, QuantLinear) and p.kind in KERNEL_KINDS for p in parts)
        if not ok or not kernels.available():
            return None
        if len({(p.in_features, p.bias is None) for p in parts}) != 1:
            return None
        return FusedQuant(parts)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows = x.numel() // self.in_features
        if self.kind is None or rows > KERNEL_MAX_ROWS or x.dtype != torch.float32:
            return tuple(p(x) for p in self.parts)
        y = kernels.qmatmul(
            self.packed, self.kind, sum(self.sizes), self.in_features, x, use_int8_activations()
        )
        if self.bias is not None:
            y = y + self.bias
        return y.split(self.sizes, dim=-1)
