"""Packed layers: the compiled kernel against dequantize-then-matmul, for every block type."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fast_path import counting
from gguf import GGMLQuantizationType
from gguf.quants import quantize

from giraffe.quant import kernels, library
from giraffe.quant.blocks import BLOCK_SIZES, round_activations_int8
from giraffe.quant.linear import (
    KERNEL_KINDS,
    KERNEL_MAX_ROWS,
    QuantEmbedding,
    QuantLinear,
)

# Relative to the output's scale: float32 accumulation in another order.
TOLERANCE = dict.fromkeys(KERNEL_KINDS, 2e-6)
# Where the fp16 scales sit in a K-quant super-block (the rest may be any bytes).
# (gguf only dequantizes these: every bit pattern is valid but the fp16 scales')
K_SCALE_OFFSETS = {
    "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "Q3_K": (108,), "IQ4_NL": (0,), "IQ4_XS": (0,),
    "Q2_K": (80, 82),
}  # fmt: skip


def packed_weight(kind, rows=96, cols=256, seed=0):
    """Real quantized rows where the gguf package can quantize `kind`, else random blocks."""
    rng = np.random.default_rng(seed)
    if kind in K_SCALE_OFFSETS:
        weights, size = BLOCK_SIZES[kind]
        raw = rng.integers(0, 256, (rows, cols // weights, size), dtype=np.uint8)
        for at in K_SCALE_OFFSETS[kind]:
            scales = rng.uniform(0.001, 0.01, raw.shape[:2]).astype(np.float16)
            raw[:, :, at : at + 2] = scales.view(np.uint8).reshape(*raw.shape[:2], 2)
        return torch.from_numpy(raw.reshape(rows, -1))
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    raw = quantize(w, GGMLQuantizationType[kind])  # F16 comes back as float16 values
    return torch.from_numpy(raw.view(np.uint8).reshape(rows, -1))


def test_kernel_builds_here():
    assert kernels.available(), "gcc should build the kernel on this machine"


@pytest.mark.parametrize("kind", KERNEL_KINDS)
@pytest.mark.parametrize("rows", [1, 3, 5, 40, 120])  # x is (2, rows): 2 .. 240 input rows
@pytest.mark.parametrize("n_out", [96, 97])  # the batched kernel pairs output rows
def test_kernel_equals_dequantize_then_matmul(kind, rows, n_out, monkeypatch):
    layer = QuantLinear(packed_weight(kind, rows=n_out), kind, 256, n_out, bias=torch.randn(n_out))
    x = torch.randn(2, rows, 256)
    reference = F.linear(x, layer.dequantized_weight(), layer.bias)
    got = kernels.qmatmul(layer.packed, kind, n_out, 256, x) + layer.bias
    scale = reference.abs().max()
    assert ((got - reference).abs().max() / scale) <= TOLERANCE[kind]
    monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", "0")  # the layer's float path, at any row count
    assert ((layer(x) - reference).abs().max() / scale) <= TOLERANCE[kind]


@pytest.mark.parametrize("kind", KERNEL_KINDS)
@pytest.mark.parametrize("m", [1, 3, 7])
def test_few_rows_kernel_equals_dequantize_then_matmul(kind, m):
    """One input row takes its own kernel (row_dot for Q8_0/Q4_0/Q4_1); F16/BF16 take
    half_matmul at any row count, 4 weight rows against up to 4 input rows at a time (97
    leaves a ragged last group; 3 and 7 rows a ragged last chunk)."""
    layer = QuantLinear(packed_weight(kind, rows=97), kind, 256, 97)
    x = torch.randn(m, 256)
    reference = F.linear(x, layer.dequantized_weight())
    got = kernels.qmatmul(layer.packed, kind, 97, 256, x)
    assert ((got - reference).abs().max() / reference.abs().max()) <= TOLERANCE[kind]


def test_dequantized_weight_equals_gguf(tmp_path):
    from gguf.quants import dequantize

    raw = packed_weight("Q4_1")
    layer = QuantLinear(raw, "Q4_1", 256, 96)
    assert torch.equal(
        layer.dequantized_weight(),
        torch.from_numpy(dequantize(raw.numpy(), GGMLQuantizationType.Q4_1)),
    )


def test_embedding_rows_and_tied_projection():
    raw = packed_weight("Q8_0", rows=50, cols=64)
    emb = QuantEmbedding(raw, "Q8_0", 50, 64)
    table = emb.table.dequantized_weight()
    ids = torch.tensor([[3, 7, 3], [49, 0, 1]])
    assert torch.equal(emb(ids), table[ids])
    h = torch.randn(1, 64)
    assert torch.allclose(emb.project(h), h @ table.T, atol=1e-4)


@pytest.mark.parametrize("kind", KERNEL_KINDS)
def test_embedding_lookups_of_every_packed_type_from_blocks_and_from_tiles(kind):
    raw = packed_weight(kind, rows=40, cols=256)
    emb = QuantEmbedding(raw, kind, 40, 256)
    table = emb.table.dequantized_weight()
    ids = torch.tensor([[3, 39, 3], [17, 0, 1]])
    assert torch.equal(emb(ids), table[ids])
    if kind in kernels.int8_kinds():  # a tied head keeps only its int8 tiles
        with torch.inference_mode():
            assert emb.table.compact()
        assert emb.table.packed is None and torch.equal(emb(ids), table[ids])


def test_wrong_byte_count_is_reported():
    with pytest.raises(ValueError, match="bytes per row"):
        QuantLinear(packed_weight("Q4_0"), "Q4_0", 128, 96)


def test_fallback_without_kernel(monkeypatch):
    layer = QuantLinear(packed_weight("Q4_0"), "Q4_0", 256, 96)
    x = torch.randn(1, 256)
    monkeypatch.setattr(kernels, "available", lambda: False)
    assert torch.allclose(layer(x), F.linear(x, layer.dequantized_weight()), atol=0, rtol=0)


@pytest.mark.parametrize("int8", ["0", "1"])
def test_fused_projection_equals_separate_layers(int8, monkeypatch):
    from giraffe.quant.linear import FusedQuant

    monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", int8)
    parts = [
        QuantLinear(packed_weight("Q4_1", rows=r, seed=r), "Q4_1", 256, r, bias=torch.randn(r))
        for r in (64, 32, 32)
    ]
    x = torch.randn(1, 2, 256)
    separate = [p(x) for p in parts]
    fused = FusedQuant.of(parts)
    assert fused is not None
    for a, b in zip(fused(x), separate, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    if fused.packed is not None:  # float activations: parts view one buffer of blocks
        assert parts[1].packed.data_ptr() == fused.packed[64:].data_ptr()
    else:  # int8: parts view one buffer of tiles (repacked in place, no concatenated copy)
        tile = fused._int8.q.numel() // 8  # 128 rows = 8 tiles
        assert parts[1]._int8.q.data_ptr() == fused._int8.q[4 * tile :].data_ptr()
        fused.compact()
        assert all(p.packed is None for p in parts)  # one resident copy
        for a, b in zip(fused(x), separate, strict=True):
            assert torch.allclose(a, b, atol=1e-5)
    assert FusedQuant.of([parts[0], QuantLinear(packed_weight("Q8_0"), "Q8_0", 256, 96)]) is None


def test_fusion_of_mixed_block_types_keeps_separate_segments():
    from giraffe.quant.linear import FusedQuant

    kinds = ("Q5_0", "Q5_0", "Q8_0")  # as a Q4_K_M file stores q, k and v
    parts = [
        QuantLinear(packed_weight(k, rows=32, seed=i), k, 256, 32) for i, k in enumerate(kinds)
    ]
    fused = FusedQuant.of(parts)
    assert fused.kind is None and [s[1] for s in fused.segments] == list(kinds)
    x = torch.randn(3, 256)
    for a, b in zip(fused(x), [p(x) for p in parts], strict=True):
        assert torch.equal(a, b)


INT8_KINDS = kernels.int8_kinds()
needs_vnni = pytest.mark.skipif(not INT8_KINDS, reason="no AVX-512 VNNI: no int8 GEMM built")


@needs_vnni
@pytest.mark.parametrize("kind", INT8_KINDS)
@pytest.mark.parametrize("rows", [1, 4, 5, 33])
@pytest.mark.parametrize(
    "n_out", [96, 40, 97]
)  # whole pairs of 16-row tiles, one tile, a ragged tile
def test_int8_gemm_equals_rounded_activations_then_float_reference(kind, rows, n_out):
    layer = QuantLinear(packed_weight(kind, rows=n_out, cols=512), kind, 512, n_out)
    x = torch.randn(rows, 512) * torch.linspace(0.01, 3, 512)  # blocks of different scales
    reference = F.linear(round_activations_int8(x), layer.dequantized_weight())
    got = kernels.gemm_int8(layer.int8_weights(), x)
    # integer dot products are exact; float32 scaling and summation in another order
    assert ((got - reference).abs().max() / reference.abs().max()) <= 2e-6
    # and the rounding of activations costs about what llama.cpp's does: well under 2%
    exact = F.linear(x, layer.dequantized_weight())
    assert ((got - exact).abs().max() / exact.abs().max()) < 0.02


def amx_weights():
    """Every int8 form the AMX path takes: each type in its own packed form and as bytes,
    and giraffe's group-wise forms (asymmetric int8: unsigned bytes 0..255 and a min)."""
    from giraffe.quant.groupwise import GroupConfig, GroupQuantLinear, quantize_groups

    for kind in INT8_KINDS:
        for nibbles in dict.fromkeys((None, False)):
            packed = packed_weight(kind, rows=97, cols=512)
            yield (
                f"{kind}-{'bytes' if nibbles is False else 'own'}",
                lambda p=packed, k=kind, n=nibbles: kernels.repack_int8(p, k, 97, 512, nibbles=n),
            )
    for cfg in (GroupConfig(8, 64, False), GroupConfig(8, 32, True), GroupConfig(4, 128, False)):
        w = torch.randn(97, 512) * torch.linspace(0.01, 2, 512)
        yield (
            str(cfg),
            lambda w=w, cfg=cfg: GroupQuantLinear(quantize_groups(w, cfg), cfg).int8_weights(),
        )


