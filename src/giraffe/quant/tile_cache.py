"""Keep the int8 GEMM's tiles of a model file on disk, so a second load maps them instead
of repacking.

Repacking every matrix of a 0.5B model at load takes seconds; the tiles depend only on
the file's bytes, the block type and the library's ABI. `TileCache` is the `repack`
function the packed layers take (`QuantLinear.compact`, `FusedQuant`): on a first load it
repacks (giraffe.quant.kernels.repack_int8) and appends the tiles to a new file; `finish()`
renames it into place, then writes its index (so a process mapping the previous file
keeps it whole). A later load of the same file (same path, size, mtime, ABI and
block table) maps that file copy-on-write and hands out views: the tiles are the one resident copy, and
pages the OS can drop and read back. Weights are named by where their bytes sit in the
model file's map, so it only serves views of that map (a permuted copy is repacked
fresh, uncached). A cache that is incomplete or stale is ignored and rebuilt, never read.
GIRAFFE_TILE_CACHE=0 turns it off. It knows byte ranges, not tensor names or models.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from giraffe.quant import kernels
from giraffe.quant.types import BLOCK_TYPES


def cache_root() -> Path:
    return kernels.cache_dir().parent / "tiles"


def enabled() -> bool:
    return os.environ.get("GIRAFFE_TILE_CACHE") != "0"


KEEP = 8  # model files whose tiles stay cached; the least recently written go first


def _prune(root: Path) -> None:
    dirs = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
    for old in dirs[:-KEEP]:
        for f in old.iterdir():
            f.unlink(missing_ok=True)
        old.rmdir()


class TileCache:
    """Tiles of one model file: served from disk when cached, else repacked and recorded.

    base, size: the address and length of the file's map in this process (the weights
    handed to `repack` are views inside it)."""

    def __init__(self, model_file: Path, base: int, size: int) -> None:
        stat = model_file.stat()
        # the layout's every input: the file, the library's ABI and the block table
        table = sorted(BLOCK_TYPES.items())
        ident = f"{model_file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{kernels.ABI_VERSION}|{table}"
        self.dir = cache_root() / hashlib.sha256(ident.encode()).hexdigest()[:24]
        self.base, self.size = base, size
        self.index: dict[str, list] = {}
        self.blob = None  # the mapped tiles of an earlier load
        self.writer = None  # the file being written by this (first) load
        self._tiles_tmp: Path | None = None  # its name until finish() renames it
        self.new = False
        try:
            index = json.loads((self.dir / "index.json").read_text())
            blob = np.memmap(self.dir / "tiles.bin", dtype=np.uint8, mode="c")
            if all(at + q + dm <= len(blob) for at, q, dm, _, _ in index.values()):
                self.blob, self.index = blob, index  # else a damaged cache: rebuilt below
        except (OSError, ValueError, TypeError):
            self.index = {}

    def repack(self, packed, kind: str, n_out: int, n_in: int) -> kernels.Int8Weights:
        """As kernels.repack_int8 (one part or a list stacked along the rows), from disk
        when this load or an earlier one already has these bytes' tiles."""
        parts = packed if isinstance(packed, list) else [packed]
        key = self._key(parts, kind, n_out, n_in)
        if key is not None and key in self.index and self.blob is not None:
            return self._view(self.index[key], kind, n_out, n_in)
        tiles = kernels.repack_int8(packed, kind, n_out, n_in)
        if key is not None and self.blob is None:
            self._record(key, tiles)
        return tiles

    def finish(self) -> None:
        """Write the index of what this load repacked (atomically): the next load maps it."""
        if self.writer is None:
            return
        self.writer.close()
        self.writer = None
        # a new file, never the old one rewritten: a process that maps the old tiles (a
        # server still running) would die of SIGBUS on pages cut from under its map
        os.replace(self._tiles_tmp, self.dir / "tiles.bin")
        tmp = self.dir / f"index.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(self.index))
        os.replace(tmp, self.dir / "index.json")

    def _key(self, parts: list[torch.Tensor], kind: str, n_out: int, n_in: int) -> str | None:
        spans = []
        for p in parts:
            at, nbytes = p.data_ptr() - self.base, p.numel() * p.element_size()
            if at < 0 or at + nbytes > self.size or not p.is_contiguous():
                return None  # not a view of the file: nothing stable to name it by
            spans.append(f"{at}+{nbytes}")
        return f"{kind}|{n_out}x{n_in}|{','.join(spans)}"

    def _record(self, key: str, tiles: kernels.Int8Weights) -> None:
        if self.writer is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            _prune(self.dir.parent)
            (self.dir / "index.json").unlink(missing_ok=True)  # stale until finish() rewrites it
            self._tiles_tmp = self.dir / f"tiles.{os.getpid()}.tmp"  # renamed by finish()
            self.writer = open(self._tiles_tmp, "wb")  # noqa: SIM115 (closed by finish)
        at = self.writer.tell()
        q, dm = tiles.q.numpy(), tiles.dm.numpy()
        self.writer.write(memoryview(q))  # written from the tensors' memory: no copy
        self.writer.write(memoryview(dm).cast("B"))
        self.index[key] = [at, q.nbytes, dm.nbytes, tiles.nibbles, str(dm.dtype)]

    def _view(self, entry: list, kind: str, n_out: int, n_in: int) -> kernels.Int8Weights:
        at, q_bytes, dm_bytes, form, dtype = entry
        q = torch.from_numpy(self.blob[at : at + q_bytes])
        dm = torch.from_numpy(
            self.blob[at + q_bytes : at + q_bytes + dm_bytes].view(np.dtype(dtype))
        )
        return kernels.Int8Weights(q, dm, kind, n_out, n_in, form)
