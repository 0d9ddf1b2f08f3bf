"""Embedding projector: similarities, neighbours and the PCA map say true things."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import giraffe
from giraffe.config import PRESETS
from giraffe.explain.projector import (
    cosine_matrix,
    embedding_matrix,
    nearest_tokens,
    pca_2d,
    word_vector,
    word_vectors,
    write_png,
)
from giraffe.lm import LanguageModel
from giraffe.models import Decoder


@pytest.fixture(scope="module")
def lm(tiny_folder):
    tok = giraffe.load_tokenizer(tiny_folder)
    torch.manual_seed(0)
    return LanguageModel(Decoder(PRESETS["llama-tiny"].replace(vocab_size=tok.vocab_size)), tok)


def test_one_token_word_is_its_row_and_split_words_are_means(lm):
    table = lm.model.embed.weight.detach()
    giraffe_ = word_vector(lm, "giraffe")
    assert len(giraffe_.ids) == 1 and lm.tokenizer.decode(giraffe_.ids) == " giraffe"
    torch.testing.assert_close(giraffe_.vector, table[giraffe_.ids[0]])
    assert giraffe_.note.startswith("one token")
    exact = word_vector(lm, "giraffe", try_space=False)
    assert lm.tokenizer.decode(exact.ids) == "giraffe"
    zebra = word_vector(lm, "zebra")
    assert len(zebra.ids) > 1
    torch.testing.assert_close(zebra.vector, table[zebra.ids].mean(0))
    assert zebra.note.startswith(f"mean of {len(zebra.ids)} token embeddings")
    with pytest.raises(ValueError, match="empty word"):
        word_vector(lm, " ")


def test_cosines_and_neighbours(lm):
    words = word_vectors(lm, ["giraffe", "tallest", "zebra"])
    cos = cosine_matrix(words)
    torch.testing.assert_close(cos, cos.T)
    torch.testing.assert_close(cos.diagonal(), torch.ones(3))
    expected = F.cosine_similarity(words[0].vector, words[2].vector, dim=0)
    torch.testing.assert_close(cos[0, 2], expected)
    # Plant a near-copy of "giraffe" at another token: it must come out first.
    target = words[0].ids[0]
    twin = (target + 7) % lm.config.vocab_size
    with torch.no_grad():
        lm.model.embed.weight[twin] = 3 * lm.model.embed.weight[target] + 1e-4
    near = nearest_tokens(lm, words[0], n=5)
    assert near[0][0] == twin and near[0][2] == pytest.approx(1.0, abs=1e-4)
    assert target not in [i for i, _, _ in near] and len(near) == 5
    assert [c for _, _, c in near] == sorted((c for _, _, c in near), reverse=True)


def test_pca_keeps_the_distances_of_three_points(lm, tmp_path):
    words = word_vectors(lm, ["giraffe", "tallest", "zebra"])
    coords, share = pca_2d(words)
    original = torch.cdist(
        torch.stack([w.vector for w in words])[None], torch.stack([w.vector for w in words])[None]
    )
    projected = torch.cdist(coords[None], coords[None])
    # Three centred points span at most a plane, so two axes lose nothing.
    torch.testing.assert_close(projected, original, atol=1e-5, rtol=1e-4)
    assert share.sum() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="at least two words"):
        pca_2d(words[:1])
    assert write_png(words, tmp_path / "pca.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_packed_smollm2_embeddings_equal_the_float_ones():
    packed = giraffe.load("smollm2-135m-instruct", packed=True)
    if isinstance(packed.model.embed, torch.nn.Embedding):
        pytest.skip("the compiled kernel is unavailable here, so nothing stays packed")
    table = embedding_matrix(packed.model, chunk=10_000)
    plain = giraffe.load("smollm2-135m-instruct", packed=False)
    torch.testing.assert_close(table, plain.model.embed.weight.detach())
    horse = nearest_tokens(plain, word_vector(plain, "horse"), n=10)
    assert horse and all(-1 <= c <= 1 for _, _, c in horse)


class FakeSentenceEncoder:
    """Stands in for SentenceEncoder: fixed unit vectors, so the plumbing is what is tested."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def embed(self, texts):
        import numpy as np

        table = {"a": [1.0, 0.0, 0.0], "b": [0.6, 0.8, 0.0], "c": [0.0, 0.0, 1.0]}
        return np.array([table[t] for t in texts], dtype=np.float32)


def test_sentence_vectors_come_from_the_encoder(lm):
    from giraffe.explain.projector import embeddings_report, sentence_vectors

    fake = FakeSentenceEncoder(lm.tokenizer)
    report = embeddings_report(fake, ["a", "b", "c"], sentences=True)
    torch.testing.assert_close(
        torch.tensor(report["cosine"]),
        torch.tensor([[1.0, 0.6, 0.0], [0.6, 1.0, 0.0], [0.0, 0.0, 1.0]]),
    )
    assert report["neighbours"] is None and report["words"][0]["note"].startswith("sentence")
    assert len(report["pca"]["coords"]) == 3
    with pytest.raises(ValueError, match="need an encoder"):
        sentence_vectors(lm, ["a decoder has no sentence vectors here"])


@pytest.mark.slow
def test_minilm_sentences_about_giraffes_are_closer():
    from giraffe.explain.projector import embeddings_report

    encoder = giraffe.load("minilm-l6")
    texts = ["A giraffe eats leaves.", "The tall animal feeds on trees.", "Stocks fell today."]
    cos = embeddings_report(encoder, texts, sentences=True)["cosine"]
    assert cos[0][1] > cos[0][2] + 0.2
    words = embeddings_report(encoder, ["horse", "car"], neighbours=3)
    assert words["neighbours"][0][0]["token"] == "horses"
