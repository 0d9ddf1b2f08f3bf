"""Chunking: exact spans, token limits, sentence/paragraph boundaries, overlap, long pieces."""

from __future__ import annotations

import pytest
from rag_fakes import HashEmbedder

from giraffe.rag.chunk import ChunkSpec, chunk_spans

COUNT = HashEmbedder().token_counts


def sentences(n: int, words: int = 6, tag: str = "s") -> list[str]:
    return [" ".join(f"{tag}{i}w{j}" for j in range(words)) + "." for i in range(n)]


def check(text: str, spec: ChunkSpec) -> list[str]:
    spans = chunk_spans(text, COUNT, spec)
    chunks = [text[s:e] for s, e in spans]
    for c in chunks:
        assert c == c.strip() and c
        assert COUNT([c])[0] <= spec.max_tokens
    starts = [s for s, _ in spans]
    assert starts == sorted(starts)
    covered = set()
    for s, e in spans:
        covered.update(range(s, e))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace()), "text lost"
    return chunks


def test_chunks_end_at_sentences_and_overlap():
    text = " ".join(sentences(30))  # 7 tokens per sentence, one paragraph
    chunks = check(text, ChunkSpec(max_tokens=30, overlap=8))
    assert len(chunks) > 5
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert a.endswith(".")
        last = a.rsplit(". ", 1)[-1]
        assert b.startswith(last), "the next chunk repeats the last sentence (overlap)"


def test_no_overlap_when_asked():
    text = " ".join(sentences(20))
    chunks = check(text, ChunkSpec(max_tokens=30, overlap=0))
    assert sum(COUNT(chunks)) == COUNT([text])[0]


def test_paragraph_ends_are_preferred():
    paragraphs = ["\n".join([" ".join(sentences(3, tag=f"p{p}"))]) for p in range(4)]
    text = "\n\n".join(paragraphs)  # 21 tokens per paragraph
    chunks = check(text, ChunkSpec(max_tokens=30, overlap=8))
    assert chunks == paragraphs  # each paragraph fills >60 %, so it closes its chunk


def test_long_sentence_and_giant_word_are_cut():
    long_sentence = " ".join(f"w{i}" for i in range(100)) + "."
    giant = "x" * 5000
    text = f"Short one. {long_sentence}\n\n{giant} tail."
    spec = ChunkSpec(max_tokens=20, overlap=4)
    chunks = chunk_spans(
        text, lambda ts: [max(1, len(t) // 50) if "xxx" in t else COUNT([t])[0] for t in ts], spec
    )
    pieces = [text[s:e] for s, e in chunks]
    assert "".join(p for p in pieces if set(p) == {"x"}) == giant
    assert any(p.startswith("w") for p in pieces)


def test_empty_and_blank_text():
    assert chunk_spans("", COUNT) == []
    assert chunk_spans(" \n\n \t", COUNT) == []


def test_offsets_point_into_the_text():
    text = "Héllo wörld. 東京 is big!\n\n  Second paragraph here?  Yes."
    for s, e in chunk_spans(text, COUNT, ChunkSpec(max_tokens=8, overlap=2)):
        assert text[s:e].strip() == text[s:e]


@pytest.mark.parametrize(
    "kw", [{"max_tokens": 4}, {"max_tokens": 20, "overlap": 10}, {"overlap": -1}]
)
def test_bad_spec(kw):
    with pytest.raises(ValueError, match="chunk"):
        ChunkSpec(**kw)
