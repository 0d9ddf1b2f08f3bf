"""A model's compiled step saved beside its tiles, so that a later load runs it without torch.

A torch load of a packed GGUF model builds its step (`FastDecode`) from modules: which
products fuse, where every norm, bias, tile and block sits, the RoPE tables - decisions
that cost `import torch` (1.0-1.6 s on these machines) and a model's worth of Python
objects. `save` writes what the step's C structs hold: every number as it is, every
address as (region, offset) - "file" (the model file's map), "tiles" (the tile cache's
tiles.bin) or "blob" (bytes copied here: norms, biases, permuted copies, the RoPE tables
for the whole context). `load` maps those regions again and rebuilds the structs, no
torch, no modules: the same bytes at the same offsets, so the same numbers bit for bit.

The image is named by the model file's cache folder (`giraffe.quant.file_cache`: the
file, the library's ABI, the block table) and stamps the Python sources that build a
step (`source_tag`): an image from other code is ignored, never read. Written to a new
name and renamed into place. It knows structs, regions and bytes; not models, torch or
tokenizers.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from giraffe.quant import file_cache, library
from giraffe.quant.compiled_step import (
    CompiledStep,
    DecodeCall,
    LayerStep,
    PackedMatrix,
    check_structs,
)

IMAGE, BLOB = "step.json", "step.bin"
ALIGN = 64  # every array in the blob starts on a cache line
# the sources whose decisions an image holds (how a step is built from a file)
SOURCES = ("quant", "formats", "models", "nn", "files", "config.py")


def kept() -> bool:
    """Whether steps are saved and opened at all: the kernel library is there, activations
    are int8 (the image's products are), the cache is on (GIRAFFE_TILE_CACHE)."""
    return library.available() and library.int8_activations() and file_cache.enabled()


@lru_cache(maxsize=1)  # the sources do not change under a running process
def source_tag() -> str:
    """A digest of the giraffe sources that decide what a step holds."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for name in SOURCES:
        path = root / name
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(f.read_bytes())
    for f in sorted((root / "quant" / "csrc").iterdir()):
        digest.update(f.read_bytes())
    return digest.hexdigest()[:24]


# what each call fills into every layer's struct (the fields a layer_step shares with the
# decode_call, but its own size): stale after a call, never part of an image
PER_CALL = {name for name, _ in DecodeCall._fields_} - {"size"}


def _fields(struct) -> tuple[dict, dict]:
    """(numbers, addresses) of a struct's fixed fields: each as it is; void pointers (and
    arrays of them) as raw addresses. Struct pointers are left to the caller."""
    numbers, addresses = {}, {}
    for name, ctype in type(struct)._fields_:
        if name in PER_CALL:
            continue
        value = getattr(struct, name)
        if ctype is ctypes.c_void_p:
            addresses[name] = [value]
        elif issubclass(ctype, ctypes.Array) and ctype._type_ is ctypes.c_void_p:
            addresses[name] = list(value)
        elif issubclass(ctype, ctypes.Array):
            numbers[name] = list(value)
        elif not issubclass(ctype, ctypes._Pointer):
            numbers[name] = value
    return numbers, addresses


class _Places:
    """Turns addresses into (region, offset), copying arrays outside the maps into the blob."""

    def __init__(self, file_span: tuple[int, int], tile_offset, arrays: list[np.ndarray]):
        self.file_base, self.file_size = file_span
        self.tile_offset = tile_offset  # address -> offset in tiles.bin, or None
        self.arrays = [a for a in arrays if a is not None and a.nbytes]
        self.blob: list[np.ndarray] = []
        self.blob_size = 0
        self.in_blob: dict[int, int] = {}  # id(array) -> its offset in the blob

    def of(self, address: int | None) -> list | None:
        if not address:
            return None
        if 0 <= address - self.file_base < self.file_size:
            return ["file", address - self.file_base]
        at = self.tile_offset(address)
        if at is not None:
            return ["tiles", at]
        for a in self.arrays:
            start = a.ctypes.data
            if start <= address < start + a.nbytes:
                return ["blob", self.add(a) + address - start]
        raise LookupError(f"the step points at {address:#x}, which no known array holds")

    def add(self, a: np.ndarray) -> int:
        if id(a) not in self.in_blob:
            self.in_blob[id(a)] = self.blob_size
            self.blob.append(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
            self.blob_size += -(-a.nbytes // ALIGN) * ALIGN
        return self.in_blob[id(a)]


def keep(step, directory: Path, cfg, file_map=None, tile_offset=None) -> None:
    """Save a torch load's step (a `FastDecode`) as the image in `directory`, unless an
    image of it is there already. Only a step that needs no Python of the model's gets
    one: it looks rows up and runs the head itself, and every product is on the int8
    GEMM (F16/BF16 products hand long prompts to the module path). file_map: the model
    file's reader (None for a folder); tile_offset: its tile cache's `offset_of`."""
    if not kept():
        return
    if step is None or step.head is None or step.embed is None:
        return
    if load(directory, cfg, file_map) is not None:
        return  # an earlier load's, which this one would write the same
    step.use_int8(True)  # what its first call would do: the structs point at the tiles
    span = (0, 0) if file_map is None else file_map.map_span()
    save(step, directory, span, tile_offset, step.arrays(), cfg.max_position_embeddings)


def save(
    step: CompiledStep,
    directory: Path,
    file_span: tuple[int, int],
    tile_offset,
    arrays: list[np.ndarray],
    context: int,
) -> bool:
    """Write the step's image into `directory`; False (nothing written) when some address
    falls outside the file, the tiles and `arrays` (the step's own arrays: norms, biases,
    copies; for a model folder - no file span, no tile_offset - every array). The RoPE
    tables are taken for the whole `context`."""
    places = _Places(file_span, tile_offset or (lambda address: None), arrays)
    matrices: list[PackedMatrix] = []

    def matrix_index(pointer) -> int | None:
        if not pointer:
            return None
        m = pointer.contents
        for i, known in enumerate(matrices):
            if ctypes.addressof(known) == ctypes.addressof(m):
                return i
        matrices.append(m)
        return len(matrices) - 1

    try:
        layers = []
        for s in step.steps:
            numbers, addresses = _fields(s)
            refs = {
                name: matrix_index(getattr(s, name)) for name in ("qkv", "o", "gate_up", "down")
            }
            layers.append([numbers, _placed(places, addresses), refs])
        ends = {
            "head": None if step.head is None else matrix_index(ctypes.pointer(step.head)),
            "embed": None if step.embed is None else matrix_index(ctypes.pointer(step.embed)),
        }
        packed = [[n, _placed(places, a)] for n, a in (_fields(m) for m in matrices)]
        final_norm = [places.of(a) for a in step.final_norm]
        rope = []
        if step.rope_tables is not None and step.cfg.position == "rope":
            tables = step.rope_tables(context)
            rope = [[list(t.shape), places.add(t)] for pair in tables for t in pair]
    except LookupError:
        return False
    image = {
        "source": source_tag(),
        "layers": layers,
        "matrices": packed,
        "ends": ends,
        "final_norm": final_norm,
        "rope": rope,
        "blob_size": places.blob_size,
    }
    _write(directory, image, places)
    return True


def _placed(places: _Places, addresses: dict) -> dict:
    return {name: [places.of(a) for a in values] for name, values in addresses.items()}


def _write(directory: Path, image: dict, places: _Places) -> None:
    """The blob, then the image naming it (each written new and renamed into place)."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f"{BLOB}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        for a in places.blob:
            f.write(memoryview(a))
            f.write(b"\0" * (-a.nbytes % ALIGN))
    os.replace(tmp, directory / BLOB)
    tmp = directory / f"{IMAGE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(image))
    os.replace(tmp, directory / IMAGE)


