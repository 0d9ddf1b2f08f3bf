"""The compiled prompt attention against the textbook softmax(QK^T)V, and its use in models."""

from __future__ import annotations

import math

import pytest
import torch

from giraffe.nn.attention import attend_reference, build_mask
from giraffe.quant import kernels

needs_kernel = pytest.mark.skipif(
    kernels._function("giraffe_attention_causal") is None, reason="no AVX-512 attention kernel"
)


@needs_kernel
@pytest.mark.parametrize(
    "T,S,H,Hkv,D,window",
    [
        (100, 100, 9, 3, 64, None),  # a prompt, grouped-query heads (SmolLM2's 9/3)
        (7, 20, 4, 2, 64, None),  # a continuation: 13 cached keys before 7 new queries
        (33, 40, 4, 1, 32, 5),  # a sliding window, one kv head
        (5, 5, 2, 2, 128, None),  # wider heads
        (1, 9, 2, 1, 64, None),  # one query sees every key
        # blocks of 64 keys: whole ones, chunks before a window's start skipped, head widths
        # that are not a multiple of 64 dims (96, 80) and Gemma's 256
        (300, 300, 4, 2, 96, 100),
        (130, 130, 2, 1, 80, 70),
        (200, 520, 4, 1, 256, None),
        (64, 200, 3, 3, 64, 17),
        (149, 149, 2, 1, 64, 100),  # the last query's window starts exactly at a chunk
    ],
)
def test_equals_the_reference_attention(T, S, H, Hkv, D, window):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, H, T, D), torch.randn(2, Hkv, S, D), torch.randn(2, Hkv, S, D)
    got = kernels.attention_causal(q, k, v, 1 / math.sqrt(D), window)
    expected, _ = attend_reference(q, k, v, build_mask(S - T, T, S, None, window), False)
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)


@needs_kernel
def test_reads_keys_through_the_strides_of_a_cache_view():
    torch.manual_seed(1)
    cache = torch.randn(2, 1, 2, 64, 32)  # (L, B, Hkv, S_max, D): a layer's slice is strided
    k, v = cache[0, :, :, :24], cache[1, :, :, :24]
    q = torch.randn(1, 24, 4, 32).transpose(1, 2)  # (B, H, T, D) view of (B, T, H, D)
    got = kernels.attention_causal(q, k, v, 0.3, None)
    expected, _ = attend_reference(q, k, v, None, True, scale=0.3)
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)


def test_declines_what_it_does_not_take():
    q = torch.randn(1, 2, 4, 24)  # head size not a multiple of 16
    assert kernels.attention_causal(q, q, q, 0.2, None) is None
    half = torch.randn(1, 2, 4, 32, dtype=torch.bfloat16)
    assert kernels.attention_causal(half, half, half, 0.2, None) is None


@needs_kernel
def test_packed_model_prompts_match_with_and_without_the_kernel(tmp_path, monkeypatch):
    from giraffe.config import PRESETS
    from giraffe.formats.gguf import load_gguf, save_gguf
    from giraffe.models import Decoder

    monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", "0")  # the attention is under test
    torch.manual_seed(0)
    path = save_gguf(Decoder(PRESETS["llama-tiny"]), tmp_path / "m.gguf", dtype="q8_0")
    model = load_gguf(path, packed=True)
    assert model.runtime.layers[0].causal_attention
    ids = torch.randint(0, 100, (2, 40))
    with torch.inference_mode():
        fast = model(ids)
        for layer in model.runtime.layers:
            layer.causal_attention = False
        torch.testing.assert_close(fast, model(ids), atol=1e-4, rtol=1e-4)
