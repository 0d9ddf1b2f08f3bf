"""A knowledge base as one object: its store file and its embedder, for code that is not the CLI.

    kb = KnowledgeBase(kb_path("work"), giraffe.load("minilm-l6"), "minilm-l6")
    kb.add("notes.md", data)                     # bytes + a file name (ingest.add_bytes)
    kb.listing()                                 # [{"name", "chunks", "pages", ...}]
    q = kb.ask("When is the audit?", count, budget)   # passages + chat messages
    q.cited(answer)                              # the [n] an answer cites

`giraffe serve --kb NAME` builds one and hands it to the server (which may not import
giraffe.rag: DESIGN's import rule, the same way it is handed its explainers). An upload
can also go in steps - `prepare` (hash, read, chunk), `embed` slices of its texts,
`commit` - so the server can embed between decode steps.

Threads: the SQLite store is opened on first use, by the thread that uses it, and a
connection belongs to that thread; use an instance from one thread (the server uses
its model thread). It knows nothing of HTTP or of how answers are generated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from giraffe.rag.answer import NOTHING_FOUND, SOURCE_PROBE, build_messages, cited, probed_source
from giraffe.rag.chunk import ChunkSpec
from giraffe.rag.ingest import MAX_NAME, Outcome, Prepared, add_bytes, commit, prepare, upload_key
from giraffe.rag.read import MAX_BYTES, SUFFIXES
from giraffe.rag.retrieve import FLOOR, Hit, retrieve
from giraffe.rag.store import Document, Store


class KnowledgeBase:
    # What an upload's name may be (upload_key): the server's document states it
    suffixes: frozenset[str] = frozenset(SUFFIXES)  # the kinds giraffe reads, lower case
    max_name: int = MAX_NAME  # characters

    def __init__(
        self,
        path: str | os.PathLike,
        embedder,
        embedder_name: str,
        spec: ChunkSpec | None = None,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        """Creates the store, or checks that it was built with this embedder, right away."""
        self.path, self.embedder, self.embedder_name = Path(path), embedder, embedder_name
        self.spec, self.max_bytes = spec or ChunkSpec(), max_bytes
        Store.open(self.path, embedder_name, embedder.dim).close()  # fail now, not at first use
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store.open(self.path, self.embedder_name, self.embedder.dim)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    # ---- documents --------------------------------------------------------------------
    def listing(self) -> list[dict]:
        return [describe(d) for d in self.store.documents()]

    def document(self, name: str) -> dict | None:
        found = self.store.document(name)
        return describe(found) if found else None

    def chunk_count(self) -> int:
        return self.store.count_chunks()

    def remove(self, name: str) -> bool:
        """Remove a document by its key (an upload's name, or a `rag add` file's path)."""
        return self.store.remove_document(name)

    def add(self, name: str, data: bytes) -> Outcome:
        return add_bytes(self.store, self.embedder, name, data, self.spec, self.max_bytes)

    @staticmethod
    def check_name(name: str) -> str:
        """The key an upload called `name` gets; SkipFile (a ValueError) says why not."""
        return upload_key(name)

    def prepare(self, name: str, data: bytes) -> Prepared:
        key = upload_key(name)
        return prepare(self.store, self.embedder, key, key, data, self.spec, self.max_bytes)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed(texts)

    def commit(self, prepared: Prepared, vectors: list[np.ndarray]) -> Outcome:
        """Store what `prepare` made, its vectors given in slices (in order)."""
        if prepared.outcome is not None:
            return prepared.outcome
        return commit(self.store, prepared, np.concatenate(vectors))

    # ---- questions --------------------------------------------------------------------
    def ask(
        self,
        question: str,
        count,
        budget: int,
        k: int = 4,
        hybrid: bool = False,
        floor: float | None = None,
    ) -> Question:
        """Retrieve, then number the passages that fit `budget` tokens (`count(text)` of the LM)."""
        floor = FLOOR if floor is None else floor
        hits = retrieve(self.store, self.embedder, question, k, hybrid, floor)
        if not hits:
            return Question(question, [], None)
        messages, used = build_messages(question, hits, count, budget)
        return Question(question, used, messages)


@dataclass(frozen=True)
class Question:
    """A question with its numbered passages and the chat messages that ask the model.

    `messages` is None when nothing in the knowledge base reached the similarity floor:
    then `nothing_found` is the whole answer and no model should run.
    """

    text: str
    hits: list[Hit]  # passage n is hits[n - 1]
    messages: list[dict] | None
    nothing_found: str = NOTHING_FOUND
    probe: str = SOURCE_PROBE  # appended to an answer that cites nothing: the model names one

    def passages(self) -> list[dict]:
        return [
            {
                "number": n,
                "name": h.chunk.path.rsplit("/", 1)[-1],
                "document": h.chunk.path,
                "page": h.chunk.page,
                "start": h.chunk.start,
                "end": h.chunk.end,
                "score": round(h.score, 4),
                "cosine": round(h.cosine, 4),
                "text": h.chunk.text,
            }
            for n, h in enumerate(self.hits, 1)
        ]

    def cited(self, answer: str) -> list[int]:
        return cited(answer, len(self.hits))

    def probed(self, continuation: str) -> int | None:
        """The passage number the model wrote after `probe`, if it is a valid one."""
        return probed_source(continuation, len(self.hits))


def describe(d: Document) -> dict:
    return {
        "name": d.path,
        "uploaded": not ("/" in d.path or "\\" in d.path),  # `rag add` keys by absolute path
        "chunks": d.n_chunks,
        "pages": d.n_pages,
        "sha256": d.sha256,
        "added": round(d.added, 3),
    }
