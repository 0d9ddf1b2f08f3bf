"""Incremental detokenization: text pieces that never end in half a UTF-8 character.

A token can hold part of a multi-byte character (byte-level BPE, byte fallback), and
some decoders change a token's text depending on its neighbour (SentencePiece's leading
space). So each step decodes a short window twice - the text already emitted and the
window plus the new token - and emits the difference only once it no longer ends in
U+FFFD. Work per token is bounded by the window, not the history. It does not know how
ids map to text; it calls the tokenizer's `decode`.
"""

from __future__ import annotations

from collections.abc import Callable


class StreamDecoder:
    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # start of the context window
        self._read = 0  # ids before this are already emitted

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly "")."""
        self._ids.append(int(token_id))
        emitted = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) > len(emitted) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return text[len(emitted) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character decodes as U+FFFD)."""
        if self._read == len(self._ids):
            return ""
        emitted = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return text[len(emitted) :]
