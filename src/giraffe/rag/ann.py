"""Approximate nearest neighbours over unit vectors: a faiss HNSW graph, cached in a file.

    if available():
        index = HNSWIndex.load(path, key) or HNSWIndex.build(matrix, progress)
        index.save(path, key)                      # write-then-rename, with `key` beside it
        rows = index.search(query, k)              # row numbers of `matrix`, probably nearest

HNSW (Malkov & Yashunin, "Efficient and robust approximate nearest neighbor search using
Hierarchical Navigable Small World graphs", arXiv:1603.09320) links every vector to a
few near neighbours on several layers; a query walks the graph greedily from the top
layer down, so it compares itself with a few thousand vectors instead of all of them.
That is where its speed comes from, and why it may miss a true neighbour (recall < 1).

Distance: the rows are unit length, so |q - x|^2 = |q|^2 + 1 - 2 q.x and the L2 ranking
is exactly the inner-product (cosine) ranking. We use faiss's default L2 metric rather
than METRIC_INNER_PRODUCT because HNSW's neighbour-selection heuristic assumes a true
distance (the triangle inequality), which inner product is not; the distances faiss
returns are thrown away anyway, since the caller re-scores the rows it gets exactly.

faiss is optional (`pip install faiss-cpu`, a self-contained wheel): `available()` says
whether it can be imported. This module knows nothing of SQLite, chunk ids or scores:
it answers "which rows of this matrix are probably nearest to the query", nothing more.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

# Neighbours per vector in the graph. More links: better recall and robustness on
# hard data, but a bigger index (M * 8 bytes per vector on the bottom layer, beside the
# 4 * dim of the vector itself) and slower builds and queries. 32 suits 384-dim text
# embeddings; 16 is the usual choice for low-dimensional data.
M = 32
# Candidates kept while inserting a vector: a better graph (higher recall at the same
# EF_SEARCH) for a slower build. Measured here (2 cores) on 20,000 random unit
# vectors of 384 dims, the hardest case: 64 builds in 6.4 s, 128 in 14.7 s; an index is
# built once per change of the knowledge base, so the build is what we economise.
EF_CONSTRUCTION = 64
# Candidates kept while searching (at least k): recall against query time. On the same
# random data with EF_CONSTRUCTION 64, recall@10 is 0.62 at 128 and 0.82 at 256
# (0.8 / 1.3 ms a query); real sentence embeddings cluster and recall far better. A
# query stays ~50x cheaper than the exact scan this index exists to replace.
EF_SEARCH = 256
ADD_BATCH = 10_000  # rows inserted per call during a build, between progress reports


def available() -> bool:
    """Whether faiss can be imported (asked every time: cheap once imported)."""
    return _faiss() is not None


def _faiss():
    try:
        return importlib.import_module("faiss")
    except ImportError:
        return None


def _params() -> dict:
    return {"kind": "HNSWFlat-L2", "M": M, "efConstruction": EF_CONSTRUCTION}


class HNSWIndex:
    """A faiss IndexHNSWFlat over the rows of one float32 matrix (row i has label i)."""

    def __init__(self, index) -> None:
        self.index = index

    @property
    def rows(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, matrix: np.ndarray, progress=None) -> HNSWIndex:
        """Index the (n, dim) unit rows of `matrix`; `progress(done, n)` after each batch."""
        faiss = _faiss()
        n, dim = matrix.shape
        index = faiss.IndexHNSWFlat(dim, M)  # METRIC_L2: see the module docstring
        index.hnsw.efConstruction = EF_CONSTRUCTION
        for start in range(0, n, ADD_BATCH):
            index.add(np.ascontiguousarray(matrix[start : start + ADD_BATCH], dtype=np.float32))
            if progress is not None:
                progress(min(start + ADD_BATCH, n), n)
        return cls(index)

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        """Row numbers of (up to) the k rows nearest `query` (dim,), best first."""
        faiss = _faiss()
        if k < 1 or self.rows == 0:
            return np.empty(0, dtype=np.int64)
        params = faiss.SearchParametersHNSW(efSearch=max(EF_SEARCH, k))
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)  # (1, dim)
        _, rows = self.index.search(q, min(k, self.rows), params=params)  # (1, k)
        rows = rows[0]
        return rows[rows >= 0]  # -1 pads when the walk found fewer than k

    # ---- the cache file -----------------------------------------------------------------
    def save(self, path: Path, key: dict) -> None:
        """Write the index, then `key` (what it was built for) beside it, each by rename.

        The key goes last: a crash in between leaves a key that names the previous index's
        data, which the caller's next key no longer matches, so the pair is rebuilt.
        """
        path = Path(path)
        _replace_with(path, lambda tmp: _faiss().write_index(self.index, str(tmp)))
        text = json.dumps({**key, **_params(), "rows": self.rows})
        _replace_with(_key_path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls, path: Path, key: dict) -> HNSWIndex | None:
        """The index saved at `path` for exactly this `key` and these parameters, else None."""
        faiss, path = _faiss(), Path(path)
        try:
            saved = json.loads(_key_path(path).read_text(encoding="utf-8"))
            rows = saved.pop("rows")
            if saved != {**key, **_params()}:
                return None
            # Memory-map the stored vectors where this faiss can (IO_FLAG_MMAP_IFC): a query
            # then reads a few pages of them, not the whole file.
            flags = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) | getattr(faiss, "IO_FLAG_READ_ONLY", 0)
            index = faiss.read_index(str(path), flags)
        except (OSError, ValueError, KeyError, RuntimeError):  # absent, torn or not faiss's
            return None
        return cls(index) if index.ntotal == rows else None


def _key_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _replace_with(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
