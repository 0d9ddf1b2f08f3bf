"""One SQLite file per knowledge base: documents, chunks, float32 embeddings, metadata.

    store = Store.open(kb_path("work"), embedder="minilm-l6", dim=384)
    store.replace_document(path, sha256, chunks, vectors)   # one transaction
    hits = store.search(query_vector, k=4)                   # [(chunk id, cosine)]

Where a knowledge base lives: `--kb NAME` is `$GIRAFFE_HOME/kb/NAME.sqlite` when
GIRAFFE_HOME is set, else `$XDG_DATA_HOME/giraffe/kb/NAME.sqlite` (XDG_DATA_HOME
defaults to ~/.local/share); a `--kb` containing a slash or ending in `.sqlite` is
used as a path. The default name is `default`.

Every document is written in one transaction (its old chunks deleted, the new ones
inserted, its row updated), so a process killed mid-way leaves either the old or the
new document, never half of one. Search is exact cosine similarity (vectors are unit
length, so a matrix-vector product) over all chunk vectors, cached as a memory-mapped
`.npy` next to the database and rebuilt when the store's version counter moves.

From `ann_threshold` chunks on (ANN_THRESHOLD unless set on the store), search walks
an approximate HNSW index instead (`giraffe.rag.ann`, when faiss is installed; else it
stays exact and warns once). The index is another cache beside the database, keyed by
the same version, never the source of truth; its candidates are re-scored exactly from
the matrix, so only recall is approximate, never a score. It knows nothing of files'
formats, chunking or the embedding model beyond its name and dimension, which it
records and checks.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from giraffe.rag import ann

# Chunks from which search is approximate by default. Exact search over 10^5 x 384
# float32 takes about 5 ms here and needs no index, whose build costs about 6 s per
# 20,000 chunks after every change; only from a few hundred thousand chunks do the
# scan's tens of milliseconds (and its reading the whole matrix) make the index pay.
ANN_THRESHOLD = 200_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    n_chunks INTEGER NOT NULL,
    n_pages INTEGER,
    added REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    doc_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ord INTEGER NOT NULL,
    page INTEGER,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    text TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
"""


class StoreError(ValueError):
    """The knowledge base file is unusable or does not match this embedder."""


class ExactSearchWarning(UserWarning):
    """Approximate search was due, but faiss is missing: searching exactly instead."""


_warned_exact: set[str] = set()  # databases already warned about, once per process


@dataclass(frozen=True)
class ChunkRecord:
    """A chunk as stored; `vector` is absent when read for display."""

    id: int
    path: str
    page: int | None
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Document:
    path: str
    sha256: str
    n_chunks: int
    n_pages: int | None
    added: float


def kb_home() -> Path:
    if os.environ.get("GIRAFFE_HOME"):
        return Path(os.environ["GIRAFFE_HOME"]) / "kb"
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "giraffe" / "kb"


def kb_path(name_or_path: str | os.PathLike = "default") -> Path:
    """`--kb` -> the SQLite file (see the module docstring for the rule)."""
    text = str(name_or_path)
    if not text:
        raise StoreError("--kb is empty: give a knowledge-base name or a .sqlite path")
    if "/" in text or os.sep in text or text.endswith(".sqlite"):
        return Path(text).expanduser()
    return kb_home() / f"{text}.sqlite"


