"""Quantization-aware training: fake quantization equals the real quantizer; gradients flow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from giraffe.config import PRESETS
from giraffe.models import Decoder
from giraffe.quant.qat import QAT_KINDS, QATLinear, fake_quantize, prepare_qat, strip_qat


def sample_weights(seed=0):
    w = np.random.default_rng(seed).standard_normal((12, 256)).astype(np.float32)
    w[0, :32] = 0  # an all-zero block
    w[1, :32] = 0.5  # a constant block
    w[2, :32] = np.abs(w[2, :32])  # no negative weight
    return w


@pytest.mark.parametrize("kind", QAT_KINDS)
def test_fake_quantize_is_the_gguf_round_trip_bit_for_bit(kind):
    w = sample_weights()
    qtype = GGMLQuantizationType[kind]
    expected = dequantize(quantize(w, qtype), qtype)
    got = fake_quantize(torch.from_numpy(w), kind).numpy()
    assert np.array_equal(got, expected)


def test_gradient_passes_straight_through():
    w = torch.randn(4, 64, requires_grad=True)
    x = torch.randn(3, 64)
    (x @ fake_quantize(w, "Q4_0").T).pow(2).sum().backward()
    w_hat = fake_quantize(w.detach(), "Q4_0").requires_grad_(True)
    (x @ w_hat.T).pow(2).sum().backward()
    assert torch.allclose(w.grad, w_hat.grad)


def test_bad_kind_and_shape():
    with pytest.raises(ValueError, match="Q4_K"):
        fake_quantize(torch.zeros(2, 32), "q4_k")
    with pytest.raises(ValueError, match="blocks of 32"):
        fake_quantize(torch.zeros(2, 40), "q8_0")


def test_qat_model_trains_and_deploys_to_exactly_its_trained_weights(tmp_path, float_activations):
    from giraffe.formats.gguf import load_gguf, save_gguf

    torch.manual_seed(0)
    model = Decoder(PRESETS["llama-tiny"])
    keys = set(model.state_dict())
    assert prepare_qat(model, "q4_0") == 2 * 7  # q, k, v, o, gate, up, down per layer
    assert set(model.state_dict()) == keys  # checkpoints and savers see the same model
    ids = torch.randint(0, 512, (2, 33), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(ids[:, :-1], targets=ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    model.eval()
    with torch.no_grad():
        trained = model(ids)
    strip_qat(model)
    assert not any(isinstance(m, QATLinear) for m in model.modules())
    packed = load_gguf(save_gguf(model, tmp_path / "qat.gguf", dtype="q4_0"), packed=True)
    with torch.no_grad():
        deployed = packed(ids)
    # The file also rounds the (tied) embedding, which QAT left float: round it alike and
    # the deployed model computes what the trained one did.
    assert torch.allclose(deployed, _with_rounded_weights(model, ids), atol=1e-4)
    assert (deployed - trained).abs().max() < 0.05 * trained.abs().max()


def _with_rounded_weights(model, ids):
    with torch.no_grad():
        emb = model.embed.weight
        original = emb.detach().clone()
        emb.copy_(fake_quantize(emb, "Q4_0"))
        for m in model.modules():
            if type(m) is torch.nn.Linear:
                m.weight.copy_(fake_quantize(m.weight, "Q4_0"))
        out = model(ids)
        emb.copy_(original)
    return out