def load(directory: Path, cfg, file_map) -> CompiledStep | None:
    """The step an image in `directory` describes, over `file_map` (the model file mapped
    in this process: its reader, whose map_span() says where; None for a model folder,
    whose image holds every array) and the folder's tiles.bin (where there is one);
    None when there is no usable image (missing, from other sources, damaged or not
    matching the library's structs): then the caller loads the model the ordinary way,
    which writes a new one."""
    try:
        image = json.loads((directory / IMAGE).read_text())
        if image.get("source") != source_tag():
            return None
        has_tiles = (directory / "tiles.bin").exists()  # (a folder's tiles are in the blob)
        tiles = np.memmap(directory / "tiles.bin", dtype=np.uint8, mode="r") if has_tiles else None
        blob = np.memmap(directory / BLOB, dtype=np.uint8, mode="r")
        if len(blob) < image["blob_size"]:
            return None
        regions = {
            "file": (0, 0) if file_map is None else file_map.map_span(),
            "tiles": (0, 0) if tiles is None else (tiles.ctypes.data, len(tiles)),
            "blob": (blob.ctypes.data, len(blob)),
        }
        check_structs()
        return _rebuild(image, cfg, regions, keep=(file_map, tiles, blob))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _rebuild(image: dict, cfg, regions: dict[str, tuple[int, int]], keep: tuple) -> CompiledStep:
    """regions: name -> (address, bytes) in this process; keep: what keeps them mapped."""

    def address(place) -> int | None:
        if place is None:
            return None
        region, offset = place
        base, size = regions[region]
        if not 0 <= offset < size:
            raise ValueError(f"an address past the end of {region}")
        return base + offset

    def fill(struct, numbers: dict, addresses: dict):
        for name, value in numbers.items():
            if isinstance(value, list):
                getattr(struct, name)[:] = value
            else:
                setattr(struct, name, value)
        for name, places in addresses.items():
            values = [address(p) for p in places]
            if isinstance(getattr(struct, name), int | None):
                setattr(struct, name, values[0])
            else:
                getattr(struct, name)[:] = values
        return struct

    matrices = [fill(PackedMatrix(), n, a) for n, a in image["matrices"]]
    steps = (LayerStep * len(image["layers"]))()
    for step, (numbers, addresses, refs) in zip(steps, image["layers"], strict=True):
        fill(step, numbers, addresses)
        for name, i in refs.items():
            setattr(step, name, None if i is None else ctypes.pointer(matrices[i]))
    head, embed = (None if i is None else matrices[i] for i in image["ends"].values())
    blob = keep[2]
    tables = [
        blob[at : at + 4 * int(np.prod(shape))].view(np.float32).reshape(shape)
        for shape, at in image["rope"]
    ]
    rope = [(tables[0], tables[1]), (tables[2], tables[3])] if tables else None
    final_norm = tuple(address(p) for p in image["final_norm"])
    return CompiledStep(
        cfg,
        steps,
        head,
        embed,
        final_norm,
        None if rope is None else _stored_tables(rope),
        held=(keep, matrices),
    )


def _stored_tables(rope: list):
    """The rope_tables of a loaded image: the stored ones, which cover the whole context."""

    def tables(need: int):
        if need > rope[0][0].shape[0]:
            raise ValueError(f"position {need - 1} is past the model's context")
        return rope

    return tables
