"""Token shards on disk -> training rows: memory-mapped train/val arrays and the batches
drawn from them.

A batch is a pure function of (seed, step, split): row start offsets come from a
generator seeded with those numbers, so a resumed run, an uninterrupted run and every
rank of a distributed run agree on which rows make up the global batch of a step
without any saved data cursor beyond the step itself.

It does not know how shards are written (`giraffe.train.data`) nor models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from giraffe.tokenizer.tokenizer import Tokenizer
from giraffe.train.data import DataError, tokenizer_hash


@dataclass
class Shards:
    folder: Path
    meta: dict
    train: np.ndarray  # (N,) memory-mapped uint16/uint32
    val: np.ndarray

    def bytes_per_token(self, split: str = "val") -> float:
        c = self.meta[split]
        return c["bytes"] / max(c["tokens"], 1)

    def rows(self, split: str, seed: int, step: int, count: int, length: int) -> torch.Tensor:
        """`count` rows of `length` tokens at offsets drawn for (seed, step, split): (count, length)."""
        data = self.train if split == "train" else self.val
        if len(data) < length + 1:
            raise DataError(
                f"{self.folder}/{split}.bin holds {len(data)} tokens, fewer than one row of "
                f"{length}: prepare more text or lower --seq-len"
            )
        g = torch.Generator().manual_seed(_mix(seed, step, split))
        starts = torch.randint(len(data) - length + 1, (count,), generator=g).tolist()
        rows = np.stack([np.asarray(data[s : s + length], dtype=np.int64) for s in starts])
        return torch.from_numpy(rows)  # (count, length)


def _mix(seed: int, step: int, split: str) -> int:
    return (seed * 1_000_003 + step * 2 + (split == "val")) % (1 << 63)


def open_shards(folder: str | Path, tokenizer: Tokenizer | None = None) -> Shards:
    """Open prepared shards; with `tokenizer`, refuse shards another tokenizer made."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise DataError(
            f"{meta_path} not found: prepare the data first (giraffe prepare DATA --tokenizer T --out {folder})"
        )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if tokenizer is not None and tokenizer_hash(tokenizer) != meta["tokenizer_sha256"]:
        raise DataError(
            f"the shards in {folder} were made by another tokenizer than {tokenizer.name} "
            "(tokenizer hash differs): train with the shards' own tokenizer "
            f"({folder}/tokenizer.json) or prepare the data again with this one"
        )
    arrays = {}
    for split in ("train", "val"):
        path = folder / f"{split}.bin"
        expected = meta[split]["tokens"]
        size = path.stat().st_size if path.is_file() else -1
        width = np.dtype(meta["dtype"]).itemsize
        if size != expected * width:
            raise DataError(
                f"{path} should hold {expected} {meta['dtype']} tokens ({expected * width} bytes) "
                f"but is {'missing' if size < 0 else f'{size} bytes'}: prepare the data again"
            )
        arrays[split] = (
            np.memmap(path, dtype=meta["dtype"], mode="r")
            if expected
            else np.zeros(0, meta["dtype"])
        )
    return Shards(folder, meta, arrays["train"], arrays["val"])
