"""Post-training quantization: K-quant writers, fallbacks, error bounds, GGUF round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize, quantize

from giraffe.quant import kquants
from giraffe.quant.ptq import K_QUANTIZERS, quantize_matrix, target_type


def weights(kind: str = "gauss", rows=16, cols=512, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols))
    if kind == "heavy":  # a few large outliers, as real weight matrices have
        w = rng.standard_t(3, (rows, cols))
    w[0, :256] = 0.0  # a super-block of zeros
    w[1, :256] = np.abs(w[1, :256])  # one with no negative weight
    return (0.02 * w).astype(np.float32)


def read_back(raw: np.ndarray, kind: str) -> np.ndarray:
    return dequantize(raw, GGMLQuantizationType[kind])  # llama.cpp's reader, ported by gguf


@pytest.mark.parametrize("kind", list(K_QUANTIZERS))
@pytest.mark.parametrize("data", ["gauss", "heavy"])
def test_k_quant_error_never_exceeds_the_bounded_candidate(kind, data):
    """Bounded candidate: every weight within half a step; the writer never does worse."""
    w = weights(data)
    sub = w.reshape(-1, 256).astype(np.float64)
    if kind == "Q6_K":
        sub = sub.reshape(-1, 16, 16)
        d, sc = kquants._symmetric_bounded(sub)
        _, bounded = kquants._symmetric_codes(sub, d, sc)
        step = (d[:, None] * sc)[:, :, None]
    else:
        sub = sub.reshape(-1, 8, 32)
        levels = 15 if kind == "Q4_K" else 31
        d, dmin, sc, m = kquants._affine_bounded(sub, levels)
        _, bounded = kquants._affine_codes(sub, d, dmin, sc, m, levels)
        step = (d[:, None] * sc)[:, :, None]
    assert np.all(np.abs(sub - bounded) <= step / 2 * (1 + 1e-6) + 1e-12)
    got = read_back(K_QUANTIZERS[kind](w), kind).reshape(sub.shape)
    per_block = lambda x: ((sub - x) ** 2).sum(axis=(1, 2))  # noqa: E731
    assert np.all(per_block(got) <= per_block(bounded) * (1 + 1e-5) + 1e-12)


def test_more_bits_less_error_and_k_quants_compete_with_legacy_types():
    w = weights("gauss", rows=64)

    def rmse(kind):
        raw, actual = quantize_matrix(w, kind)
        assert actual == kind
        return np.sqrt(((w - read_back(raw, kind)) ** 2).mean())

    errors = {k: rmse(k) for k in ("Q4_0", "Q4_1", "Q4_K", "Q5_1", "Q5_K", "Q6_K", "Q8_0")}
    assert errors["Q4_K"] < errors["Q4_0"]  # 4.5 bits per weight beat 4.5
    assert errors["Q4_K"] < 1.05 * errors["Q4_1"]  # ...and about match 5.0
    assert errors["Q5_K"] < 1.05 * errors["Q5_1"]
    assert errors["Q8_0"] < errors["Q6_K"] < errors["Q5_K"] < errors["Q4_K"]


@pytest.mark.parametrize(
    "kind,bound,levels",
    [("Q8_0", 0.5, 127), ("Q4_1", 0.5, 15), ("Q5_1", 0.5, 31), ("Q4_0", 1.0, 8)],
)
def test_legacy_types_come_from_gguf_bit_for_bit_and_keep_their_bound(kind, bound, levels):
    """Half a step (Q4_0: a step, its top level is clipped), plus the fp16 scale's rounding."""
    w = weights("heavy")
    raw, actual = quantize_matrix(w, kind)
    assert actual == kind
    assert np.array_equal(raw, quantize(w, GGMLQuantizationType[kind]))
    blocks = raw.reshape(-1, raw.shape[-1] // (w.shape[1] // 32))  # (N, bytes per block)
    d = np.abs(blocks[:, :2].copy().view(np.float16).astype(np.float32))  # (N, 1)
    err = np.abs(w - read_back(raw, kind)).reshape(-1, 32)
    fp16_rounding = levels * 2.0**-11  # |q| <= levels times the scale's relative error
    assert np.all(err <= (bound + fp16_rounding) * d + 1e-7)


def test_rows_the_blocks_do_not_divide_fall_back_as_llama_cpp_does():
    assert target_type("q4_k", 576) == "Q5_0"
    assert target_type("q5_k", 576) == "Q5_1"
    assert target_type("q6_k", 576) == "Q8_0"
    assert target_type("q4_k", 1536) == "Q4_K"
    assert target_type("q4_0", 40) == "F32"
    raw, actual = quantize_matrix(weights(cols=576), "q6_k")
    assert actual == "Q8_0" and np.array_equal(
        raw, quantize(weights(cols=576), GGMLQuantizationType.Q8_0)
    )
    with pytest.raises(ValueError, match="unknown quantization type 'Q3_X'"):
        target_type("q3_x", 256)
    with pytest.raises(ValueError, match="multiple of 256"):
        kquants.quantize_q4_k(weights(cols=288))


@pytest.mark.parametrize("kind", ["q4_k", "q5_k", "q6_k", "q5_0"])
def test_gguf_written_with_k_quants_reads_back_and_runs_packed(tmp_path, kind, float_activations):
    from giraffe.config import PRESETS
    from giraffe.formats.gguf import load_gguf, save_gguf
    from giraffe.models import Decoder

    torch.manual_seed(0)
    cfg = PRESETS["llama-tiny"].replace(hidden_size=256, intermediate_size=512, n_heads=4)
    model = Decoder(cfg)
    path = save_gguf(model, tmp_path / f"m-{kind}.gguf", dtype=kind)
    reader = GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    down = tensors["blk.0.ffn_down.weight"]
    assert down.tensor_type.name == kind.upper()
    expected, _ = quantize_matrix(model.layers[0].mlp.down_proj.weight.detach().numpy(), kind)
    assert np.array_equal(np.array(down.data), expected)  # the bytes we wrote, read back
    packed = load_gguf(path, packed=True)
    assert packed.runtime.step is not None
    ids = torch.tensor([[5, 9, 2, 7, 1]])
    with torch.inference_mode():
        reference, got = model(ids), packed(ids)
        unpacked = load_gguf(path, packed=False)(ids)  # dequantize-then-matmul
    assert torch.allclose(got, unpacked, atol=1e-5)
    rel = (got - reference).norm() / reference.norm()
    # Measured on this random model: Q4_0 0.21, Q4_1 0.19, Q5_1 0.094, Q8_0 0.012.
    assert rel < {"q4_k": 0.18, "q5_k": 0.09, "q6_k": 0.05, "q5_0": 0.11}[kind]
