"""Perplexity: the windowed scoring equals a hand computation; bits per byte follows."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from giraffe.config import PRESETS
from giraffe.eval.perplexity import perplexity
from giraffe.models import Decoder


def test_matches_hand_computation():
    torch.manual_seed(0)
    model = Decoder(PRESETS["llama-tiny"]).eval()
    ids = torch.randint(0, 512, (50,)).tolist()
    result = perplexity(model, ids, ctx=16, decode=lambda t: "x" * len(t))
    nll, count = 0.0, 0
    for w in range(3):  # 50 // 16 windows; the last 2 tokens are not scored
        chunk = torch.tensor([ids[w * 16 : (w + 1) * 16]])
        with torch.no_grad():
            logp = F.log_softmax(model(chunk)[0], dim=-1)
        for t in range(8, 16):
            nll -= logp[t - 1, chunk[0, t]].item()
            count += 1
    assert result.tokens_scored == count == 24 and result.windows == 3
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert result.bits_per_byte == pytest.approx(nll / math.log(2) / 24, rel=1e-5)


def test_uniform_model_has_vocabulary_perplexity():
    class Uniform(torch.nn.Module):
        def forward(self, ids):
            return torch.zeros(*ids.shape, 100)

    assert perplexity(Uniform(), list(range(40)), ctx=8).perplexity == pytest.approx(100.0)


def test_too_short_text_is_explained():
    with pytest.raises(ValueError, match="fewer than one window.*at most 3 tokens"):
        perplexity(Decoder(PRESETS["llama-tiny"]), [1, 2, 3], ctx=16)
