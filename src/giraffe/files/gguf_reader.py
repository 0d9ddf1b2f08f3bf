"""A fast GGUF reader: header, metadata and tensor views over one memory map.

The `gguf` package's reader builds a numpy view per array item, which takes seconds
for a 49k-token vocabulary; this one walks the header once with `struct` and reads
string arrays in a tight loop. It offers the small part of `gguf.GGUFReader`'s
interface giraffe uses (`fields[key].contents()`, `tensors` with name, shape,
tensor_type and data), and a test holds both readers equal. Tensor data are views
into the map, never copies (the map is copy-on-write, so views are writable numpy arrays
that torch takes without a copy); `release` hands a tensor's pages back once a caller has
made its own form of it. Tensors are checked against the file: each must fit its block
type (whole blocks per row) and lie inside the file without overlapping the next one.
Writing stays with the `gguf` package.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from giraffe.files.ggml_types import BLOCK_SIZES, GGMLType

# GGUF value types (gguf spec): code -> (struct format, numpy dtype)
SCALARS = {
    0: ("<B", np.uint8), 1: ("<b", np.int8), 2: ("<H", np.uint16), 3: ("<h", np.int16),
    4: ("<I", np.uint32), 5: ("<i", np.int32), 6: ("<f", np.float32), 7: ("<?", np.bool_),
    10: ("<Q", np.uint64), 11: ("<q", np.int64), 12: ("<d", np.float64),
}  # fmt: skip
STRING, ARRAY = 8, 9
_U64 = struct.Struct("<Q")
WINDOW = 1 << 20  # bytes of the header copied at a time while reading string arrays


class GGUFFormatError(ValueError):
    """The file is not GGUF, or its header is damaged or truncated."""


@dataclass
class Field:
    value: object

    def contents(self):
        return self.value


@dataclass
class TensorInfo:
    name: str
    shape: np.ndarray  # ggml order: fastest-varying dimension first
    tensor_type: GGMLType
    data: np.ndarray  # uint8 (rows, bytes per row) for block types; typed for F32/F16


class FastGGUFReader:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._map = np.memmap(self.path, dtype=np.uint8, mode="c")
        self._buf = memoryview(self._map)
        self._pos = 0
        try:
            self._read_header()
        except GGUFFormatError:
            raise
        except (struct.error, IndexError, UnicodeDecodeError, KeyError, ValueError) as e:
            raise GGUFFormatError(f"{self.path}: damaged or truncated GGUF header ({e})") from None

    def _read_header(self) -> None:
        if bytes(self._buf[:4]) != b"GGUF":
            raise GGUFFormatError(f"{self.path} is not a GGUF file (bad magic bytes)")
        self._pos = 4
        version, n_tensors, n_kv = self._unpack("<IQQ")
        if version not in (2, 3):
            raise GGUFFormatError(f"{self.path}: GGUF version {version} is not supported (2 or 3)")
        self.fields = {}
        for _ in range(n_kv):
            key = self._string()
            self.fields[key] = Field(self._value(self._unpack("<I")[0]))
        infos = [self._tensor_info() for _ in range(n_tensors)]
        align = int(self.fields.get("general.alignment", Field(32)).value)
        start = -(-self._pos // align) * align
        self.tensors = [
            self._tensor(name, dims, kind, start + offset) for name, dims, kind, offset in infos
        ]
        self._check_overlaps(infos, start)

    def map_span(self) -> tuple[int, int]:
        """(address, length) of the file's map in this process: tensor views lie inside it."""
        return self._map.ctypes.data, len(self._map)

    def release(self, address: int, nbytes: int) -> None:
        """Drop this process's pages of bytes [address, address + nbytes) of the map; they
        stay readable (they come back on use). Memory outside the map is ignored.

        For a caller that keeps its own form of a tensor (repacked or dequantized), so that
        the file's pages do not also count in resident memory."""
        at = address - self._map.ctypes.data
        if at < 0 or at + nbytes > len(self._map):
            return  # not a view of this file (e.g. rows permuted into a copy)
        first = -(-at // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the range only
        last = (at + nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first:
            self._map._mmap.madvise(mmap.MADV_DONTNEED, first, last - first)

    def _check_overlaps(self, infos, start: int) -> None:
        spans = sorted(
            (start + offset, t.data.nbytes, t.name)
            for t, (*_, offset) in zip(self.tensors, infos, strict=True)
        )
        for (a, size, name), (b, _, following) in zip(spans, spans[1:], strict=False):
            if a + size > b:
                raise GGUFFormatError(
                    f"{self.path}: tensor {name} ({size} bytes for its type and shape) overlaps "
                    f"tensor {following}; the header's shape or type is wrong (corrupt file?)"
                )

    def _unpack(self, fmt: str):
        values = struct.unpack_from(fmt, self._buf, self._pos)
        self._pos += struct.calcsize(fmt)
        return values

    def _string(self) -> str:
        (n,) = self._unpack("<Q")
        text = bytes(self._buf[self._pos : self._pos + n]).decode("utf-8")
        self._pos += n
        return text

    def _strings(self, count: int) -> list[str]:
        """`count` length-prefixed strings (a vocabulary: 150k of them), in one tight loop
        over a bytes window of the map (slicing bytes is ~2x faster than a memoryview)."""
        out, length = [], _U64.unpack_from
        append = out.append
        base, raw, pos = self._pos, b"", 0  # raw = map[base : base + len(raw)]; pos within it
        size = 0  # len(raw)
        for _ in range(count):
            end = size + 1  # (forces a refill when the length itself is past the window)
            if pos + 8 <= size:
                (n,) = length(raw, pos)  # read once a string: ~1/3 of the loop's time
                end = pos + 8 + n
            if end > size:
                base, pos = base + pos, 0  # refill the window at this string
                (n,) = length(self._buf, base)
                raw = bytes(self._buf[base : base + max(WINDOW, 8 + n)])
                size, end = len(raw), 8 + n
                if end > size:
                    raise ValueError(f"a string of {n} bytes runs past the end of the file")
            append(raw[pos + 8 : end].decode("utf-8"))
            pos = end
        self._pos = base + pos
        return out

    def _value(self, kind: int):
        if kind == STRING:
            return self._string()
        if kind == ARRAY:
            item, count = self._unpack("<IQ")
            if item == STRING:
                return self._strings(count)
            if item == ARRAY:
                return [self._value(self._unpack("<I")[0]) for _ in range(count)]
            dtype = np.dtype(SCALARS[item][1])
            values = np.frombuffer(self._buf, dtype=dtype, count=count, offset=self._pos)
            self._pos += count * dtype.itemsize
            return values.tolist()
        return self._unpack(SCALARS[kind][0])[0]

    def _tensor_info(self):
        name = self._string()
        (n_dims,) = self._unpack("<I")
        dims = self._unpack(f"<{n_dims}Q")
        kind, offset = self._unpack("<IQ")
        try:
            return name, dims, GGMLType(kind), offset
        except ValueError:
            raise GGUFFormatError(
                f"{self.path}: tensor {name} has ggml type {kind}, which giraffe does not know "
                "(a type newer than this giraffe, or a damaged header)"
            ) from None

    def _tensor(self, name, dims, kind, offset) -> TensorInfo:
        block, type_size = BLOCK_SIZES[kind]
        if not dims or dims[0] % block:
            raise GGUFFormatError(
                f"{self.path}: tensor {name} has rows of {dims[0] if dims else 0} weights, not "
                f"whole {kind.name} blocks of {block} (corrupt header?)"
            )
        n = int(np.prod(dims))
        size = n // block * type_size
        if offset + size > len(self._map):
            raise GGUFFormatError(
                f"{self.path}: tensor {name} runs past the end of the file (truncated?)"
            )
        raw = self._map[offset : offset + size]
        rows = list(reversed(dims))
        if kind == GGMLType.F32:
            data = raw.view(np.float32).reshape(rows)
        elif kind == GGMLType.F16:
            data = raw.view(np.float16).reshape(rows)
        else:
            data = raw.reshape(*rows[:-1], rows[-1] // block * type_size)
        return TensorInfo(name, np.array(dims, dtype=np.uint64), kind, data)
