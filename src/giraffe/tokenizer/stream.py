"""Incremental detokenization: text pieces that never end in half a UTF-8 character.

A token can hold part of a multi-byte character (byte-level BPE, SentencePiece byte
fallback, tiktoken), and some decoders change a token's text depending on its neighbours
(SentencePiece drops the space of the first token; WordPiece glues "##" pieces). So the
decoder keeps a short window of ids, decodes it whole after each new token, and emits
the characters past what it already sent, holding back a trailing U+FFFD: an incomplete
character still waiting for its last bytes. Once the window decodes to whole characters
it shrinks to the shortest tail that still decodes to clean, non-empty text - the context
the next token is decoded against - so the work per token stays small however long the
stream. It does not know how ids map to text; it calls the tokenizer's `decode`.
"""

from __future__ import annotations

from collections.abc import Callable

REPLACEMENT = "\ufffd"
MAX_CONTEXT = 8  # tokens: a character spans at most 4 byte tokens, plus a few empty ones


class StreamDecoder:
    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._window: list[int] = []  # context tokens already shown, then pending ones
        self._sent = 0  # characters of decode(window) already returned

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly "")."""
        self._window.append(int(token_id))
        text = self._decode(self._window)
        complete = text.rstrip(REPLACEMENT)
        out = complete[self._sent :]
        self._sent = max(self._sent, len(complete))
        if len(complete) == len(text):
            self._shrink()
        return out

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character decodes as U+FFFD)."""
        text = self._decode(self._window)[self._sent :]
        self._window, self._sent = [], 0
        return text

    def _shrink(self) -> None:
        # A context of byte tokens that only make a character together, or of tokens that
        # decode to nothing (a skipped special token, a lone SentencePiece space), would
        # decode differently from inside the full text: extend the tail past those.
        n = len(self._window)
        for start in range(n - 1, max(n - MAX_CONTEXT, 0), -1):
            tail = self._decode(self._window[start:])
            if tail and REPLACEMENT not in tail:
                self._window, self._sent = self._window[start:], len(tail)
                return
        if n > MAX_CONTEXT:  # e.g. a run of skipped special tokens: keep the work bounded
            self._window = self._window[-MAX_CONTEXT:]
            self._sent = len(self._decode(self._window))
