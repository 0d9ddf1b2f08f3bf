"""A question -> the most similar chunks of a knowledge base, or none if nothing is close.

Dense retrieval is cosine similarity between the question's embedding and every
chunk's (`Store.search`: exact, or HNSW candidates re-scored exactly above its size
threshold). With `hybrid=True`, BM25 keyword scores over all chunks are
added: fused = cosine + `keyword_weight` * bm25 / max bm25, so a rare exact word (a
name, a code) can lift a passage. `floor` is the cosine below which a chunk does not
count as relevant: if no candidate reaches it, the answer is "nothing found" rather
than a guess. It knows nothing of prompts or language models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from giraffe.config import InputError
from giraffe.rag.bm25 import BM25
from giraffe.rag.store import ChunkRecord, Store, top_k

# MiniLM cosine. On the shipped evaluation the answering passage scores 0.41-0.77 and
# the best chunk for an off-topic question 0.07-0.33 (`giraffe rag eval` reports both).
FLOOR = 0.35
CANDIDATES = 50  # pooled from each ranking before fusing


class QuestionError(InputError):
    """A question that cannot be answered as asked (empty, k < 1, or no passage fits the
    model's budget); the message says what to change."""


@dataclass(frozen=True)
class Hit:
    chunk: ChunkRecord
    score: float  # what the ranking used (cosine, or fused)
    cosine: float


_bm25_cache: dict[tuple[str, int], tuple[np.ndarray, BM25]] = {}


def keyword_index(store: Store) -> tuple[np.ndarray, BM25]:
    """(chunk ids, BM25 over their texts), rebuilt when the store changes."""
    key = (str(store.path), store.version)
    if key not in _bm25_cache:
        _bm25_cache.clear()  # one knowledge base at a time is the common case
        chunks = store.chunks()
        ids = np.array([c.id for c in chunks], dtype=np.int64)
        _bm25_cache[key] = ids, BM25([c.text for c in chunks])
    return _bm25_cache[key]


def retrieve(
    store: Store,
    embedder,
    question: str,
    k: int = 4,
    hybrid: bool = False,
    floor: float = FLOOR,
    keyword_weight: float = 0.3,
) -> list[Hit]:
    """The best `k` chunks at or above the cosine floor, best first (may be empty)."""
    if not question.strip():
        raise QuestionError("the question is empty: ask something")
    if k < 1:
        raise QuestionError(f"--k must be at least 1, got {k}")
    query = embedder.embed([question])[0]  # (dim,)
    dense = dict(store.search(query, max(k, CANDIDATES) if hybrid else k))
    if not hybrid:
        ranked = sorted(dense.items(), key=lambda kv: -kv[1])
    else:
        ranked = _fuse(store, query, question, dense, keyword_weight)
    cosines = _cosines(store, [i for i, _ in ranked], query, dense)
    kept = [(i, s) for i, s in ranked if cosines[i] >= floor][:k]
    records = {c.id: c for c in store.chunks([i for i, _ in kept])}
    return [Hit(records[i], s, cosines[i]) for i, s in kept if i in records]


def _fuse(store, query, question, dense: dict[int, float], weight: float):
    ids, index = keyword_index(store)
    keyword = index.scores(question)
    top = keyword.max() if len(keyword) else 0.0
    if top <= 0:
        return sorted(dense.items(), key=lambda kv: -kv[1])
    by_keyword = dict(top_k(ids, keyword, CANDIDATES))
    all_ids, matrix = store.matrix()
    position = {int(c): r for r, c in enumerate(all_ids)}
    fused = {}
    for i in set(dense) | set(by_keyword):
        cosine = dense.get(i)
        if cosine is None:
            cosine = float(matrix[position[i]] @ query)
        fused[i] = cosine + weight * by_keyword.get(i, 0.0) / top
    return sorted(fused.items(), key=lambda kv: -kv[1])


def _cosines(store, ids, query, dense: dict[int, float]) -> dict[int, float]:
    out = {i: dense[i] for i in ids if i in dense}
    missing = [i for i in ids if i not in out]
    if missing:
        all_ids, matrix = store.matrix()
        position = {int(c): r for r, c in enumerate(all_ids)}
        for i in missing:
            out[i] = float(matrix[position[i]] @ query)
    return out