@pytest.mark.skipif(not library.amx(), reason="no AMX tiles here: the VNNI path is the only one")
@pytest.mark.parametrize("name, make", list(amx_weights()), ids=[n for n, _ in amx_weights()])
@pytest.mark.parametrize("rows", [16, 33, 47])  # whole chunks of 16, and a ragged last one
def test_amx_products_equal_the_vnni_path_bit_for_bit(name, make, rows):
    """Same integers, same float steps in the same order: the same bits on either unit."""
    weights = make()
    x = torch.randn(rows, 512) * torch.linspace(0.01, 3, 512)
    x[3] = 0.0  # an all-zero row
    on = kernels.gemm_int8(weights, x)
    try:
        assert not library.amx(False)
        off = kernels.gemm_int8(weights, x)
    finally:
        assert library.amx(True)
    assert torch.equal(on, off)


@needs_vnni
def test_int8_gemm_writes_into_a_strided_output_and_handles_zero_blocks():
    layer = QuantLinear(packed_weight("Q4_1", rows=48, cols=256), "Q4_1", 256, 48)
    x = torch.randn(6, 256)
    x[2] = 0.0  # an all-zero row: scale 0, no division by zero
    wide = torch.full((6, 60), 7.0)
    kernels.gemm_int8(layer.int8_weights(), x, out=wide[:, 5:53])
    reference = F.linear(round_activations_int8(x), layer.dequantized_weight())
    torch.testing.assert_close(wide[:, 5:53], reference, atol=2e-5, rtol=1e-5)
    assert (wide[:, :5] == 7).all() and (wide[:, 53:] == 7).all()  # nothing written outside


