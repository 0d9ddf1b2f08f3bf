"""The names of the weight types giraffe reads and writes, with no heavy imports.

A table only (the command line builds its `--to` choices from it before torch loads);
block sizes live in `giraffe.quant.blocks`, the writers in `giraffe.quant.ptq`.
"""

GGUF_QUANTIZED = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")  # written by the gguf package
K_QUANT_TYPES = ("Q4_K", "Q5_K", "Q6_K")  # written by giraffe.quant.kquants
TYPES = ("F32", "F16", *GGUF_QUANTIZED, *K_QUANT_TYPES)
