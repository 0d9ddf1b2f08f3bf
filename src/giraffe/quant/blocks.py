"""Dequantize ggml block formats to float32 with torch, bit for bit as ggml does.

Formats (ggml-common.h): each block of 32 weights stores an fp16 scale `d`, and
  Q8_0: 32 x int8 q                      -> w = d * q
  Q4_0: 16 bytes of nibbles              -> w = d * (q - 8)
  Q4_1: an fp16 minimum `m` + 16 nibbles -> w = d * q + m
Nibble layout: byte j holds weight j in its low half and weight j + 16 in its high half.
These three are vectorised here (they are what small GGUF models use, and the
`gguf` package's numpy path is several times slower); every other type is handed to
`gguf.quants.dequantize`. Tests hold both paths equal on random blocks.
"""

from __future__ import annotations

import numpy as np
import torch

from giraffe.quant.types import BLOCK_TYPES

BLOCK = 32
# Vectorised here in torch: bytes per 32-weight block.
BYTES_PER_BLOCK = {k: BLOCK_TYPES[k].bytes for k in ("Q8_0", "Q4_0", "Q4_1")}
# Every block type the packed layers keep: (weights per block, bytes per block), ggml-common.h.
BLOCK_SIZES = {k: (t.weights, t.bytes) for k, t in BLOCK_TYPES.items()}


def row_bytes(kind: str, n_in: int) -> int:
    """Bytes of one packed row of `n_in` weights; ValueError when blocks do not tile the row."""
    weights, size = BLOCK_SIZES[kind]
    if n_in % weights:
        raise ValueError(
            f"a {kind} row needs a multiple of {weights} weights, got {n_in}; "
            f"choose a block type whose block size divides {n_in} (e.g. Q8_0 or Q4_0 for 32)"
        )
    return n_in // weights * size


def dequantize(raw: np.ndarray, kind: str, shape: tuple[int, ...]) -> torch.Tensor:
    """raw: the uint8 bytes of a tensor (any shape); returns float32 of `shape`."""
    if kind == "F32":
        return torch.from_numpy(np.array(raw, copy=True).view(np.float32).reshape(shape))
    if kind == "F16":
        return torch.from_numpy(raw.view(np.float16).astype(np.float32).reshape(shape))
    if kind not in BYTES_PER_BLOCK:
        return _dequantize_with_gguf(raw, kind, shape)
    blocks = torch.from_numpy(
        np.array(raw, copy=True).reshape(-1, BYTES_PER_BLOCK[kind])
    )  # (N, bytes)
    d = blocks[:, :2].contiguous().view(torch.float16).float()  # (N, 1)
    if kind == "Q8_0":
        q = blocks[:, 2:].contiguous().view(torch.int8).float()  # (N, 32)
        return (q * d).reshape(shape)
    if kind == "Q4_0":
        return (d * (_nibbles(blocks[:, 2:]) - 8).float()).reshape(shape)
    m = blocks[:, 2:4].contiguous().view(torch.float16).float()  # (N, 1)
    return (d * _nibbles(blocks[:, 4:]).float() + m).reshape(shape)


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    # packed: (N, 16) uint8 -> (N, 32): low halves first, then high halves
    return torch.cat((packed & 0x0F, packed >> 4), dim=1).to(torch.int16)


def _dequantize_with_gguf(raw: np.ndarray, kind: str, shape: tuple[int, ...]) -> torch.Tensor:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    try:
        values = gguf_dequantize(raw, GGMLQuantizationType[kind])
    except (NotImplementedError, KeyError):
        raise ValueError(
            f"block type {kind} cannot be dequantized (the gguf package lacks it)"
        ) from None
    return torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))


def round_activations_int8(x: torch.Tensor) -> torch.Tensor:
    """x rounded as the int8 GEMM rounds it, back in float: the reference for that path.

    Per block of 32 along the last dimension: d = max|x| / 127, q = round(x / d) to the
    nearest integer (ties to even), x ~ d * q. llama.cpp's Q8_0/Q8_1 activations are the
    same idea with d stored in fp16.
    """
    blocks = x.reshape(*x.shape[:-1], -1, BLOCK)  # (..., n_in / 32, 32)
    d = blocks.abs().amax(-1, keepdim=True) / 127
    inverse = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    return (torch.round(blocks * inverse) * d).reshape(x.shape)
