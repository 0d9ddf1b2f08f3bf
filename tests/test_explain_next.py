"""Next-token view: the table agrees with the model's loss, and sampling settings reshape
one step's distribution exactly as generation's samplers do."""

from __future__ import annotations

import math

import pytest
import torch

import giraffe
from giraffe.config import PRESETS
from giraffe.explain.next_token import (
    next_token_table,
    parse_setting,
    reshape,
    reshape_all,
    write_reshape_png,
)
from giraffe.lm import LanguageModel
from giraffe.models import Decoder

TEXT = "No, I am not a giraffe. The giraffe is the tallest animal."


@pytest.fixture(scope="module")
def lm(tiny_folder):
    tok = giraffe.load_tokenizer(tiny_folder)
    torch.manual_seed(0)
    # A larger init spread than N(0, 0.02) gives peaked, readable distributions.
    model = Decoder(PRESETS["llama-tiny"].replace(vocab_size=tok.vocab_size))
    with torch.no_grad():
        model.embed.weight.mul_(40)
    return LanguageModel(model, tok, "tiny")


def test_table_matches_the_models_loss_and_ranks(lm):
    table = next_token_table(lm, TEXT, k=3)
    ids = table.ids
    assert len(table.positions) == len(ids) and table.positions[-1].next_id is None
    with torch.no_grad():
        loss = lm.model(torch.tensor([ids[:-1]]), targets=torch.tensor([ids[1:]]))
    assert table.mean_surprisal_bits == pytest.approx(float(loss) / math.log(2), rel=1e-4)
    probs = table.logits.softmax(-1)
    for pos in table.positions[:-1]:
        row = probs[pos.index]
        order = row.argsort(descending=True).tolist()
        assert pos.rank == order.index(pos.next_id) + 1
        assert pos.prob == pytest.approx(float(row[pos.next_id]), rel=1e-4)
        assert pos.surprisal_bits == pytest.approx(-math.log2(pos.prob))
        assert [c.id for c in pos.top] == order[:3]
        assert pos.top[0].prob >= pos.top[1].prob >= pos.top[2].prob
        assert pos.token == lm.tokenizer.token_strings([ids[pos.index]])[0]


def test_reshaping_follows_the_samplers():
    torch.manual_seed(1)
    logits = torch.randn(50) * 3
    plain = reshape(logits, {})
    torch.testing.assert_close(plain.probs, logits.softmax(-1))
    assert plain.kept == 50
    cool = reshape(logits, {"temperature": 0.5})
    torch.testing.assert_close(cool.probs, (logits / 0.5).softmax(-1))
    assert cool.entropy_bits < plain.entropy_bits < reshape(logits, {"temperature": 2}).entropy_bits
    top5 = reshape(logits, {"top_k": 5})
    assert top5.kept == 5 and set(top5.probs.nonzero().flatten().tolist()) == set(
        logits.topk(5).indices.tolist()
    )
    nucleus = reshape(logits, {"top_p": 0.9})
    sorted_p = logits.softmax(-1).sort(descending=True).values
    smallest = int((sorted_p.cumsum(0) < 0.9).sum()) + 1  # the smallest set reaching 0.9
    assert nucleus.kept == smallest
    greedy = reshape(logits, {"temperature": 0})
    assert greedy.kept == 1 and greedy.probs[logits.argmax()] == 1
    assert [s.label for s in reshape_all(logits)][:2] == ["temperature=1", "temperature=0.5"]


def test_settings_parse_and_bad_ones_are_named(tmp_path, lm):
    assert parse_setting("temperature=0.7, top-p=0.9") == {"temperature": 0.7, "top_p": 0.9}
    assert parse_setting("top_k=5") == {"top_k": 5}
    with pytest.raises(ValueError, match="unknown setting 'min_p'"):
        parse_setting("min_p=0.1")
    with pytest.raises(ValueError, match="cannot read"):
        parse_setting("temperature")
    with pytest.raises(ValueError, match="top_p in"):
        parse_setting("top_p=1.5")
    with pytest.raises(ValueError, match="at least 1"):
        next_token_table(lm, TEXT, k=0)
    table = next_token_table(lm, TEXT)
    shaped = reshape_all(table.logits[-1])
    path = write_reshape_png(shaped, lm.tokenizer.token_strings, tmp_path / "r.png", title="$x$")
    assert path.read_bytes()[:4] == b"\x89PNG"
