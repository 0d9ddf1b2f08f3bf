"""Approximate search in the knowledge base: recall against exact search with exact scores,
an index cache rebuilt on every change and reused otherwise, and without faiss an exact
search that says so once."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import numpy as np

from giraffe.rag import ann
from giraffe.rag.command import add_rag_parser
from giraffe.rag.store import ExactSearchWarning, Store

DIM = 64


def need_faiss() -> None:
    """These tests run, never skip: faiss-cpu is in the test extra."""
    assert ann.available(), "faiss is missing: pip install faiss-cpu (or -e '.[test]')"


def unit(rng, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def add_doc(store: Store, name: str, vectors: np.ndarray) -> None:
    chunks = [(None, i, i + 1, f"{name} {i}") for i in range(len(vectors))]
    store.replace_document(name, name, chunks, vectors)


def filled_store(tmp_path, rng, docs: int, per_doc: int, threshold: int | None = 50) -> Store:
    store = Store.open(tmp_path / "kb.sqlite", embedder="random", dim=DIM)
    store.ann_threshold = threshold
    for d in range(docs):
        add_doc(store, f"/doc{d}", unit(rng, per_doc))
    return store


def index_files(tmp_path):
    return tmp_path / "kb.sqlite.hnsw.faiss", tmp_path / "kb.sqlite.hnsw.faiss.json"


def index_identity(tmp_path) -> tuple[int, int, int]:
    """(inode, mtime in ns, version in the key): a rename-written new file changes all."""
    faiss_file, key_file = index_files(tmp_path)
    st = faiss_file.stat()
    return st.st_ino, st.st_mtime_ns, json.loads(key_file.read_text())["version"]


def test_approximate_recall_and_exact_scores(tmp_path):
    need_faiss()
    rng = np.random.default_rng(0)
    with filled_store(tmp_path, rng, docs=4, per_doc=500) as store:
        ids, matrix = store.matrix()
        position = {int(c): r for r, c in enumerate(ids)}
        exact64 = np.asarray(matrix, dtype=np.float64)
        recalls = []
        for query in unit(rng, 40):
            approx = store.search(query, 10)  # 2000 chunks >= the threshold of 50
            truth = store.search(query, 10, exact=True)
            assert len(approx) == 10
            recalls.append(len({i for i, _ in approx} & {i for i, _ in truth}) / 10)
            scores = np.array([s for _, s in approx])
            true = exact64[[position[i] for i, _ in approx]] @ query.astype(np.float64)
            np.testing.assert_allclose(scores, true, rtol=0, atol=1e-6)
            assert list(scores) == sorted(scores, reverse=True)
        assert np.mean(recalls) >= 0.95, np.mean(recalls)
        assert index_files(tmp_path)[0].exists()  # it was the index that answered
        # The chunk itself is found, scored exactly as the plain scan scores it.
        best = store.search(np.asarray(matrix[123]), 1)[0]
        assert best[0] == int(ids[123]) and abs(best[1] - 1.0) < 1e-6


def test_threshold_and_exact_override_decide_when_an_index_is_built(tmp_path):
    need_faiss()
    rng = np.random.default_rng(1)
    with filled_store(tmp_path, rng, docs=2, per_doc=100, threshold=201) as store:
        query = unit(rng, 1)[0]
        store.search(query, 5)  # 200 chunks: below the threshold
        store.search(query, 5, exact=True)
        assert not index_files(tmp_path)[0].exists()
        store.ann_threshold = None  # `giraffe rag ask --exact`
        store.search(query, 5)
        assert not index_files(tmp_path)[0].exists()
        store.ann_threshold = 200
        assert [i for i, _ in store.search(query, 200)] == [
            i for i, _ in store.search(query, 200, exact=True)
        ]  # a complete walk when k is every chunk
        assert index_files(tmp_path)[0].exists()
    with filled_store(tmp_path / "b", rng, docs=1, per_doc=30, threshold=None) as small:
        small.search(unit(rng, 1)[0], 3, exact=False)  # forced, at any size
        assert index_files(tmp_path / "b")[0].exists()


def test_index_is_rebuilt_after_a_change_and_reused_otherwise(tmp_path, monkeypatch):
    need_faiss()
    builds = []
    real_build = ann.HNSWIndex.build.__func__

    def counting_build(cls, matrix, progress=None):
        builds.append(len(matrix))
        return real_build(cls, matrix, progress)

    monkeypatch.setattr(ann.HNSWIndex, "build", classmethod(counting_build))
    rng = np.random.default_rng(2)
    store = filled_store(tmp_path, rng, docs=3, per_doc=200)
    query = unit(rng, 1)[0]
    first = store.search(query, 5)
    built = index_identity(tmp_path)
    assert builds == [600] and built[2] == store.version
    assert store.search(query, 5) == first and builds == [600]
    store.close()
    with Store.open(tmp_path / "kb.sqlite") as reopened:  # a new process, in effect
        reopened.ann_threshold = 50
        assert reopened.search(query, 5) == first
        assert builds == [600] and index_identity(tmp_path) == built  # read from the file

        new = unit(rng, 50)
        add_doc(reopened, "/new", new)
        hit = reopened.search(new[7], 1)[0]
        assert reopened.chunks([hit[0]])[0].text == "/new 7"
        added = index_identity(tmp_path)
        assert builds == [600, 650] and added[2] == reopened.version and added != built

        assert reopened.remove_document("/doc0")
        gone = {c.id for c in reopened.chunks() if c.path == "/doc0"}
        assert all(i not in gone for i, _ in reopened.search(query, 50))
        removed = index_identity(tmp_path)
        assert builds == [600, 650, 450] and removed[2] == reopened.version
        assert removed != added


def test_a_damaged_index_file_is_rebuilt_not_trusted(tmp_path):
    need_faiss()
    rng = np.random.default_rng(3)
    faiss_file = index_files(tmp_path)[0]
    with filled_store(tmp_path, rng, docs=1, per_doc=300) as store:
        query = unit(rng, 1)[0]
        first = store.search(query, 5)
        key = {"version": store.version, "uid": int(store.meta("uid")), "dim": DIM}
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a faiss index" * 10)
    os.replace(junk, faiss_file)  # a new file: nothing still maps the old one
    assert ann.HNSWIndex.load(faiss_file, key) is None
    with Store.open(tmp_path / "kb.sqlite") as store:
        store.ann_threshold = 50
        assert store.search(query, 5) == first
    assert ann.HNSWIndex.load(faiss_file, key).rows == 300  # the rebuilt one was saved
    assert ann.HNSWIndex.load(faiss_file, key | {"version": key["version"] - 1}) is None


def test_without_faiss_search_is_exact_and_warns_once(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    assert not ann.available()
    rng = np.random.default_rng(4)
    with filled_store(tmp_path, rng, docs=2, per_doc=150) as store:
        ids, matrix = store.matrix()
        queries = unit(rng, 3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = [store.search(q, 8) for q in queries]
            results.append(store.search(queries[0], 8, exact=False))
        said = [w for w in caught if issubclass(w.category, ExactSearchWarning)]
        assert len(said) == 1 and "pip install faiss-cpu" in str(said[0].message)
        assert "300 chunks" in str(said[0].message)
        for query, got in zip([*queries, queries[0]], results, strict=True):
            scores = matrix @ query
            reference = np.argsort(-scores, kind="stable")[:8]
            assert got == [(int(ids[r]), float(scores[r])) for r in reference]
        assert not index_files(tmp_path)[0].exists()


def test_rag_ask_has_an_exact_switch():
    p = argparse.ArgumentParser()
    add_rag_parser(p.add_subparsers(dest="command"))
    assert p.parse_args(["rag", "ask", "q?", "--exact"]).exact is True
    assert p.parse_args(["rag", "ask", "q?"]).exact is False
