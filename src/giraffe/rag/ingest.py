"""Files and folders -> a knowledge base: read, chunk, embed, store, one document at a time.

`add_paths(store, embedder, paths)` walks folders recursively (hidden files and
folders skipped), hashes each file's bytes (SHA-256): an unchanged file is left alone,
a changed one has its chunks replaced, in one transaction per document. Every file
gets an `Outcome` (added, updated, unchanged or skipped with the reason); one bad file
never stops the batch. The embedder is anything with `embed(texts)`, `token_counts
(texts)` and `max_tokens` (giraffe.embedder.SentenceEncoder, or a fake in tests).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from giraffe.rag.chunk import ChunkSpec, chunk_spans
from giraffe.rag.read import MAX_BYTES, SUFFIXES, SkipFile, read_pages
from giraffe.rag.store import Store


@dataclass(frozen=True)
class Outcome:
    path: str
    status: str  # "added" | "updated" | "unchanged" | "skipped"
    chunks: int = 0
    reason: str = ""


def document_key(path: Path) -> str:
    """How a document is named in the store: its absolute path."""
    return str(path.resolve())


def walk(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Outcome]]:
    """Files to ingest (folders expanded, sorted) and outcomes for paths that do not exist."""
    files, missing = [], []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    if not name.startswith(".") and Path(name).suffix.lower() in SUFFIXES:
                        files.append(Path(root) / name)
        elif path.is_file():
            files.append(path)  # an explicit file of another kind gets its reason later
        else:
            missing.append(Outcome(str(path), "skipped", reason=f"{path}: no such file or folder"))
    return files, missing


def add_paths(
    store: Store,
    embedder,
    paths: Iterable[str | os.PathLike],
    spec: ChunkSpec | None = None,
    max_bytes: int = MAX_BYTES,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    spec = spec or ChunkSpec()
    files, outcomes = walk(paths)
    for outcome in outcomes:
        _tell(on_outcome, outcome)
    for file in files:
        outcome = add_file(store, embedder, file, spec, max_bytes)
        outcomes.append(outcome)
        _tell(on_outcome, outcome)
    return outcomes


def _tell(callback, outcome: Outcome) -> None:
    if callback:
        callback(outcome)


def add_file(store: Store, embedder, file: Path, spec: ChunkSpec, max_bytes: int) -> Outcome:
    key = document_key(file)
    try:
        digest = hashlib.sha256(file.read_bytes()).hexdigest() if _small(file, max_bytes) else ""
        old = store.document(key)
        if old and old.sha256 == digest:
            return Outcome(key, "unchanged", old.n_chunks)
        pages = read_pages(file, max_bytes)
    except SkipFile as e:
        return Outcome(key, "skipped", reason=str(e))
    except OSError as e:
        return Outcome(key, "skipped", reason=f"{file}: cannot be read ({e.strerror or e})")
    chunks = chunk_pages(pages, embedder, spec)
    vectors = embedder.embed([text for *_, text in chunks])
    store.replace_document(key, digest, chunks, vectors, _n_pages(pages))
    return Outcome(key, "updated" if old else "added", len(chunks))


def _small(file: Path, max_bytes: int) -> bool:
    return file.stat().st_size <= max_bytes  # hashing a huge file is pointless: it is skipped


def _n_pages(pages) -> int | None:
    return len(pages) if pages and pages[0][0] is not None else None


def chunk_pages(pages, embedder, spec: ChunkSpec) -> list[tuple[int | None, int, int, str]]:
    """[(page, start, end, text)]; offsets are within the page's text."""
    out = []
    for page, text in pages:
        for start, end in chunk_spans(text, embedder.token_counts, spec):
            out.append((page, start, end, text[start:end]))
    return out
