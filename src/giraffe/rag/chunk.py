"""Text -> chunks of at most `max_tokens` embedding-model tokens, overlapping a little.

Chunks end at sentence ends, and preferably at paragraph ends; a sentence longer than
a chunk is cut between words (and a word longer than a chunk between characters).
Consecutive chunks share up to `overlap` tokens of whole sentences, so a fact split
across a boundary is still whole in one of them. Each chunk is a (start, end) span of
the original text: `text[start:end]` is exactly the chunk, so offsets can be shown.

Token counts come from a callable `count(list[str]) -> list[int]` (the embedder's
tokens without [CLS]/[SEP]); a chunk's count is taken as the sum of its pieces', which
WordPiece makes exact up to the whitespace between them. It knows nothing of files,
embeddings or storage.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

Counter = Callable[[list[str]], list[int]]
PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
SENTENCE_END = re.compile(r"(?<=[.!?;:])[\"')\]]*\s+|\n")


@dataclass(frozen=True)
class Piece:
    start: int
    end: int
    tokens: int
    opens_paragraph: bool


@dataclass(frozen=True)
class ChunkSpec:
    max_tokens: int = 200  # without the model's specials; MiniLM sees 256 with them
    overlap: int = 32

    def __post_init__(self) -> None:
        if self.max_tokens < 8:
            raise ValueError(f"chunk max_tokens must be at least 8, got {self.max_tokens}")
        if not 0 <= self.overlap < self.max_tokens // 2:
            raise ValueError(
                f"chunk overlap must be in [0, max_tokens/2), got {self.overlap} "
                f"with max_tokens={self.max_tokens}"
            )


def chunk_spans(text: str, count: Counter, spec: ChunkSpec | None = None) -> list[tuple[int, int]]:
    """(start, end) spans covering every non-blank part of `text`, in order."""
    spec = spec or ChunkSpec()
    pieces = _pieces(text, count, spec.max_tokens)
    spans, current, used = [], [], 0
    for piece in pieces:
        full = used + piece.tokens > spec.max_tokens
        # Close at a paragraph end once the chunk is reasonably full: topic boundaries.
        natural = piece.opens_paragraph and used >= spec.max_tokens * 0.6
        if current and (full or natural):
            spans.append((current[0].start, current[-1].end))
            current = _tail(current, spec.overlap) if not natural else []
            used = sum(p.tokens for p in current)
            if used + piece.tokens > spec.max_tokens:  # the overlap would not leave room
                current, used = [], 0
        current.append(piece)
        used += piece.tokens
    if current:
        spans.append((current[0].start, current[-1].end))
    return spans


def _tail(pieces: list[Piece], overlap: int) -> list[Piece]:
    """The last whole pieces totalling at most `overlap` tokens (never all of them)."""
    kept, total = [], 0
    for piece in reversed(pieces[1:]):
        if total + piece.tokens > overlap:
            break
        kept.append(piece)
        total += piece.tokens
    return kept[::-1]


def _pieces(text: str, count: Counter, limit: int) -> list[Piece]:
    spans = []  # (start, end, opens_paragraph)
    for p_start, p_end in _split(text, PARAGRAPH, 0, len(text)):
        for i, (s, e) in enumerate(_split(text, SENTENCE_END, p_start, p_end)):
            spans.append((s, e, i == 0))
    counts = count([text[s:e] for s, e, _ in spans]) if spans else []
    pieces = []
    for (s, e, opens), n in zip(spans, counts, strict=True):
        if n <= limit:
            pieces.append(Piece(s, e, n, opens))
        else:
            pieces.extend(_cut_long(text, s, e, opens, count, limit))
    return pieces


def _split(text: str, pattern: re.Pattern, start: int, end: int) -> list[tuple[int, int]]:
    """Non-blank stretches of text[start:end] between matches of `pattern`, stripped."""
    out, pos = [], start
    for m in pattern.finditer(text, start, end):
        out.append((pos, m.start()))
        pos = m.end()
    out.append((pos, end))
    return [_strip(text, s, e) for s, e in out if text[s:e].strip()]


def _strip(text: str, s: int, e: int) -> tuple[int, int]:
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return s, e


def _cut_long(text, s, e, opens, count: Counter, limit: int) -> list[Piece]:
    """A sentence over the limit -> pieces of whole words (characters for giant words)."""
    words = [(s + m.start(), s + m.end()) for m in re.finditer(r"\S+", text[s:e])]
    counts = count([text[a:b] for a, b in words])
    runs: list[list[int]] = []  # [start, end, tokens] of each piece
    for (a, b), n in zip(words, counts, strict=True):
        if n > limit:  # one "word" longer than a chunk: cut it by characters
            step = max(1, (b - a) * limit // n)
            runs.extend([c, min(b, c + step), limit] for c in range(a, b, step))
            runs.append([b, b, limit + 1])  # a sentinel: nothing joins a cut word
        elif runs and runs[-1][2] + n <= limit:
            runs[-1][1], runs[-1][2] = b, runs[-1][2] + n
        else:
            runs.append([a, b, n])
    pieces = [r for r in runs if r[1] > r[0]]
    return [Piece(a, b, min(n, limit), opens and i == 0) for i, (a, b, n) in enumerate(pieces)]
