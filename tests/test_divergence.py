"""KL divergence and top-1 agreement of a model against its reference."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from giraffe.config import PRESETS
from giraffe.eval.divergence import divergence
from giraffe.eval.perplexity import perplexity
from giraffe.models import Decoder


def tiny(seed=0, **changes):
    torch.manual_seed(seed)
    return Decoder(PRESETS["llama-tiny"].replace(**changes)).eval()


IDS = [int(i) for i in torch.randint(0, 512, (64,), generator=torch.Generator().manual_seed(1))]


def test_a_model_against_itself_diverges_nowhere():
    model = tiny()
    r = divergence(model, model, IDS, ctx=32)
    assert r.kl_mean == pytest.approx(0, abs=1e-7) and r.top1_agreement == 1.0
    assert r.perplexity == pytest.approx(perplexity(model, IDS, 32).perplexity, rel=1e-6)
    assert r.tokens_scored == 2 * 16


def test_kl_equals_a_hand_computation():
    reference = tiny()
    model = copy.deepcopy(reference)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    r = divergence(model, reference, IDS[:32], ctx=32)
    with torch.no_grad():
        p = F.softmax(reference(torch.tensor([IDS[:32]]))[0, 15:-1], dim=-1)  # (16, V)
        q = F.softmax(model(torch.tensor([IDS[:32]]))[0, 15:-1], dim=-1)
    by_hand = (p * (p.log() - q.log())).sum(-1)
    assert r.kl_mean == pytest.approx(float(by_hand.mean()), rel=1e-4)
    assert r.kl_mean > 0 and r.kl_p99 >= r.kl_mean
    assert r.top1_agreement == pytest.approx(float((p.argmax(-1) == q.argmax(-1)).float().mean()))
    assert not math.isclose(r.perplexity, r.reference_perplexity)


def test_different_vocabularies_are_refused():
    with pytest.raises(ValueError, match="disagree on the vocabulary"):
        divergence(tiny(vocab_size=600), tiny(), IDS[:32], ctx=32)