@needs_vnni
@torch.inference_mode()
def test_layers_take_int8_at_inference_and_float_when_switched_off(monkeypatch):
    layer = QuantLinear(packed_weight("Q8_0"), "Q8_0", 256, 96)
    weight = layer.dequantized_weight()
    one, many = torch.randn(1, 256), torch.randn(2, 5, 256)
    torch.testing.assert_close(layer(one), F.linear(round_activations_int8(one), weight))
    torch.testing.assert_close(layer(many), F.linear(round_activations_int8(many), weight))
    monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", "0")
    assert torch.allclose(layer(many), F.linear(many, weight), rtol=0, atol=2e-5)


@needs_vnni
def test_inputs_that_need_gradients_keep_the_differentiable_path():
    layer = QuantLinear(packed_weight("Q4_0"), "Q4_0", 256, 96)
    x = torch.randn(8, 256, requires_grad=True)
    layer(x).sum().backward()
    expected = layer.dequantized_weight().sum(0).expand(8, -1)
    assert torch.allclose(x.grad, expected, atol=1e-5)


@needs_vnni
@pytest.mark.parametrize("kind", kernels.nibble_kinds())
def test_4_5_and_6_bit_types_give_the_same_products_packed_and_as_bytes(kind):
    """Every packed form (nibbles, fifth and sixth bit planes, IQ4 grid indices) against
    the same integers a byte each."""
    packed = packed_weight(kind, rows=40, cols=512)
    nibbles = kernels.repack_int8(packed, kind, 40, 512)
    as_bytes = kernels.repack_int8(packed, kind, 40, 512, nibbles=False)
    per_block = {1: 256, 2: 320, 3: 384, 4: 256}[nibbles.nibbles]  # + fifth (+ sixth) bits
    assert nibbles.q.numel() * 512 == as_bytes.q.numel() * per_block
    assert torch.equal(nibbles.dequantize(), as_bytes.dequantize())
    x = torch.randn(7, 512)
    assert torch.equal(kernels.gemm_int8(nibbles, x), kernels.gemm_int8(as_bytes, x))


