"""The one table of weight block types giraffe reads and writes, with no heavy imports.

Every block-type fact lives here once: the kernels' code, weights and bytes per block
(ggml's, from `giraffe.files.ggml_types`), and the int8 form the VNNI GEMM repacks into (integer offset, an added
min, how its integers are packed, whether each 16 weights carry their own scale).
F16 and BF16 are here too (the kernels read them in place, as 64-byte "blocks" of 32),
marked as having no int8 form. `giraffe.quant.blocks` (sizes), `giraffe.quant.kernels`
(codes) and the command line's
`--to` choices derive from it; the compiled library exports its own copy of the table
(csrc/blocks.h) and `kernels` refuses to run one that differs. The writers live in
`giraffe.quant.ptq`.
"""

from __future__ import annotations

from typing import NamedTuple

from giraffe.files.ggml_types import BLOCK_SIZES, GGMLType


class BlockType(NamedTuple):
    code: int  # csrc/blocks.h's enum value
    weights: int  # weights per block: 32 (legacy types) or 256 (K-quant super-blocks)
    bytes: int  # bytes per block
    offset: int  # int8 form: w = d * (q + offset) + m with q unsigned
    has_min: int  # int8 form adds a per-sub-block minimum m
    # int8 form packed: 0 a byte each, 1 4-bit nibbles, 2 nibbles + a fifth-bit plane,
    # 3 nibbles + fifth- and sixth-bit planes, 4 nibbles that index the IQ4 grid
    nibbles: int
    split: int  # int8 form has a scale (and, with has_min, a min) per 16 weights
    # 1: the int8 GEMM takes the type (repacked into the form above); 0: a float type
    # (F16, BF16) that only the float kernel runs - rounding its weights to integers
    # would change the file's numbers
    int8: int = 1


def _ggml(name: str, code: int, *int8_form: int) -> BlockType:
    """A ggml block type: its weights and bytes per block as ggml has them."""
    weights, size = BLOCK_SIZES[GGMLType[name]]
    return BlockType(code, weights, size, *int8_form)


BLOCK_TYPES = {
    "Q8_0": _ggml("Q8_0", 0, -128, 0, 0, 0),
    "Q4_0": _ggml("Q4_0", 1, -8, 0, 1, 0),
    "Q4_1": _ggml("Q4_1", 2, 0, 1, 1, 0),
    "Q5_0": _ggml("Q5_0", 3, -16, 0, 2, 0),
    "Q5_1": _ggml("Q5_1", 4, 0, 1, 2, 0),
    "Q4_K": _ggml("Q4_K", 5, 0, 1, 1, 0),
    "Q5_K": _ggml("Q5_K", 6, 0, 1, 2, 0),
    "Q6_K": _ggml("Q6_K", 7, -32, 0, 3, 1),
    # 3 bits: 2 from qs, 1 from hmask; 16 signed 6-bit scales a super-block, one per 16
    # weights (the "split" form, as Q6_K's), offset -4. Read and run, not written here.
    "Q3_K": _ggml("Q3_K", 10, -4, 0, 1, 1),
    # 4-bit indices into a non-linear grid (-127 .. 113): the int8 form keeps the indices
    # (nibbles = 4) and the kernel maps them with one byte shuffle; IQ4_XS's one signed
    # scale per 32 weights is stored as Q6_K's two (the same twice). Read and run only.
    "IQ4_NL": _ggml("IQ4_NL", 11, -128, 0, 4, 0),
    "IQ4_XS": _ggml("IQ4_XS", 12, -128, 0, 4, 1),
    # 2 bits, a 4-bit scale and a 4-bit min per 16 weights under fp16 d and dmin: split
    # scales with mins. Read and run only.
    "Q2_K": _ggml("Q2_K", 13, 0, 1, 1, 1),
    # 2-byte floats, walked by the kernels 32 to a "block" (64 bytes)
    "F16": BlockType(8, 32, 64, 0, 0, 0, 0, int8=0),
    "BF16": BlockType(9, 32, 64, 0, 0, 0, 0, int8=0),
}

FLOAT_KINDS = tuple(k for k, t in BLOCK_TYPES.items() if not t.int8)  # F16, BF16
READ_ONLY = ("Q2_K", "Q3_K", "IQ4_NL", "IQ4_XS")  # types giraffe runs but has no quantizer for
K_QUANT_TYPES = tuple(  # giraffe writes
    k for k, t in BLOCK_TYPES.items() if t.weights == 256 and k not in READ_ONLY
)
GGUF_QUANTIZED = tuple(  # gguf writes
    k for k, t in BLOCK_TYPES.items() if t.weights == 32 and t.int8 and k not in READ_ONLY
)
TYPES = ("F32", *FLOAT_KINDS, *GGUF_QUANTIZED, *K_QUANT_TYPES)
