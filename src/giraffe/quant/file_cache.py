"""Where giraffe keeps what it derived from one model file (or model folder): the int8
tiles (`giraffe.quant.tile_cache`) and the compiled step's image (`giraffe.quant.step_image`).

One folder per model, named by everything the derived bytes depend on: the file or the
folder's files (resolved path, size, modification time), the kernel library's ABI and
the block table.
A file changed in place gets a new folder; the old one ages out (`prune`). It knows
paths, not what is in them; it imports no torch.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from giraffe.quant import library
from giraffe.quant.types import BLOCK_TYPES

KEEP = 8  # model files whose derived bytes stay cached; the least recently written go first


def cache_root() -> Path:
    return library.cache_dir().parent / "tiles"


def enabled() -> bool:
    """Off with GIRAFFE_TILE_CACHE=0: every load then repacks, and no image is kept."""
    return os.environ.get("GIRAFFE_TILE_CACHE") != "0"


def cache_dir_for(model: Path) -> Path:
    """The folder of a model file's derived bytes; for a model folder (Hugging Face
    layout), of every file in it."""
    files = sorted(f for f in model.iterdir() if f.is_file()) if model.is_dir() else [model]
    stats = [(f.resolve(), f.stat()) for f in files]
    # the layout's every input: the file(s), the library's ABI and the block table
    table = sorted(BLOCK_TYPES.items())
    ident = "|".join(f"{f}|{st.st_size}|{st.st_mtime_ns}" for f, st in stats)
    ident += f"|{library.ABI_VERSION}|{table}"
    return cache_root() / hashlib.sha256(ident.encode()).hexdigest()[:24]


def prune(root: Path) -> None:
    """Keep the KEEP most recently written folders."""
    dirs = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
    for old in dirs[:-KEEP]:
        for f in old.iterdir():
            f.unlink(missing_ok=True)
        old.rmdir()
