"""Benchmark: knowledge-base ingest time and query latency at 10^4 and 10^5 chunks.

The store part uses SYNTHETIC chunks: random unit vectors (384 dims, like MiniLM) with
short placeholder texts, written through `Store.replace_document` in documents of 100
chunks (one transaction each), so it measures SQLite writes and the search, not the
encoder (see bench/embed.py for that). Query latency is the median over random query
vectors of an exact cosine top-4, after the first query built the memory-mapped cache
(cold: first query in a fresh process, including the cache build or load; warm: later
ones); the exact result is checked against a plain numpy argsort.

    python bench/rag.py [--sizes 10000 100000] [--queries 50] [--hybrid]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from giraffe.rag.store import Store

DIM, PER_DOC = 384, 100


def build(path: Path, n: int, rng) -> float:
    t = time.perf_counter()
    with Store.open(path, embedder="random", dim=DIM) as store:
        for d in range(0, n, PER_DOC):
            rows = min(PER_DOC, n - d)
            vectors = rng.standard_normal((rows, DIM)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            chunks = [(None, 0, 10, f"chunk {d + i} words w{(d + i) % 977}") for i in range(rows)]
            store.replace_document(f"/synthetic/{d}.txt", str(d), chunks, vectors)
    return time.perf_counter() - t


def query(path: Path, queries: np.ndarray, hybrid: bool) -> dict:
    with Store.open(path) as store:
        t = time.perf_counter()
        store.search(queries[0], 4)
        cold = time.perf_counter() - t
        times = []
        for q in queries[1:]:
            t = time.perf_counter()
            store.search(q, 4)
            times.append(time.perf_counter() - t)
        ids, matrix = store.matrix()
        reference = [int(ids[i]) for i in np.argsort(-(np.asarray(matrix) @ queries[-1]))[:4]]
        assert [i for i, _ in store.search(queries[-1], 4)] == reference
        out = {"first_query_ms": cold * 1e3, "query_ms_median": statistics.median(times) * 1e3}
        if hybrid:
            from giraffe.rag.bm25 import BM25

            t = time.perf_counter()
            index = BM25([c.text for c in store.chunks()])
            out["bm25_build_s"] = time.perf_counter() - t
            t = time.perf_counter()
            index.scores("words w17")
            out["bm25_query_ms"] = (time.perf_counter() - t) * 1e3
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--hybrid", action="store_true", help="also time BM25 over the chunk texts")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    results = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bench.sqlite"
            ingest = build(path, n, rng)
            queries = rng.standard_normal((args.queries + 1, DIM)).astype(np.float32)
            row = {"chunks": n, "ingest_s": ingest, "chunks_per_s": n / ingest}
            row.update(query(path, queries, args.hybrid))
            row["db_mb"] = path.stat().st_size / 2**20
            results.append(row)
    print(json.dumps({"synthetic": "random unit vectors, 384 dims", "results": results}, indent=1))


if __name__ == "__main__":
    main()
