"""Logit lens: the last layer's lens is the model's own logits; hooks leave no trace."""

from __future__ import annotations

import pytest
import torch

import giraffe
from giraffe.config import PRESETS
from giraffe.explain.lens import lens_logits, logit_lens, residual_streams, write_png
from giraffe.lm import LanguageModel
from giraffe.models import Decoder

TEXT = "No, I am not a giraffe. The giraffe is the tallest animal."


@pytest.fixture(scope="module", params=["llama-tiny", "gpt2-tiny"])
def lm(request, tiny_folder):
    tok = giraffe.load_tokenizer(tiny_folder)
    torch.manual_seed(0)
    cfg = PRESETS[request.param].replace(vocab_size=tok.vocab_size)
    return LanguageModel(Decoder(cfg), tok, request.param)


def test_last_layer_lens_equals_the_models_logits(lm):
    ids = lm.tokenizer.encode(TEXT)
    streams = residual_streams(lm.model, ids)
    assert len(streams) == lm.config.n_layers + 1
    assert all(s.shape == (len(ids), lm.config.hidden_size) for s in streams)
    torch.testing.assert_close(lens_logits(lm.model, streams[-1]), lm.logits(ids))
    # The first stream is the embedding (+ learned positions): the input, not a layer's output.
    with torch.no_grad():
        x = lm.model.embed(torch.tensor(ids))
        if lm.config.position == "learned":
            x = x + lm.model.pos_embed(torch.arange(len(ids)))
    torch.testing.assert_close(streams[0], x)
    assert not any(layer._forward_hooks or layer._forward_pre_hooks for layer in lm.model.layers)


def test_lens_table_agrees_with_its_logits(lm, tmp_path):
    lens = logit_lens(lm, TEXT)
    ids = lm.tokenizer.encode(TEXT, add_special_tokens=True)
    rows = lm.config.n_layers + 1
    assert lens.layer_names[0] == "embeddings" and len(lens.layer_names) == rows
    assert lens.top_ids.shape == lens.top_probs.shape == (rows, len(ids))
    probs = lm.logits(ids).softmax(-1)
    assert torch.equal(lens.top_ids[-1], probs.argmax(-1))
    torch.testing.assert_close(lens.top_probs[-1], probs.max(-1).values)
    torch.testing.assert_close(
        lens.next_probs[-1], probs[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    )
    assert lens.top_tokens[-1] == lm.tokenizer.token_strings(lens.top_ids[-1].tolist())
    assert write_png(lens, tmp_path / "lens.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_smollm2_last_layer_lens_equals_its_logits():
    lm = giraffe.load("smollm2-135m-instruct", packed=False)
    ids = lm.tokenizer.encode(TEXT)
    streams = residual_streams(lm.model, ids)
    assert len(streams) == 31
    torch.testing.assert_close(lens_logits(lm.model, streams[-1]), lm.logits(ids))
    lens = logit_lens(lm, "The capital of France is")
    assert lens.top_tokens[-1][-1] == " Paris"
