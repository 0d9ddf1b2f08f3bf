"""Tokenizer training (char, word, byte-level BPE), its special tokens, its files, and
the side-by-side comparison."""

from __future__ import annotations

import pytest

from giraffe.tokenizer.compare import compare
from giraffe.tokenizer.tokenizer import load_tokenizer_file
from giraffe.tokenizer.train import SPECIAL_TOKENS, TokenizerTrainingError, train_tokenizer
from giraffe.train.corpus import demo_documents

TEXTS = [text for _, text in demo_documents()][:15]
SENTENCE = "The for statement is used to iterate over the elements of a sequence."


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_each_kind_trains_with_the_special_tokens_first(kind):
    tok = train_tokenizer(TEXTS, kind, 400)
    assert tok.vocab_size <= 400
    assert [tok.special_tokens[t] for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    ids = tok.encode("a <|eos|> b")
    assert tok.eos_id in ids  # special tokens written in text are parsed as their ids
    assert tok.chat_template and "<|im_start|>" in tok.chat_template


def test_char_and_bpe_round_trip_and_bpe_compresses():
    char, bpe = train_tokenizer(TEXTS, "char", 400), train_tokenizer(TEXTS, "bpe", 600)
    for tok in (char, bpe):
        assert tok.decode(tok.encode(SENTENCE)) == SENTENCE
    assert len(char.encode(SENTENCE)) == len(SENTENCE)  # one token per (ASCII) character
    assert len(bpe.encode(SENTENCE)) < len(SENTENCE) / 2
    # byte-level BPE knows every byte: nothing is unknown, even unseen scripts
    assert bpe.decode(bpe.encode("жирафа 🦒")) == "жирафа 🦒"
    # [MASK] takes the space before it, so the masked word keeps its own leading space
    pieces = bpe.token_strings(bpe.encode("use the [MASK] loop"))
    assert pieces[pieces.index("[MASK]") - 1] == " the"
    assert bpe.decode(bpe.encode("use the [MASK] loop")) == "use the[MASK] loop"


def test_word_level_maps_unknown_words_to_unk():
    tok = train_tokenizer(TEXTS, "word", 300)
    ids = tok.encode("the statement zyzzyva")
    assert ids[-1] == tok.special_tokens["<|unk|>"]
    assert ids[0] != tok.special_tokens["<|unk|>"]
    assert tok.decode(ids[:2]) == "the statement"


@pytest.mark.parametrize("kind,least", [("bpe", 263), ("word", 8), ("char", 8)])
def test_a_vocabulary_too_small_for_the_special_tokens_is_refused(kind, least):
    with pytest.raises(TokenizerTrainingError, match=f"--vocab-size {least} or more"):
        train_tokenizer(TEXTS, kind, least - 1)
    with pytest.raises(TokenizerTrainingError, match="--kind"):
        train_tokenizer(TEXTS, "unigram", 1000)
    with pytest.raises(TokenizerTrainingError, match="no text"):
        train_tokenizer(["", ""], "bpe", 1000)


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_saved_tokenizer_loads_in_giraffe_and_transformers_alike(kind, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = train_tokenizer(TEXTS, kind, 500)
    tok.save(tmp_path)
    ours = load_tokenizer_file(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = SENTENCE + " <|eos|>"
    assert ours.encode(text) == tok.encode(text)
    assert theirs(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (1, 2, 0)
    assert theirs.eos_token == "<|eos|>" and theirs.pad_token == "<|pad|>"
    assert ours.chat_template == tok.chat_template


def test_compare_counts_tokens_per_word_and_bytes_per_token():
    toks = {k: train_tokenizer(TEXTS, k, 600) for k in ("char", "word", "bpe")}
    rows = {r.name: r for r in compare("fast faster fastest", toks)}
    assert rows["char"].tokens == tuple("fast faster fastest")
    assert rows["char"].tokens_per_word == pytest.approx(19 / 3)
    assert rows["char"].bytes_per_token == 1.0
    assert len(rows["word"].ids) == 3  # one token per word (known or <|unk|>)
    bpe = rows["bpe"]
    assert "".join(bpe.tokens) == "fast faster fastest"
    assert bpe.bytes_per_token == pytest.approx(19 / len(bpe.ids))
    assert 1 <= bpe.tokens_per_word < rows["char"].tokens_per_word
