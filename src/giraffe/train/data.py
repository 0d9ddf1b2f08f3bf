"""Data preparation: text files -> flat token shards for pretraining.

`prepare(sources, tokenizer, out)` reads .txt/.md files (and folders of them), .jsonl
and .parquet files with a "text" column, or the built-in `demo` corpus; tokenizes
each document, ends it with the tokenizer's end-of-text token, and appends it to
train.bin or val.bin: flat little-endian uint16 (vocabularies up to 65,536) or uint32
arrays, read back with `numpy.memmap`. meta.json holds the counts, the dtype and the
tokenizer's hash; tokenizer.json is copied beside them so the shards carry what made
them. Which split a document lands in depends on its text alone (a hash), so the split
is the same on every run and machine. Large text files are read in pieces cut at blank
lines (each piece a split unit), so no file is ever held in memory whole.

It does not know models or training: `giraffe.train.shards` reads what this writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from giraffe.formats.hf import atomic_write
from giraffe.tokenizer.tokenizer import Tokenizer
from giraffe.train.corpus import DEMO_NAME, demo_documents

TEXT_SUFFIXES = (".txt", ".md")
PIECE_CHARS = 1 << 20  # a text file is read in pieces of about 1 M characters
SNIFF_BYTES = 8192  # a NUL byte in the first 8 KB marks a file as binary


class DataError(ValueError):
    """The data to prepare or train on is missing, unreadable or does not fit."""


class DataWarning(UserWarning):
    """A data file was skipped (empty or binary); the warning names it."""


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    """sha256 of the tokenizer's canonical tokenizer.json: equal hashes, equal ids."""
    text = json.dumps(tokenizer.backend_json(), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_of(text: str, val_fraction: float) -> str:
    """ "val" for about `val_fraction` of texts, decided by the text's hash alone."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return "val" if int.from_bytes(digest, "little") / 2**64 < val_fraction else "train"


# ---- reading documents -------------------------------------------------------------------


def expand(sources: list[str]) -> list[Path | str]:
    """Files to read, in a fixed order: folders become their .txt/.md/.jsonl/.parquet files."""
    out: list[Path | str] = []
    for source in sources:
        if source == DEMO_NAME and not Path(source).exists():
            out.append(DEMO_NAME)
            continue
        path = Path(source)
        if path.is_dir():
            kinds = (*TEXT_SUFFIXES, ".jsonl", ".parquet")
            out += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in kinds)
        elif path.is_file():
            out.append(path)
        else:
            raise DataError(
                f"{source} not found: give text files, folders, .jsonl, .parquet or 'demo'"
            )
    if not out:
        raise DataError(f"no .txt, .md, .jsonl or .parquet files in {', '.join(sources)}")
    return out


def documents(path: Path | str) -> Iterator[tuple[str, bool]]:
    """(text, ends_document) pieces of one source; empty or binary files warn and yield nothing."""
    if path == DEMO_NAME:
        for _, text in demo_documents():
            yield text, True
        return
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet(path)
    elif _skipped(path):
        return
    elif suffix == ".jsonl":
        yield from _jsonl(path)
    else:
        yield from _text_pieces(path)


def _skipped(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    reason = (
        "it is empty"
        if not head.strip()
        else "it looks binary (NUL bytes)"
        if b"\0" in head
        else ""
    )
    if not reason:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as e:
            # a multi-byte character cut at the end of the sniffed block is fine
            reason = "" if e.start >= len(head) - 3 else "it is not UTF-8 text"
    if reason:
        warnings.warn(f"skipping {path}: {reason}", DataWarning, stacklevel=3)
    return bool(reason)


def _text_pieces(path: Path) -> Iterator[tuple[str, bool]]:
    """A text file in pieces of about PIECE_CHARS, each cut after a blank line when it can be."""
    buffer = ""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        while chunk := f.read(PIECE_CHARS):
            buffer += chunk
            cut = buffer.rfind("\n\n")
            if len(buffer) >= PIECE_CHARS and cut > 0:
                yield buffer[: cut + 2], False
                buffer = buffer[cut + 2 :]
    if buffer.strip():
        yield buffer, True


def _jsonl(path: Path) -> Iterator[tuple[str, bool]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {n} is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise DataError(
                    f'{path} line {n} has no "text" string; pretraining reads {{"text": ...}}'
                )
            if row["text"]:
                yield row["text"], True


def _parquet(path: Path) -> Iterator[tuple[str, bool]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path} is a Parquet file, and reading Parquet needs pyarrow, which is not "
            "installed: pip install pyarrow (or convert it to .jsonl)"
        ) from None
    table = pq.ParquetFile(path)
    if "text" not in table.schema_arrow.names:
        raise DataError(
            f'{path} has no "text" column (columns: {", ".join(table.schema_arrow.names)})'
        )
    for batch in table.iter_batches(columns=["text"]):
        for text in batch.column(0).to_pylist():
            if text:
                yield text, True


# ---- writing shards ----------------------------------------------------------------------


def prepare(
    sources: list[str],
    tokenizer: Tokenizer,
    out: str | os.PathLike,
    val_fraction: float = 0.05,
    progress=None,
) -> dict:
    """Tokenize `sources` into out/train.bin, out/val.bin, out/meta.json (+ tokenizer files).

    progress: optional callable(done_files, total_files, tokens) for a progress bar.
    Returns the meta dictionary written.
    """
    if tokenizer.eos_id is None:
        raise DataError(f"{tokenizer.name} has no end-of-text (eos) token to separate documents")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    files = expand(sources)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    counts = {s: {"tokens": 0, "bytes": 0, "documents": 0} for s in ("train", "val")}
    tmp = {s: out / f".{s}.bin.tmp" for s in counts}
    try:
        with open(tmp["train"], "wb") as train_f, open(tmp["val"], "wb") as val_f:
            sinks = {"train": train_f, "val": val_f}
            for n, path in enumerate(files):
                for text, ends in documents(path):
                    split = split_of(text, val_fraction)
                    ids = tokenizer.encode(text) + ([tokenizer.eos_id] if ends else [])
                    sinks[split].write(np.asarray(ids, dtype=dtype).tobytes())
                    c = counts[split]
                    c["tokens"] += len(ids)
                    c["bytes"] += len(text.encode("utf-8"))
                    c["documents"] += int(ends)
                    if progress:
                        progress(n, len(files), counts["train"]["tokens"] + counts["val"]["tokens"])
                if progress:
                    progress(n + 1, len(files), counts["train"]["tokens"] + counts["val"]["tokens"])
        if counts["train"]["tokens"] == 0:
            raise DataError(
                f"no text found in {', '.join(sources)} (every file was empty or skipped)"
            )
        for split, path in tmp.items():
            os.replace(path, out / f"{split}.bin")
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)
    tokenizer.save(out)
    meta = {
        "format": "giraffe token shards v1",
        "dtype": np.dtype(dtype).name,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "tokenizer_sha256": tokenizer_hash(tokenizer),
        "val_fraction": val_fraction,
        "sources": [str(p) for p in files],
        **{split: c for split, c in counts.items()},
    }
    text = json.dumps(meta, indent=2) + "\n"
    atomic_write(out / "meta.json", lambda p: Path(p).write_text(text, encoding="utf-8"))
    return meta
