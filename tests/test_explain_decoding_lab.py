"""Decoding lab: rows equal what generation gives, log-probabilities are the model's own."""

from __future__ import annotations

import pytest
import torch

import giraffe
from giraffe.config import PRESETS
from giraffe.explain.decoding_lab import (
    parse_strategy,
    repetition_rate,
    run_lab,
    sequence_logprob,
    strategy_name,
)
from giraffe.lm import LanguageModel
from giraffe.models import Decoder


@pytest.fixture(scope="module")
def lm(tiny_folder):
    tok = giraffe.load_tokenizer(tiny_folder)
    torch.manual_seed(0)
    model = Decoder(PRESETS["llama-tiny"].replace(vocab_size=tok.vocab_size))
    # Defaults that would bias every row if the lab did not start from neutral settings.
    return LanguageModel(model, tok, "tiny", {"temperature": 0.2, "repetition_penalty": 1.5})


def test_repetition_rate():
    assert repetition_rate([1, 2, 3, 1, 2, 3], 3) == pytest.approx(0.25)
    assert repetition_rate([5, 5, 5, 5], 1) == pytest.approx(0.75)
    assert repetition_rate([1, 2, 3, 4], 2) == 0
    assert repetition_rate([1], 3) == 0
    with pytest.raises(ValueError, match="at least 1"):
        repetition_rate([1, 2], 0)


def test_rows_match_generation_and_their_logprobs(lm):
    strategies = [{"temperature": 0.0}, {"num_beams": 3}, {"temperature": 0.9, "top_p": 0.8}]
    rows = run_lab(lm, "The giraffe", strategies, max_new_tokens=12, seed=3)
    assert [r.name for r in rows] == [
        "greedy",
        "beam search (3 beams)",
        "sample, temperature=0.9, top_p=0.8",
    ]
    greedy = lm.complete("The giraffe", max_new_tokens=12, temperature=0, repetition_penalty=1.0)
    assert rows[0].token_ids == greedy.token_ids and rows[0].text == greedy.text
    prompt = lm.encode_prompt("The giraffe")
    for row in rows:
        # the engine's reported log-probabilities (or the beam's rescoring) = one forward pass
        assert row.logprob == pytest.approx(sequence_logprob(lm, prompt, row.token_ids), abs=1e-3)
        assert row.logprob < 0 and row.repetition == repetition_rate(row.token_ids, 3)
    again = run_lab(lm, "The giraffe", strategies[2:], max_new_tokens=12, seed=3)
    assert again[0].token_ids == rows[2].token_ids  # one seed, same tokens


def test_strategy_parsing():
    assert parse_strategy("temperature=0.7, top-p=0.9") == {"temperature": 0.7, "top_p": 0.9}
    assert parse_strategy("num_beams=4") == {"num_beams": 4}
    assert strategy_name({"top_k": 40}) == "sample, top_k=40"
    with pytest.raises(ValueError, match="top_p"):
        parse_strategy("top_p=3")
    with pytest.raises(ValueError, match="unknown decoding option"):
        parse_strategy("warmth=2")
    with pytest.raises(ValueError, match="cannot read"):
        parse_strategy("temperature")
