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

import json
import os
from pathlib import Path

import numpy as np
import torch

from giraffe.quant import kernels
from giraffe.quant.file_cache import cache_dir_for, prune


class TileCache:
    """Tiles of one model file: served from disk when cached, else repacked and recorded.

    base, size: the address and length of the file's map in this process (the weights
    handed to `repack` are views inside it)."""

    def __init__(self, model_file: Path, base: int, size: int) -> None:
        self.dir = cache_dir_for(model_file)
        self.base, self.size = base, size
        self.index: dict[str, list] = {}
        self.blob = None  # the mapped tiles of an earlier load
        self.writer = None  # the file being written by this (first) load
        self._tiles_tmp: Path | None = None  # its name until finish() renames it
        self.new = False
        self._placed: list[tuple[int, int, int]] = []  # this load's tiles: (address, bytes, at)
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
            prune(self.dir.parent)
            (self.dir / "index.json").unlink(missing_ok=True)  # stale until finish() rewrites it
            self._tiles_tmp = self.dir / f"tiles.{os.getpid()}.tmp"  # renamed by finish()
            self.writer = open(self._tiles_tmp, "wb")  # noqa: SIM115 (closed by finish)
        at = self.writer.tell()
        q, dm = tiles.q.numpy(), tiles.dm.numpy()
        self.writer.write(memoryview(q))  # written from the tensors' memory: no copy
        self.writer.write(memoryview(dm).cast("B"))
        self.index[key] = [at, q.nbytes, dm.nbytes, tiles.nibbles, str(dm.dtype)]
        self._placed += [(q.ctypes.data, q.nbytes, at), (dm.ctypes.data, dm.nbytes, at + q.nbytes)]

    def offset_of(self, address: int) -> int | None:
        """Where in tiles.bin the tile byte at this address sits (mapped from it, or written
        to it by this load), or None when it is no tile of this cache's."""
        if self.blob is not None:
            at = address - self.blob.ctypes.data
            return at if 0 <= at < len(self.blob) else None
        for start, nbytes, at in self._placed:
            if start <= address < start + nbytes:
                return at + address - start
        return None

    def _view(self, entry: list, kind: str, n_out: int, n_in: int) -> kernels.Int8Weights:
        at, q_bytes, dm_bytes, form, dtype = entry
        q = torch.from_numpy(self.blob[at : at + q_bytes])
        dm = torch.from_numpy(
            self.blob[at + q_bytes : at + q_bytes + dm_bytes].view(np.dtype(dtype))
        )
        return kernels.Int8Weights(q, dm, kind, n_out, n_in, form)
