"""Files and folders -> a knowledge base: read, chunk, embed, store, one document at a time.

`add_paths(store, embedder, paths)` walks folders recursively (hidden files and
folders skipped), hashes each file's bytes (SHA-256): an unchanged file is left alone,
a changed one has its chunks replaced, in one transaction per document. Every file
gets an `Outcome` (added, updated, unchanged or skipped with the reason); one bad file
never stops the batch. The embedder is anything with `embed(texts)`, `token_counts
(texts)` and `max_tokens` (giraffe.embedder.SentenceEncoder, or a fake in tests).

`add_bytes(store, embedder, name, data)` ingests a document that arrived as bytes (an
upload to `giraffe serve`): `name` is a plain file name ("notes.md"), the document's
key in the store and its label in answers, never a path that is opened. Files added
from disk are keyed by their absolute path, so the two cannot collide. Both go through
`prepare` (hash, unchanged?, read, chunk) and `commit` (store the vectors); a caller
that must embed in slices (the server, between decode steps) calls the two itself.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from giraffe.rag.chunk import ChunkSpec, chunk_spans
from giraffe.rag.read import MAX_BYTES, SUFFIXES, SkipFile, check_kind, pages_from_bytes, read_file
from giraffe.rag.store import Store

MAX_NAME = 255  # characters in an uploaded name (most file systems allow 255 bytes)


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
        data = read_file(file, max_bytes)
    except SkipFile as e:
        return Outcome(key, "skipped", reason=str(e))
    return _ingest(store, embedder, key, str(file), data, spec, max_bytes)


def add_bytes(
    store: Store,
    embedder,
    name: str,
    data: bytes,
    spec: ChunkSpec | None = None,
    max_bytes: int = MAX_BYTES,
) -> Outcome:
    """Ingest an uploaded document under its file name (see `upload_key`)."""
    try:
        key = upload_key(name)
    except SkipFile as e:
        return Outcome(str(name), "skipped", reason=str(e))
    return _ingest(store, embedder, key, key, data, spec or ChunkSpec(), max_bytes)


def upload_key(name: str) -> str:
    """An uploaded document's key: its file name as given, if it is one giraffe can read.

    A name is only ever a label, but one that looks like a path ("../x.md", "C:\\x.md")
    is refused rather than quietly cut to its last part: the sender should know what the
    document will be called. Control characters are refused so a list shows what is there.
    """
    if not isinstance(name, str) or not name.strip():
        raise SkipFile("the document name is empty: give a file name such as notes.md")
    if len(name) > MAX_NAME:
        raise SkipFile(f"the document name is {len(name)} characters; at most {MAX_NAME}")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise SkipFile(
            f"{name!r} looks like a path; give a plain file name such as notes.md "
            "(an upload is named, never written, by it)"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise SkipFile(f"{name!r} contains control characters; give a plain file name")
    check_kind(name)
    return name


@dataclass(frozen=True)
class Prepared:
    """A document read and chunked, waiting for its vectors; or, when `outcome` is set,
    one that needs none (unchanged, or skipped with the reason)."""

    key: str
    sha256: str = ""
    chunks: tuple[tuple[int | None, int, int, str], ...] = ()  # (page, start, end, text)
    n_pages: int | None = None
    replaces: bool = False  # the store holds an older version under this key
    outcome: Outcome | None = None

    @property
    def texts(self) -> list[str]:
        return [text for *_, text in self.chunks]


def prepare(
    store: Store, embedder, key: str, label: str, data: bytes, spec: ChunkSpec, max_bytes: int
) -> Prepared:
    """Hash, compare with the stored version, read (`label` names the kind), chunk."""
    digest = hashlib.sha256(data).hexdigest()
    old = store.document(key)
    if old and old.sha256 == digest:
        return Prepared(key, outcome=Outcome(key, "unchanged", old.n_chunks))
    try:
        pages = pages_from_bytes(label, data, max_bytes)
    except SkipFile as e:
        return Prepared(key, outcome=Outcome(key, "skipped", reason=str(e)))
    chunks = tuple(chunk_pages(pages, embedder, spec))
    return Prepared(key, digest, chunks, _n_pages(pages), old is not None)


def commit(store: Store, prepared: Prepared, vectors) -> Outcome:
    """Store a prepared document's (n_chunks, dim) vectors: one transaction."""
    p = prepared
    if p.outcome is not None:
        return p.outcome
    store.replace_document(p.key, p.sha256, list(p.chunks), vectors, p.n_pages)
    return Outcome(p.key, "updated" if p.replaces else "added", len(p.chunks))


def _ingest(store, embedder, key, label, data, spec, max_bytes) -> Outcome:
    prepared = prepare(store, embedder, key, label, data, spec, max_bytes)
    if prepared.outcome is not None:
        return prepared.outcome
    return commit(store, prepared, embedder.embed(prepared.texts))


def _n_pages(pages) -> int | None:
    return len(pages) if pages and pages[0][0] is not None else None


def chunk_pages(pages, embedder, spec: ChunkSpec) -> list[tuple[int | None, int, int, str]]:
    """[(page, start, end, text)]; offsets are within the page's text."""
    out = []
    for page, text in pages:
        for start, end in chunk_spans(text, embedder.token_counts, spec):
            out.append((page, start, end, text[start:end]))
    return out
