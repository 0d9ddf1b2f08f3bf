"""A tiny model of each kind learns one small fixed batch by heart (its loss -> ~0).

The cheapest end-to-end check that model, objective and gradients fit together: a bug
that blocks learning (a detached tensor, a wrong shift, a mask that hides the answer)
keeps the loss near ln(vocab). The generator is reseeded every step, so the masked /
corrupted batch is the same each time: one fixed batch, as the test's name says.
"""

from __future__ import annotations

import math

import pytest
import torch

from giraffe.config import PRESETS
from giraffe.models import build_model
from giraffe.train.objectives import SpecialTokens, loss_for, t5_sentinels

VOCAB = 128


@pytest.mark.parametrize("arch, steps", [("gpt2", 300), ("llama", 300), ("bert", 300), ("t5", 400)])
def test_tiny_model_overfits_one_batch(arch, steps):
    torch.manual_seed(0)
    model = build_model(PRESETS[f"{arch}-tiny"].replace(vocab_size=VOCAB))
    ids = torch.randint(4, 100, (4, 32), generator=torch.Generator().manual_seed(1))
    special = SpecialTokens(
        pad_id=0, mask_id=1, never_mask=(2, 3), sentinel_ids=t5_sentinels(VOCAB, 10)
    )
    objective = loss_for(arch)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = None
    for _ in range(steps):
        loss = objective(model, ids, torch.Generator().manual_seed(5), special)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(first - math.log(VOCAB)) < 0.1  # it started knowing nothing
    assert loss.item() < 0.1, f"{arch} did not overfit: loss {loss.item():.3f} after {steps} steps"