@needs_vnni
def test_repacking_wider_integers_as_nibbles_is_refused():
    with pytest.raises(ValueError, match="Q8_0 integers have no packed form"):
        kernels.repack_int8(packed_weight("Q8_0"), "Q8_0", 96, 256, nibbles=True)


@needs_vnni
@pytest.mark.parametrize("kind", INT8_KINDS)
def test_int8_tiles_dequantize_to_the_blocks_bit_for_bit(kind):
    """The int8 form can be the only copy: it gives back exactly ggml's weights."""
    raw = packed_weight(kind, rows=37, cols=512)  # a ragged last tile
    expected = kernels.dequantize(raw, kind, 37, 512)
    tiles = kernels.repack_int8(raw, kind, 37, 512)
    assert torch.equal(tiles.dequantize(), expected)
    ids = torch.tensor([[36, 0], [17, 17]])
    assert torch.equal(tiles.dequantize(ids), expected[ids.flatten()])
    with pytest.raises(IndexError, match="row ids outside 0..36"):
        tiles.dequantize(torch.tensor([37]))


def requantize_v_proj(model, kind: str) -> None:
    """Store every layer's v_proj in another block type, as mixed files (Q4_K_M) do."""
    from giraffe.quant.runtime import PackedRuntime

    for block in model.layers:
        old = block.attn.v_proj
        w = old.dequantized_weight().numpy()
        packed = torch.from_numpy(quantize(w, GGMLQuantizationType[kind]))
        block.attn.v_proj = QuantLinear(packed, kind, old.in_features, old.out_features)
    model.attach_runtime(PackedRuntime.build(model))


@pytest.mark.parametrize("int8", ["1", "0"])
@pytest.mark.parametrize("window,mixed", [(None, False), (3, False), (None, True)])
def test_compiled_decode_step_equals_module_path(tmp_path, window, mixed, int8, monkeypatch):
    monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", int8)  # both paths, both numerics
    from giraffe.config import PRESETS
    from giraffe.formats.gguf import load_gguf, save_gguf
    from giraffe.models import Decoder

    torch.manual_seed(0)
    cfg = PRESETS["llama-tiny"].replace(sliding_window=window)
    path = save_gguf(Decoder(cfg), tmp_path / "m.gguf", dtype="q8_0")
    model = load_gguf(path, packed=True)
    if mixed:
        requantize_v_proj(model, "Q4_0")
        assert model.runtime.layers[0].qkv.kind is None
    assert model.runtime.step is not None
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    caches, outputs = [], []
    for fast in (model.runtime.step, None):
        model.runtime.step = fast
        cache = model.new_cache(1, 32)
        with torch.inference_mode():
            model.hidden(prompt, cache=cache)
            steps = [model.hidden(torch.tensor([[t]]), cache=cache) for t in (9, 2, 6, 5, 3, 5, 8)]
        caches.append(cache)
        outputs.append(torch.cat(steps, dim=1))
    assert torch.allclose(outputs[0], outputs[1], atol=1e-4)
    assert caches[0].length == caches[1].length == 12
    assert torch.allclose(caches[0].k, caches[1].k, atol=1e-5)


