"""Real GGUF vocabularies (Qwen2.5 BPE, Gemma 3 SentencePiece) and decoding as llama.cpp does.

The oracle is fixtures/gguf_llamacpp_tokens.json, made by llama.cpp with the script beside
it: ids with and without the special tokens the file adds, and llama.cpp's decoded text,
for both real models, for SmolLM2's vocabulary under more pre-tokenizer names, and for
BERT WordPiece (MiniLM's vocabulary written as llama.cpp's converter writes it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from giraffe.tokenizer import TokenizerError, gguf_metadata, tokenizer_from_gguf
from giraffe.tokenizer.gguf_vocab import PRE_TOKENIZERS, tokenizer_from_metadata

FIXTURE = json.loads(
    (Path(__file__).parent / "fixtures" / "gguf_llamacpp_tokens.json").read_text("utf-8")
)
QWEN = FIXTURE["models"]["qwen2.5-coder-0.5b-instruct"]["cases"]
GEMMA = FIXTURE["models"]["gemma-3-270m"]["cases"]
SMOLLM2_TEXTS = json.loads(
    (Path(__file__).parent / "fixtures" / "smollm2_llamacpp_tokens.json").read_text("utf-8")
)["cases"]


def short(case) -> str:
    return repr(case["text"][:24])


@pytest.fixture(scope="module")
def qwen(qwen_gguf):
    return tokenizer_from_gguf(qwen_gguf)


@pytest.fixture(scope="module")
def gemma(gemma_gguf):
    return tokenizer_from_gguf(gemma_gguf)


@pytest.fixture(scope="module")
def smollm2_meta(smollm2_gguf):
    return gguf_metadata(smollm2_gguf)


@pytest.mark.slow
@pytest.mark.parametrize("case", QWEN, ids=[short(c) for c in QWEN])
def test_qwen25_ids_and_text_equal_llama_cpp(qwen, case):
    assert qwen.encode(case["text"]) == case["ids"]
    assert qwen.encode(case["text"], add_special_tokens=True) == case["ids_add_special"]
    assert qwen.decode(case["ids"]) == case["decoded"]


@pytest.mark.slow
@pytest.mark.parametrize("case", GEMMA, ids=[short(c) for c in GEMMA])
def test_gemma3_ids_and_text_equal_llama_cpp(gemma, case):
    assert gemma.encode(case["text"]) == case["ids"]
    assert gemma.encode(case["text"], add_special_tokens=True) == case["ids_add_special"]
    assert gemma.decode(case["ids"]) == case["decoded"]


@pytest.mark.slow
def test_real_vocabularies_specials(qwen, gemma):
    assert qwen.vocab_size == 151936 and not qwen.add_bos
    assert qwen.eos_token == "<|im_end|>" and qwen.bos_token == "<|endoftext|>"
    assert qwen.stop_ids == set(FIXTURE["models"]["qwen2.5-coder-0.5b-instruct"]["eog"])
    assert gemma.vocab_size == 262144 and gemma.add_bos and gemma.bos_token == "<bos>"
    assert gemma.eos_token == "<eos>"
    assert gemma.stop_ids == set(FIXTURE["models"]["gemma-3-270m"]["eog"])  # llama.cpp's EOG set
    assert gemma.chat_template is None  # the base model ships none


@pytest.mark.parametrize("pre", sorted(p for p, v in FIXTURE["pre_types"].items() if "ids" in v))
def test_more_pre_tokenizers_equal_llama_cpp(smollm2_meta, pre):
    meta = {**smollm2_meta, "tokenizer.ggml.pre": pre}
    if pre not in PRE_TOKENIZERS:
        with pytest.raises(TokenizerError, match=f"pre-tokenizer '{pre}'.*not supported"):
            tokenizer_from_metadata(meta, "test.gguf")
        return
    tok = tokenizer_from_metadata(meta, "test.gguf")
    for case, ids in zip(SMOLLM2_TEXTS, FIXTURE["pre_types"][pre]["ids"], strict=True):
        assert tok.encode(case["text"]) == ids, case["text"]


@pytest.mark.parametrize("pre", sorted(FIXTURE["pre_types"]))
def test_decoding_cleans_spaces_as_llama_cpp(smollm2_meta, pre):
    if pre not in PRE_TOKENIZERS:
        pytest.skip(f"giraffe refuses pre-tokenizer {pre!r} (tested above)")
    tok = tokenizer_from_metadata({**smollm2_meta, "tokenizer.ggml.pre": pre}, "test.gguf")
    for case in FIXTURE["pre_types"][pre]["clean"]:
        assert tok.decode(case["ids"]) == case["decoded"], (pre, case["text"])


BERT = FIXTURE["bert"]


@pytest.fixture(scope="module")
def bert():
    import importlib.metadata

    from gguf_vocabs import bert_vocab_meta, minilm_tokenizer_json

    try:
        path = minilm_tokenizer_json()
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("minilm-l6 is not installed: run `giraffe pull minilm-l6` (make test does)")
    return tokenizer_from_metadata(bert_vocab_meta(path), "bert.gguf")


@pytest.mark.parametrize("case", BERT, ids=[short(c) for c in BERT])
def test_bert_wordpiece_equals_llama_cpp(bert, case):
    assert bert.encode(case["text"]) == case["ids"]
    assert bert.encode(case["text"], add_special_tokens=True) == case["ids_add_special"]
    assert bert.decode(case["ids"]) == case["decoded"]


T5 = FIXTURE["t5"]
T5_RUNS = [(merge, c) for merge in (True, False) for c in T5[f"remove_extra_whitespaces={merge}"]]


@pytest.mark.parametrize("merge, case", T5_RUNS, ids=[f"merge={m}-{short(c)}" for m, c in T5_RUNS])
def test_t5_unigram_equals_llama_cpp(merge, case):
    from gguf_vocabs import t5_vocab_meta

    vocab = {k: T5[k] for k in ("tokens", "scores", "token_type")}
    tok = tokenizer_from_metadata(t5_vocab_meta(vocab, merge), "t5.gguf")
    assert tok.encode(case["text"]) == case["ids"]
    assert tok.encode(case["text"], add_special_tokens=True) == case["ids_add_special"]
    assert tok.decode(case["ids"]) == case["decoded"]


# ---- writing a vocabulary read from GGUF back out (SentencePiece, Unigram, WordPiece) ----


def tokenizer_keys_and_types(path) -> dict:
    """Every tokenizer key of a GGUF file with its value, and its GGUF types (the `gguf` package's reader)."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    return {
        k: (f.contents(), [int(t) for t in f.types])
        for k, f in fields.items()
        if k.startswith("tokenizer.")
    }


