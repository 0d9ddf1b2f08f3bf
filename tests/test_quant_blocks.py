"""Our torch dequantization equals the `gguf` package's (llama.cpp's reference) bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from giraffe.quant.blocks import dequantize


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1", "Q6_K", "Q5_K", "Q4_K", "F16"])
def test_matches_gguf_reference(kind):
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((8, 256)).astype(np.float32)
    qtype = GGMLQuantizationType[kind]
    try:
        raw = gguf_quantize(weights, qtype)
    except NotImplementedError:
        # The gguf package cannot quantize some K types; build valid random blocks instead.
        from gguf.constants import GGML_QUANT_SIZES

        block, size = GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, (8, 256 // block * size), dtype=np.uint8)
        raw_scales = raw.reshape(-1, size)
        raw_scales[:, :2] = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)
    expected = torch.from_numpy(np.array(gguf_dequantize(raw, qtype), dtype=np.float32))
    got = dequantize(raw, kind, (8, 256))
    torch.testing.assert_close(got, expected.reshape(8, 256), rtol=0, atol=0, equal_nan=True)


def test_real_q4_1_tensor(smollm2_gguf):
    import gguf

    reader = gguf.GGUFReader(str(smollm2_gguf))
    t = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    expected = gguf_dequantize(t.data, t.tensor_type)
    got = dequantize(t.data, "Q4_1", tuple(reversed([int(n) for n in t.shape])))
    assert torch.equal(got, torch.from_numpy(np.array(expected)).reshape(got.shape))