@pytest.mark.parametrize("int8", ["1", "0"])
@pytest.mark.parametrize("window", [None, 4])
def test_compiled_prompt_and_its_continuation_equal_module_path(
    tmp_path, window, int8, monkeypatch
):
    """A prompt runs as one C call per layer (rows sharing a cache), as does a later chunk."""
    from giraffe.config import PRESETS
    from giraffe.formats.gguf import load_gguf, save_gguf
    from giraffe.models import Decoder

    monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", int8)
    torch.manual_seed(0)
    cfg = PRESETS["llama-tiny"].replace(sliding_window=window)
    model = load_gguf(save_gguf(Decoder(cfg), tmp_path / "m.gguf", dtype="q4_0"), packed=True)
    fast, outputs, taken = model.runtime.step, [], []

    for model.runtime.step in (counting(fast, taken), None):
        cache = model.new_cache(1, 40)
        with torch.inference_mode():
            first = model.hidden(torch.randint(0, 100, (1, 9), generator=_seeded()), cache=cache)
            more = model.hidden(torch.randint(0, 100, (1, 6), generator=_seeded()), cache=cache)
        outputs.append((torch.cat([first, more], dim=1), cache.k.clone(), cache.length))
    (a, ka, la), (b, kb, lb) = outputs
    assert taken == [True, True] and la == lb == 15
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ka, kb, atol=1e-5, rtol=1e-5)


def _seeded() -> torch.Generator:
    return torch.Generator().manual_seed(7)


def test_compiled_decode_step_declines_what_it_cannot_do(tmp_path):
    from giraffe.config import PRESETS
    from giraffe.formats.gguf import load_gguf, save_gguf
    from giraffe.models import Decoder

    path = save_gguf(Decoder(PRESETS["llama-tiny"]), tmp_path / "m.gguf", dtype="q4_0")
    model = load_gguf(path, packed=True)
    cache = model.new_cache(2, 8)
    with torch.inference_mode():
        model.hidden(torch.tensor([[1, 2], [3, 4]]), cache=cache)
        batch_of_two = torch.tensor([[5], [6]])
        assert model.runtime.step(model, batch_of_two, cache, None) is None
    # a model whose projections are not all packed (F16 here) gets no compiled step
    half = load_gguf(save_gguf(Decoder(PRESETS["gpt2-tiny"]), tmp_path / "g.gguf", dtype="f16"))
    assert half.runtime is None or half.runtime.step is None


@pytest.mark.parametrize("kind", KERNEL_KINDS)
def test_c_dequantize_equals_gguf_bit_for_bit(kind):
    from gguf.quants import dequantize as gguf_dequantize

    raw = packed_weight(kind, rows=7, cols=512)  # K-quants: two super-blocks per row
    expected = torch.from_numpy(gguf_dequantize(raw.numpy(), GGMLQuantizationType[kind]))
    assert torch.equal(kernels.dequantize(raw, kind, 7, 512), expected)


def test_large_batches_use_the_unpacked_weight_and_keep_gradients_correct(monkeypatch):
    monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", "0")  # the float path is under test
    layer = QuantLinear(packed_weight("Q4_1"), "Q4_1", 256, 96)
    other = QuantLinear(packed_weight("Q8_0", seed=1), "Q8_0", 256, 96)
    n = KERNEL_MAX_ROWS + 8
    x = torch.randn(n, 256)  # above KERNEL_MAX_ROWS: dequantize-then-matmul
    with torch.no_grad():
        a = layer(x)
        other(x)  # reuses the shared buffer
        assert torch.equal(a, F.linear(x, layer.dequantized_weight()))
    x.requires_grad_(True)
    y = layer(x)
    other(x.detach())
    y.sum().backward()
    assert torch.allclose(x.grad, layer.dequantized_weight().sum(0).expand(n, -1), atol=1e-5)
