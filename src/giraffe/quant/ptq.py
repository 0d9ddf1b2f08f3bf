"""Post-training quantization of one weight matrix into a ggml block type.

Legacy 32-weight types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) and BF16 (rounded to nearest even)
come from the `gguf` package's quantizers (bit for bit llama.cpp's); K-quants (Q4_K, Q5_K, Q6_K) from
`giraffe.quant.kquants`. A row length the type's blocks do not divide falls back the way
llama.cpp's quantizer does (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0; 32-weight types
-> F32), and the caller is told which type each matrix really got. Knows nothing of
files or model structure.
"""

from __future__ import annotations

import numpy as np

from giraffe.quant import kquants
from giraffe.quant.blocks import BLOCK_SIZES
from giraffe.quant.types import GGUF_QUANTIZED, K_QUANT_TYPES, TYPES

K_QUANTIZERS = {
    "Q4_K": kquants.quantize_q4_k,
    "Q5_K": kquants.quantize_q5_k,
    "Q6_K": kquants.quantize_q6_k,
}
# llama.cpp's choice when a row does not split into 256-weight super-blocks.
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
assert tuple(K_QUANTIZERS) == K_QUANT_TYPES  # one list of names (giraffe.quant.types)
__all__ = ["GGUF_QUANTIZED", "TYPES", "quantize_matrix", "target_type"]


def target_type(kind: str, n_in: int) -> str:
    """The type a matrix with rows of `n_in` weights actually gets when `kind` is asked."""
    kind = kind.upper()
    if kind not in TYPES:
        raise ValueError(f"unknown quantization type {kind!r}; choose one of {', '.join(TYPES)}")
    if kind in ("F32", "F16", "BF16"):
        return kind
    if n_in % BLOCK_SIZES[kind][0] == 0:
        return kind
    return target_type(FALLBACK[kind], n_in) if kind in FALLBACK else "F32"


def quantize_matrix(w: np.ndarray, kind: str) -> tuple[np.ndarray, str]:
    """(rows, cols) float32 -> (data, type): uint8 blocks, or float32/float16 values."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    actual = target_type(kind, w.shape[-1])
    if actual == "F32":
        return w, actual
    if actual == "F16":
        return w.astype(np.float16), actual
    if actual in K_QUANTIZERS:
        return K_QUANTIZERS[actual](w), actual
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    return quantize(w, GGMLQuantizationType[actual]), actual
