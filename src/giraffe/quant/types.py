"""The one table of weight block types giraffe reads and writes, with no heavy imports.

Every block-type fact lives here once: the kernels' code, weights and bytes per block
(ggml-common.h), and the int8 form the VNNI GEMM repacks into (integer offset, an added
min, how its integers are packed, whether each 16 weights carry their own scale).
`giraffe.quant.blocks` (sizes), `giraffe.quant.kernels` (codes) and the command line's
`--to` choices derive from it; the compiled library exports its own copy of the table
(csrc/blocks.h) and `kernels` refuses to run one that differs. The writers live in
`giraffe.quant.ptq`.
"""

from __future__ import annotations

from typing import NamedTuple


class BlockType(NamedTuple):
    code: int  # csrc/blocks.h's enum value
    weights: int  # weights per block: 32 (legacy types) or 256 (K-quant super-blocks)
    bytes: int  # bytes per block
    offset: int  # int8 form: w = d * (q + offset) + m with q unsigned
    has_min: int  # int8 form adds a per-sub-block minimum m
    # int8 form packed: 0 a byte each, 1 4-bit nibbles, 2 nibbles + a fifth-bit plane,
    # 3 nibbles + fifth- and sixth-bit planes
    nibbles: int
    split: int  # int8 form has a scale per 16 weights (Q6_K's sub-blocks), no min


BLOCK_TYPES = {
    "Q8_0": BlockType(0, 32, 34, -128, 0, 0, 0),
    "Q4_0": BlockType(1, 32, 18, -8, 0, 1, 0),
    "Q4_1": BlockType(2, 32, 20, 0, 1, 1, 0),
    "Q5_0": BlockType(3, 32, 22, -16, 0, 2, 0),
    "Q5_1": BlockType(4, 32, 24, 0, 1, 2, 0),
    "Q4_K": BlockType(5, 256, 144, 0, 1, 1, 0),
    "Q5_K": BlockType(6, 256, 176, 0, 1, 2, 0),
    "Q6_K": BlockType(7, 256, 210, -32, 0, 3, 1),
}

K_QUANT_TYPES = tuple(k for k, t in BLOCK_TYPES.items() if t.weights == 256)  # giraffe writes
GGUF_QUANTIZED = tuple(k for k in BLOCK_TYPES if k not in K_QUANT_TYPES)  # gguf writes
TYPES = ("F32", "F16", *GGUF_QUANTIZED, *K_QUANT_TYPES)