def write_back(tok, tmp_path):
    """A tiny model saved to GGUF with this tokenizer; the tokenizer read back from it."""
    from giraffe.config import PRESETS
    from giraffe.formats.gguf import save_gguf
    from giraffe.models.decoder import Decoder
    from giraffe.tokenizer import gguf_tokenizer_fields

    cfg = PRESETS["llama-tiny"].replace(
        vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=32
    )
    path = save_gguf(Decoder(cfg), tmp_path / "m.gguf", tokenizer=gguf_tokenizer_fields(tok))
    return path, tokenizer_from_gguf(path)


@pytest.mark.slow
def test_gemma_sentencepiece_vocabulary_writes_back_as_it_was(gemma, gemma_gguf, tmp_path):
    path, again = write_back(gemma, tmp_path)
    assert tokenizer_keys_and_types(path) == tokenizer_keys_and_types(gemma_gguf)
    for case in GEMMA:
        assert again.encode(case["text"]) == case["ids"]
        assert again.decode(case["ids"]) == case["decoded"]


def test_t5_unigram_vocabulary_writes_back(tmp_path):
    import gguf
    from gguf_vocabs import t5_vocab_meta

    from giraffe.tokenizer.gguf_vocab import GGUF_TOKENIZER_KEYS

    # the first file: the fixture's vocabulary with llama.cpp's converter's value types
    meta = t5_vocab_meta({k: T5[k] for k in ("tokens", "scores", "token_type")}, True)
    first = tmp_path / "t5.gguf"
    writer = gguf.GGUFWriter(first, "llama")
    writer.add_tokenizer_model("t5")
    writer.add_token_list(meta["tokenizer.ggml.tokens"])
    writer.add_token_scores(meta["tokenizer.ggml.scores"])
    writer.add_token_types(meta["tokenizer.ggml.token_type"])
    for key, value in meta.items():
        if GGUF_TOKENIZER_KEYS.get(key) == "u32":
            writer.add_uint32(key, value)
        elif GGUF_TOKENIZER_KEYS.get(key) == "bool":
            writer.add_bool(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    tok = tokenizer_from_gguf(first)
    path, again = write_back(tok, tmp_path)
    assert tokenizer_keys_and_types(path) == tokenizer_keys_and_types(first)
    for case in T5["remove_extra_whitespaces=True"]:
        assert again.encode(case["text"], add_special_tokens=True) == case["ids_add_special"]


def test_a_sentencepiece_tokenizer_json_cannot_be_written_and_says_why(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import Unigram

    from giraffe.tokenizer import gguf_tokenizer_fields
    from giraffe.tokenizer.tokenizer import load_tokenizer_file

    file = tmp_path / "tokenizer.json"
    HFTokenizer(Unigram([("<unk>", 0.0), ("a", -1.0)], 0)).save(str(file))
    with pytest.raises(TokenizerError, match="vocabularies read from a GGUF"):
        gguf_tokenizer_fields(load_tokenizer_file(file))


LLAMA3 = json.loads(
    (Path(__file__).parent / "fixtures" / "llama3_llamacpp_tokens.json").read_text("utf-8")
)


def test_llama3_vocabulary_writes_to_gguf_and_reads_back_as_llama_cpp_reads_it(tmp_path):
    """Meta's Llama 3 tokenizer.json (Split with (?i:...) contractions + ByteLevel) is
    llama.cpp's "llama-bpe"; written to GGUF and read back, giraffe's ids, ids with the
    file's specials, decoded text and end-of-generation set equal llama.cpp's on that file
    (fixtures/make_llama3_llamacpp_tokens.py) and the ids equal Hugging Face `tokenizers`."""
    from fetch_vocabularies import vocabulary_dir

    import giraffe
    from giraffe.tokenizer import gguf_tokenizer_fields

    folder = vocabulary_dir("llama3")
    if not (folder / "tokenizer.json").exists():
        pytest.skip("Llama 3's tokenizer is not fetched: run `python tests/fetch_vocabularies.py`")
    tok = giraffe.load_tokenizer(folder)
    fields = gguf_tokenizer_fields(tok)
    assert (fields["pre"], tok.vocab_size, len(fields["merges"])) == ("llama-bpe", 128256, 280147)
    _, again = write_back(tok, tmp_path)
    for case in LLAMA3["cases"]:
        assert again.encode(case["text"]) == case["ids"] == tok.encode(case["text"])
        assert again.encode(case["text"], add_special_tokens=True) == case["ids_add_special"]
        assert again.decode(case["ids"]) == case["decoded"]
    assert (again.bos_id, sorted(again.stop_ids)) == (128000, LLAMA3["eog"])
