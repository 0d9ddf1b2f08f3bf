"""Looking at a model while it trains: a sampled continuation (decoders) and the top
guesses for a [MASK] (encoders).

It does not know the loop; it takes a model and a tokenizer and returns text.
"""

from __future__ import annotations

import torch

from giraffe.lm import LanguageModel
from giraffe.tokenizer.tokenizer import Tokenizer


def sample(model, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 40) -> str:
    """A seeded sampled continuation of `prompt` (same model, same text); leaves the model in train mode."""
    was_training = model.training
    try:
        lm = LanguageModel(model, tokenizer, "training")
        return lm.complete(
            prompt, max_new_tokens=max_new_tokens, temperature=0.8, top_k=40, seed=0
        ).text
    finally:
        model.train(was_training)


@torch.no_grad()
def fill_mask(model, tokenizer: Tokenizer, text: str, k: int = 5) -> list[tuple[str, float]]:
    """The k likeliest tokens at the first [MASK] of `text`, with their probabilities."""
    mask_id = tokenizer.special_tokens.get("[MASK]")
    ids = tokenizer.encode(text)
    if mask_id is None or mask_id not in ids:
        raise ValueError(f"{text!r} holds no [MASK] token of {tokenizer.name}")
    was_training = model.training
    model.eval()
    try:
        logits = model(torch.tensor([ids]))[0, ids.index(mask_id)]  # (V,)
    finally:
        model.train(was_training)
    probs = logits.float().softmax(-1)
    top = probs.topk(k)
    return [
        (tokenizer.decode([i]), float(p))
        for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]
