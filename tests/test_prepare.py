"""Data preparation: files -> token shards (counts, end-of-text, split, dtype), bad files
skipped with a warning, Parquet, streaming pieces, and the tokenizer check on reading."""

from __future__ import annotations

import json

import numpy as np
import pytest

from giraffe.tokenizer.train import train_tokenizer
from giraffe.train import data
from giraffe.train.corpus import demo_documents
from giraffe.train.data import DataError, DataWarning, prepare
from giraffe.train.shards import open_shards


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([t for _, t in demo_documents()][:10], "bpe", 400)


def _docs(n=12):
    return [
        f"Document number {i} talks about giraffes and their long necks. " * 3 for i in range(n)
    ]


def test_shards_hold_every_document_followed_by_end_of_text(tok, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    docs = _docs()
    for i, d in enumerate(docs[:6]):
        (folder / f"d{i}.txt").write_text(d)
    (folder / "sub" / "notes.md").write_text(docs[6])
    rows = [{"text": d} for d in docs[7:]]
    (folder / "more.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    meta = prepare([str(folder)], tok, tmp_path / "out", val_fraction=0.3)
    shards = open_shards(tmp_path / "out", tok)
    assert meta["dtype"] == "uint16" and shards.train.dtype == np.uint16
    assert meta["train"]["documents"] + meta["val"]["documents"] == len(docs)
    assert meta["val"]["documents"] > 0 and meta["train"]["documents"] > 0
    got = []
    for split in (shards.train, shards.val):
        assert split[-1] == tok.eos_id
        assert len(split) == meta["train" if split is shards.train else "val"]["tokens"]
        text = tok.decode(split.tolist())
        got += [d for d in text.split("<|eos|>") if d]
    assert sorted(got) == sorted(docs)
    assert meta["train"]["bytes"] + meta["val"]["bytes"] == sum(len(d.encode()) for d in docs)
    # deterministic: a second run writes the same bytes
    prepare([str(folder)], tok, tmp_path / "again", val_fraction=0.3)
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    assert (tmp_path / "out" / "tokenizer.json").is_file()


def test_the_split_depends_on_the_text_alone():
    texts = [f"text {i}" for i in range(2000)]
    share = sum(data.split_of(t, 0.1) == "val" for t in texts) / len(texts)
    assert 0.07 < share < 0.13
    assert [data.split_of(t, 0.1) for t in texts] == [data.split_of(t, 0.1) for t in texts]
    assert all(data.split_of(t, 0.0) == "train" for t in texts)


def test_empty_and_binary_files_are_skipped_with_a_warning_naming_them(tok, tmp_path):
    (tmp_path / "good.txt").write_text("Giraffes are tall. " * 10)
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02binary" * 100)
    (tmp_path / "latin1.md").write_bytes("caf\xe9 na\xefve".encode("latin-1") * 10)
    with pytest.warns(DataWarning) as caught:
        meta = prepare([str(tmp_path)], tok, tmp_path / "out", val_fraction=0.0)
    messages = " ".join(str(w.message) for w in caught)
    for name in ("empty.txt", "blob.txt", "latin1.md"):
        assert name in messages
    assert meta["train"]["documents"] == 1
    with pytest.warns(DataWarning), pytest.raises(DataError, match="no text found"):
        prepare([str(tmp_path / "empty.txt")], tok, tmp_path / "none")


def test_bad_inputs_name_the_file(tok, tmp_path):
    with pytest.raises(DataError, match="not found"):
        prepare([str(tmp_path / "missing")], tok, tmp_path / "out")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"content": "no text key"}\n')
    with pytest.raises(DataError, match='bad.jsonl line 2 has no "text"'):
        prepare([str(bad)], tok, tmp_path / "out")
    bad.write_text("{not json\n")
    with pytest.raises(DataError, match="bad.jsonl line 1 is not valid JSON"):
        prepare([str(bad)], tok, tmp_path / "out")
    assert not (tmp_path / "out" / "train.bin").exists()  # nothing half-written


def test_parquet_with_a_text_column(tok, tmp_path):
    path = tmp_path / "docs.parquet"
    path.write_bytes(b"PAR1")  # enough to be routed to the Parquet reader
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        with pytest.raises(DataError, match="needs pyarrow, which is not installed"):
            prepare([str(path)], tok, tmp_path / "out")
        return
    pq.write_table(pa.table({"text": _docs(4), "id": [1, 2, 3, 4]}), path)
    meta = prepare([str(path)], tok, tmp_path / "out", val_fraction=0.0)
    assert meta["train"]["documents"] == 4


def test_large_files_stream_in_pieces(tok, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "PIECE_CHARS", 300)
    text = "".join(f"Paragraph {i} about tall giraffes.\n\n" for i in range(100))
    (tmp_path / "big.txt").write_text(text)
    pieces = list(data.documents(tmp_path / "big.txt"))
    assert len(pieces) > 5 and all(len(p) < 700 for p, _ in pieces)
    assert "".join(p for p, _ in pieces) == text
    assert [end for _, end in pieces] == [False] * (len(pieces) - 1) + [True]
    meta = prepare([str(tmp_path / "big.txt")], tok, tmp_path / "out", val_fraction=0.0)
    shards = open_shards(tmp_path / "out", tok)
    assert tok.decode(shards.train.tolist()) == text + "<|eos|>"  # one end-of-text per file
    assert meta["train"]["documents"] == 1


def test_a_tokenizer_shard_mismatch_is_refused(tok, tmp_path):
    prepare(["demo"], tok, tmp_path / "out")
    other = train_tokenizer(["something else entirely " * 50], "char", 100)
    with pytest.raises(DataError, match="another tokenizer"):
        open_shards(tmp_path / "out", other)
    (tmp_path / "out" / "val.bin").write_bytes(b"\0\0")
    with pytest.raises(DataError, match="prepare the data again"):
        open_shards(tmp_path / "out", tok)
    with pytest.raises(DataError, match="giraffe prepare"):
        open_shards(tmp_path / "nowhere")


def test_demo_corpus_comes_from_pydoc_topics():
    docs = list(demo_documents())
    assert len(docs) > 50
    assert sum(len(t) for _, t in docs) > 300_000
    assert any("for" in name for name, _ in docs)


def test_rows_are_a_function_of_seed_and_step(tok, tmp_path):
    prepare(["demo"], tok, tmp_path / "out")
    shards = open_shards(tmp_path / "out", tok)
    a = shards.rows("train", 0, 5, 4, 16)
    assert a.shape == (4, 16) and a.dtype.is_floating_point is False
    assert np.array_equal(a, shards.rows("train", 0, 5, 4, 16))
    assert not np.array_equal(a, shards.rows("train", 0, 6, 4, 16))
    with pytest.raises(DataError, match="fewer than one row"):
        shards.rows("val", 0, 0, 1, 10**7)