class Store:
    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path, self.db = path, db
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None  # version, ids, matrix
        self._ann: tuple[int, ann.HNSWIndex] | None = None  # version, index
        # Search approximately from this many chunks on; None: always exactly (`--exact`).
        self.ann_threshold: int | None = ANN_THRESHOLD

    @classmethod
    def open(cls, path: str | os.PathLike, embedder: str = "", dim: int = 0, create=True):
        """Open (or create) a store; `embedder`/`dim` are recorded the first time, then checked."""
        path = Path(path)
        if not path.exists() and not create:
            raise StoreError(
                f"{path}: no knowledge base there; add documents with `giraffe rag add`"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(path, isolation_level=None, timeout=30)  # explicit BEGINs
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{path} is not a giraffe knowledge base ({e})") from None
        store = cls(path, db)
        store._check_model(embedder, dim)
        return store

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- metadata ---------------------------------------------------------------------
    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def _check_model(self, embedder: str, dim: int) -> None:
        known = self.meta("embedder"), self.meta("dim")
        if known == (None, None):
            if embedder and dim:
                with self._transaction():
                    self._set("embedder", embedder)
                    self._set("dim", str(dim))
                    self._set("version", "0")
                    # Tells this store's cache files from a deleted-and-recreated one's.
                    self._set("uid", str(secrets.randbits(62)))
            return
        if embedder and (known[0] != embedder or int(known[1]) != dim):
            raise StoreError(
                f"{self.path} was built with {known[0]} ({known[1]} dims), not {embedder} "
                f"({dim} dims); use a new --kb or the same embedder"
            )

    @property
    def dim(self) -> int:
        return int(self.meta("dim", "0"))

    @property
    def version(self) -> int:
        return int(self.meta("version", "0"))

    def _set(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _transaction(self):
        return _Transaction(self.db)

    # ---- documents --------------------------------------------------------------------
    def document(self, path: str) -> Document | None:
        row = self.db.execute(
            "SELECT path, sha256, n_chunks, n_pages, added FROM documents WHERE path = ?",
            (path,),
        ).fetchone()
        return Document(*row) if row else None

    def documents(self) -> list[Document]:
        rows = self.db.execute(
            "SELECT path, sha256, n_chunks, n_pages, added FROM documents ORDER BY path"
        )
        return [Document(*r) for r in rows]

    def replace_document(self, path, sha256, chunks, vectors, n_pages=None) -> None:
        """Write one document's chunks [(page, start, end, text)] and (n, dim) vectors, atomically."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(chunks), self.dim):
            raise StoreError(
                f"{path}: {vectors.shape} vectors for {len(chunks)} chunks of {self.dim} dims"
            )
        with self._transaction():
            self.db.execute("DELETE FROM documents WHERE path = ?", (path,))  # cascades
            cur = self.db.execute(
                "INSERT INTO documents (path, sha256, n_chunks, n_pages, added) VALUES (?,?,?,?,?)",
                (path, sha256, len(chunks), n_pages, time.time()),
            )
            doc_id = cur.lastrowid
            self.db.executemany(
                "INSERT INTO chunks (doc_id, ord, page, start, end, text, vector) "
                "VALUES (?,?,?,?,?,?,?)",
                [
                    (doc_id, i, page, start, end, text, vectors[i].tobytes())
                    for i, (page, start, end, text) in enumerate(chunks)
                ],
            )
            self._bump()

    def remove_document(self, path: str) -> bool:
        with self._transaction():
            gone = self.db.execute("DELETE FROM documents WHERE path = ?", (path,)).rowcount
            if gone:
                self._bump()
        return bool(gone)

    def _bump(self) -> None:
        self._set("version", str(self.version + 1))

    # ---- chunks -----------------------------------------------------------------------
    def count_chunks(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]

    def chunks(self, ids=None) -> list[ChunkRecord]:
        """Chunks by id, in the order asked (all of them when ids is None)."""
        sql = (
            "SELECT c.id, d.path, c.page, c.start, c.end, c.text FROM chunks c "
            "JOIN documents d ON d.id = c.doc_id"
        )
        if ids is None:
            return [ChunkRecord(*r) for r in self.db.execute(sql + " ORDER BY c.id")]
        ids = [int(i) for i in ids]
        found = {}
        for start in range(0, len(ids), 500):  # SQLite's variable limit
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            for r in self.db.execute(f"{sql} WHERE c.id IN ({marks})", part):
                found[r[0]] = ChunkRecord(*r)
        return [found[i] for i in ids if i in found]

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids (n,), unit vectors (n, dim) float32), memory-mapped from a cache file."""
        version = self.version
        if self._cache and self._cache[0] == version:
            return self._cache[1], self._cache[2]
        ids, matrix = self._load_cache(version) or self._build_cache(version)
        self._cache = (version, ids, matrix)
        return ids, matrix

    def _cache_paths(self) -> tuple[Path, Path]:
        return self.path.with_name(self.path.name + ".ids.npy"), self.path.with_name(
            self.path.name + ".vectors.npy"
        )

    def _load_cache(self, version: int):
        ids_path, vec_path = self._cache_paths()
        if not (ids_path.exists() and vec_path.exists()):
            return None
        try:
            ids = np.load(ids_path)
            if ids.size < 2 or list(ids[:2]) != self._stamp(version):
                return None
            matrix = np.load(vec_path, mmap_mode="r")
        except (OSError, ValueError):
            return None
        return (ids[2:], matrix) if matrix.shape == (ids.size - 2, self.dim) else None

    def _stamp(self, version: int) -> list[int]:
        return [version, int(self.meta("uid", "0"))]

    def _build_cache(self, version: int):
        n, dim = self.count_chunks(), self.dim
        ids = np.empty(n, dtype=np.int64)
        matrix = np.empty((n, dim), dtype=np.float32)
        rows = self.db.execute("SELECT id, vector FROM chunks ORDER BY id")
        for i, (chunk_id, blob) in enumerate(rows):
            ids[i] = chunk_id
            matrix[i] = np.frombuffer(blob, dtype=np.float32)
        ids_path, vec_path = self._cache_paths()
        try:  # vectors first, then the ids with the stamp: a torn pair never matches
            _save_atomic(vec_path, matrix)
            _save_atomic(ids_path, np.concatenate([self._stamp(version), ids]).astype(np.int64))
        except OSError:
            pass  # a read-only folder: search still works from memory
        return ids, matrix

    def search(
        self, query: np.ndarray, k: int = 4, exact: bool | None = None
    ) -> list[tuple[int, float]]:
        """[(chunk id, cosine)] best first, over every chunk.

        `exact`: None approximates from `ann_threshold` chunks on, True never, False
        always (where faiss is installed). The cosines are exact either way.
        """
        ids, matrix = self.matrix()
        if len(ids) == 0 or k < 1:
            return []
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if not self._approximate(len(ids), exact):
            return top_k(ids, matrix @ query, k)  # (n,) scores
        rows = self._index(ids, matrix).search(query, k)  # candidates, probably the best k
        return top_k(ids[rows], matrix[rows] @ query, k)  # re-scored exactly

    def _approximate(self, n: int, exact: bool | None) -> bool:
        if exact is None:
            exact = self.ann_threshold is None or n < self.ann_threshold
        if exact:
            return False
        if ann.available():
            return True
        if str(self.path) not in _warned_exact:
            _warned_exact.add(str(self.path))
            warnings.warn(
                f"{self.path}: {n} chunks, searched exactly because faiss is not installed "
                "(slower at this size); `pip install faiss-cpu` for approximate search",
                ExactSearchWarning,
                stacklevel=3,
            )
        return False

    def _index(self, ids: np.ndarray, matrix: np.ndarray) -> ann.HNSWIndex:
        """The HNSW index of this version's matrix: in memory, from its file, or built."""
        version = self.version
        if self._ann and self._ann[0] == version:
            return self._ann[1]
        path = self.path.with_name(self.path.name + ".hnsw.faiss")
        key = {"version": version, "uid": int(self.meta("uid", "0")), "dim": self.dim}
        index = ann.HNSWIndex.load(path, key)
        if index is None or index.rows != len(ids):
            index = ann.HNSWIndex.build(matrix, _build_progress(self.path))
            try:
                index.save(path, key)
            except (OSError, RuntimeError):  # a read-only folder (faiss raises RuntimeError)
                pass  # searches go on from memory
        self._ann = (version, index)
        return index

    def check(self) -> list[str]:
        """Consistency problems (empty when fine): SQLite's own check, orphans, counts."""
        problems = [r[0] for r in self.db.execute("PRAGMA integrity_check") if r[0] != "ok"]
        orphans = self.db.execute(
            "SELECT COUNT(*) FROM chunks WHERE doc_id NOT IN (SELECT id FROM documents)"
        ).fetchone()[0]
        if orphans:
            problems.append(f"{orphans} chunks belong to no document")
        bad = self.db.execute(
            "SELECT d.path FROM documents d LEFT JOIN chunks c ON c.doc_id = d.id "
            "GROUP BY d.id HAVING COUNT(c.id) != d.n_chunks"
        ).fetchall()
        problems += [f"{p}: chunk count differs from its record" for (p,) in bad]
        return problems


def top_k(ids: np.ndarray, scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    k = min(k, len(scores))
    best = np.argpartition(-scores, k - 1)[:k]
    best = best[np.argsort(-scores[best], kind="stable")]
    return [(int(ids[i]), float(scores[i])) for i in best]


def _build_progress(path: Path):
    """progress(done, total) for an index build: one line on stderr, with an ETA."""
    start = time.perf_counter()

    def show(done: int, total: int) -> None:
        spent = time.perf_counter() - start
        eta = spent / done * (total - done)
        print(
            f"\rgiraffe: indexing {path.name} for approximate search (once per change): "
            f"{done}/{total} chunks, {spent:.0f} s, {eta:.0f} s left",
            end="\n" if done == total else "",
            file=sys.stderr,
            flush=True,
        )

    return show


def _save_atomic(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, tb):
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        return False
