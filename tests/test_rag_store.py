"""Knowledge base: ingestion is idempotent, changes replace, removal leaves no orphans,
search equals a brute-force reference, bad files are skipped with reasons, and a killed
ingestion leaves a consistent store that a re-run completes."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from rag_fakes import HashEmbedder

from giraffe.rag.chunk import ChunkSpec
from giraffe.rag.ingest import add_paths
from giraffe.rag.read import read_pages
from giraffe.rag.store import Store, StoreError, kb_path

EMB = HashEmbedder()
SPEC = ChunkSpec(max_tokens=40, overlap=8)


def open_store(tmp_path) -> Store:
    return Store.open(tmp_path / "kb.sqlite", embedder=EMB.source, dim=EMB.dim)


def write_docs(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        body = "\n\n".join(
            f"Document {i} paragraph {p}. " + " ".join(f"word{i}x{p}x{j}" for j in range(30)) + "."
            for p in range(3)
        )
        path = folder / f"doc{i}.md"
        path.write_text(body, encoding="utf-8")
        paths.append(path)
    return paths


def statuses(outcomes) -> list[str]:
    return [o.status for o in outcomes]


def test_ingestion_is_idempotent(tmp_path):
    write_docs(tmp_path / "docs")
    with open_store(tmp_path) as store:
        first = add_paths(store, EMB, [tmp_path / "docs"], SPEC)
        assert statuses(first) == ["added"] * 3
        n, version = store.count_chunks(), store.version
        again = add_paths(store, EMB, [tmp_path / "docs"], SPEC)
        assert statuses(again) == ["unchanged"] * 3
        assert (store.count_chunks(), store.version) == (n, version)
        assert n == sum(o.chunks for o in first) and store.check() == []


def test_changed_file_replaces_its_chunks(tmp_path):
    doc, other = write_docs(tmp_path / "docs", 2)
    with open_store(tmp_path) as store:
        add_paths(store, EMB, [tmp_path / "docs"], SPEC)
        others = [c.text for c in store.chunks() if c.path.endswith("doc1.md")]
        doc.write_text("A completely new text about giraffes.\n\nThey are tall.", encoding="utf-8")
        out = add_paths(store, EMB, [tmp_path / "docs"], SPEC)
        assert statuses(out) == ["updated", "unchanged"]
        texts = [c.text for c in store.chunks() if c.path.endswith("doc0.md")]
        assert texts == ["A completely new text about giraffes.\n\nThey are tall."]
        assert [c.text for c in store.chunks() if c.path.endswith("doc1.md")] == others
        assert store.check() == []
        best = store.chunks([store.search(EMB.embed(["giraffes tall"])[0], 1)[0][0]])[0]
        assert best.text.startswith("A completely new")


def test_remove_leaves_no_orphans(tmp_path):
    docs = write_docs(tmp_path / "docs")
    with open_store(tmp_path) as store:
        add_paths(store, EMB, [tmp_path / "docs"], SPEC)
        store.matrix()  # a cache file exists and must not outlive the removal
        for doc in docs:
            assert store.remove_document(str(doc.resolve()))
        assert not store.remove_document(str(docs[0].resolve()))
        assert store.count_chunks() == 0 and store.documents() == [] and store.check() == []
        assert store.search(EMB.embed(["word0x0x1"])[0], 4) == []
    with Store.open(tmp_path / "kb.sqlite") as reopened:
        assert reopened.matrix()[1].shape == (0, EMB.dim)


def test_search_equals_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    with Store.open(tmp_path / "kb.sqlite", embedder="random", dim=16) as store:
        for d in range(5):
            vectors = rng.standard_normal((40, 16)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            chunks = [(None, i, i + 1, f"d{d}c{i}") for i in range(40)]
            store.replace_document(f"/doc{d}", str(d), chunks, vectors)
        ids, matrix = store.matrix()
        query = rng.standard_normal(16).astype(np.float32)
        reference = np.argsort(-(matrix @ query), kind="stable")[:7]
        assert [i for i, _ in store.search(query, 7)] == [int(ids[r]) for r in reference]
    with Store.open(tmp_path / "kb.sqlite", embedder="random", dim=16) as again:
        ids2, matrix2 = again.matrix()  # from the memory-mapped cache file now
        assert isinstance(matrix2, np.memmap)
        assert np.array_equal(ids, ids2) and np.array_equal(np.asarray(matrix2), matrix)
        scores = [s for _, s in again.search(query, 40 * 5)]
        assert scores == sorted(scores, reverse=True) and len(scores) == 200


def test_stale_cache_of_a_recreated_store_is_not_used(tmp_path):
    path = tmp_path / "kb.sqlite"
    for value in (1.0, -1.0):
        with Store.open(path, embedder="e", dim=2) as store:
            store.replace_document("/a", "x", [(None, 0, 1, "a")], np.array([[value, 0]]))
            assert store.search(np.array([1.0, 0]), 1)[0][1] == value
        path.unlink()


def test_embedder_mismatch_and_kb_paths(tmp_path, monkeypatch):
    open_store(tmp_path).close()
    with pytest.raises(StoreError, match="built with hash-64"):
        Store.open(tmp_path / "kb.sqlite", embedder="minilm-l6", dim=384)
    with pytest.raises(StoreError, match="rag add"):
        Store.open(tmp_path / "none.sqlite", create=False)
    (tmp_path / "junk.sqlite").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a giraffe knowledge base"):
        Store.open(tmp_path / "junk.sqlite")
    monkeypatch.setenv("GIRAFFE_HOME", str(tmp_path / "home"))
    assert kb_path("work") == tmp_path / "home" / "kb" / "work.sqlite"
    assert kb_path("x/y.sqlite") == Path("x/y.sqlite")
    monkeypatch.delenv("GIRAFFE_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert kb_path() == tmp_path / "xdg" / "giraffe" / "kb" / "default.sqlite"


# ---- bad input -----------------------------------------------------------------------
def pdf_bytes(pages: list[str]) -> bytes:
    """A minimal valid PDF, one text line per page (offsets computed for the xref)."""
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        None,
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream.decode()}\nendstream")
        content = len(objects)
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content} 0 R "
            "/Resources << /Font << /F1 3 0 R >> >> >>"
        )
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out, offsets = io.BytesIO(b"%PDF-1.4\n"), []
    for i, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(f"{i} 0 obj\n{body}\nendobj\n".encode())
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    out.write("".join(f"{o:010d} 00000 n \n" for o in offsets).encode())
    out.write(
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out.getvalue()


def test_pdf_pages_and_html_text(tmp_path):
    pdf = tmp_path / "manual.pdf"
    pdf.write_bytes(pdf_bytes(["First page about kettles.", "Second page about trains."]))
    pages = read_pages(pdf)
    assert [p for p, _ in pages] == [1, 2] and "trains" in pages[1][1]
    html = tmp_path / "page.html"
    html.write_text(
        "<html><head><title>t</title><style>p{}</style></head><body><script>var x=1;</script>"
        "<h1>Title</h1><p>One &amp; two.</p><p>Three</p></body></html>",
        encoding="utf-8",
    )
    assert read_pages(html) == [(None, "Title\n\nOne & two.\n\nThree")]
    with open_store(tmp_path) as store:
        add_paths(store, EMB, [pdf], SPEC)
        assert [c.page for c in store.chunks()] == [1, 2]
        assert store.documents()[0].n_pages == 2


def test_bad_files_are_skipped_with_reasons(tmp_path):
    import pypdf

    d = tmp_path / "docs"
    d.mkdir()
    (d / "good.txt").write_text("A good file about giraffes.", encoding="utf-8")
    (d / "empty.txt").write_text("")
    (d / "blank.md").write_text("  \n\n ")
    (d / "binary.txt").write_bytes(b"\x00\x01\x02 binary")
    (d / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    (d / "huge.txt").write_text("giraffe " * 20000)
    (d / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf")
    writer = pypdf.PdfWriter()
    writer.add_blank_page(100, 100)
    writer.encrypt("secret")
    with open(d / "locked.pdf", "wb") as f:
        writer.write(f)
    (d / "noText.pdf").write_bytes(pdf_bytes([""]))
    (tmp_path / "image.png").write_bytes(b"\x89PNG....")
    with open_store(tmp_path) as store:
        out = add_paths(
            store,
            EMB,
            [d, tmp_path / "image.png", tmp_path / "missing.md"],
            SPEC,
            max_bytes=100_000,
        )
        reasons = {Path(o.path).name: o.reason for o in out if o.status == "skipped"}
        assert [Path(o.path).name for o in out if o.status == "added"] == ["good.txt"]
        expected = {
            "empty.txt": "empty",
            "blank.md": "empty",
            "binary.txt": "binary",
            "latin1.txt": "not UTF-8",
            "huge.txt": "limit",
            "broken.pdf": "unreadable PDF",
            "locked.pdf": "encrypted",
            "noText.pdf": "no text",
            "image.png": "unsupported",
            "missing.md": "no such file",
        }
        assert set(reasons) == set(expected)
        for name, phrase in expected.items():
            assert phrase in reasons[name], (name, reasons[name])
        assert store.check() == [] and len(store.documents()) == 1


# ---- a killed ingestion --------------------------------------------------------------
INGEST = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from rag_fakes import HashEmbedder
    from giraffe.rag.chunk import ChunkSpec
    from giraffe.rag.ingest import add_paths
    from giraffe.rag.store import Store

    class Slow(HashEmbedder):
        def embed(self, texts):
            import time
            time.sleep(0.02)  # a window inside each document's work for the kill to land
            return super().embed(texts)

    store = Store.open({db!r}, embedder="hash-64", dim=64)
    add_paths(store, Slow(), [{docs!r}], ChunkSpec(40, 8),
              on_outcome=lambda o: print(o.status, flush=True))
    print("done", flush=True)
    """
)


def test_killed_ingestion_leaves_a_consistent_store(tmp_path):
    write_docs(tmp_path / "docs", 40)
    script = INGEST.format(
        tests=str(Path(__file__).parent),
        db=str(tmp_path / "kb.sqlite"),
        docs=str(tmp_path / "docs"),
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for _ in range(5):  # a few documents committed, then kill it in the middle of the rest
        assert proc.stdout.readline().strip() == "added"
    time.sleep(0.03)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    with open_store(tmp_path) as store:
        assert store.check() == []
        done = len(store.documents())
        assert 5 <= done < 40
        out = add_paths(store, EMB, [tmp_path / "docs"], SPEC)
        assert statuses(out).count("unchanged") == done
        assert statuses(out).count("added") == 40 - done
        assert len(store.documents()) == 40 and store.check() == []
