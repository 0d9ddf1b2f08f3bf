"""One text under several tokenizers, side by side: the tokens, their ids, tokens per
word and bytes per token (the "fast er / fast est / quick est" comparison: a word-level
vocabulary has one token per known word, BPE splits rare words into pieces, a character
tokenizer spends a token per character).

It does not load tokenizers nor print: the caller passes `Tokenizer`s and renders the
`Comparison` rows (the CLI as a table, tests as data).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from giraffe.tokenizer.tokenizer import Tokenizer


@dataclass(frozen=True)
class Comparison:
    name: str  # the tokenizer's name (its file or alias)
    tokens: tuple[str, ...]  # a readable piece per token (<0xNN> for part of a character)
    ids: tuple[int, ...]
    tokens_per_word: float  # tokens / whitespace-separated words of the text
    bytes_per_token: float  # UTF-8 bytes of the text / tokens (higher = more compression)


def compare(text: str, tokenizers: dict[str, Tokenizer]) -> list[Comparison]:
    """A `Comparison` per tokenizer, in the order given."""
    words = max(len(re.findall(r"\S+", text)), 1)
    size = len(text.encode("utf-8"))
    rows = []
    for name, tok in tokenizers.items():
        ids = tok.encode(text)
        rows.append(
            Comparison(
                name=name,
                tokens=tuple(tok.token_strings(ids)),
                ids=tuple(ids),
                tokens_per_word=len(ids) / words,
                bytes_per_token=size / max(len(ids), 1),
            )
        )
    return rows
