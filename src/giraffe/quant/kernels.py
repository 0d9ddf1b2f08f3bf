"""Build (once) and call the packed-weight matmul kernel in `csrc/qmatmul.c` through ctypes.

The C source compiles at first use with the machine's gcc (-O3 -march=native -fopenmp)
into a per-user cache keyed by the source's hash and the compiler; a message says so
while it compiles. When no compiler is there, or `GIRAFFE_NO_KERNELS=1`, `available()`
is False and callers take the pure-torch path. A library whose ABI version or block table
differs from `giraffe.quant.types` is refused (`KernelMismatchError`). This module knows
buffers, not models.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from giraffe.quant.types import BLOCK_TYPES

SOURCE = Path(__file__).parent / "csrc" / "qmatmul.c"
HEADERS = [
    Path(__file__).parent / "csrc" / name
    for name in ("blocks.h", "gemm_i8.h", "attention.h", "decode_rows.h")
]
# Block type -> the code csrc/blocks.h uses for it (from the one table, giraffe.quant.types).
KIND_CODES = {name: t.code for name, t in BLOCK_TYPES.items()}
# What the library must report (csrc/blocks.h's GIRAFFE_ABI_VERSION): its functions' and
# structs' shapes as this module calls them.
ABI_VERSION = 22


class KernelMismatchError(RuntimeError):
    """The compiled library disagrees with giraffe's Python side (block table, ABI, struct sizes)."""


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "giraffe" / "kernels"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def _build(cc: str) -> Path:
    source = SOURCE.read_bytes() + b"".join(h.read_bytes() for h in HEADERS)
    tag = hashlib.sha256(source + cc.encode() + _cpu_flags().encode()).hexdigest()[:16]
    target = cache_dir() / f"qmatmul-{tag}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(
        "giraffe: compiling the quantized matmul kernel (once, a few seconds)...", file=sys.stderr
    )
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    cmd = [
        cc,
        "-O3",
        "-march=native",
        "-fopenmp",
        "-shared",
        "-fPIC",
        str(SOURCE),
        "-o",
        str(tmp),
        "-lm",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise OSError(f"compiling {SOURCE.name} failed: {result.stderr.strip()[:500]}")
    os.replace(tmp, target)  # atomic: a concurrent builder never sees half a library
    return target


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


# C signatures: name in the library -> argument types (every function returns an int
# status or count, except those in RETURNS_INT64).
_P, _I64, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
_MATMUL = [_P, _I, _I64, _I64, _P, _I64, _P, _I]
SIGNATURES = {
    "giraffe_qmatmul": _MATMUL,
    "giraffe_dequantize": [_P, _I, _I64, _I64, _P, _I],
    "giraffe_i8_supported": [_I],
    "giraffe_i8_nibbles": [_I],
    "giraffe_attention_causal": [_P, _I64, _I64, _P, _P, _I64, _I64, _I, _I, _I64, _I64, _I, _F,
                                 _I64, _P, _I64, _I64, _I],
    "giraffe_repack_i8": [_P, _I, _I64, _I64, _P, _P, _I, _I, _I],
    "giraffe_gemm_i8": [_P, _P, _I, _I, _I, _I64, _I64, _P, _I64, _P, _I64, _I],
    "giraffe_decode_layers": [_P, _P, _I],
    "giraffe_decode_scratch": [_P, _I, _I64, _I64, _I],
    "giraffe_dequantize_i8": [_P, _P, _I, _I, _I, _I64, _I64, _P, _I64, _P, _I],
    "giraffe_block_table": [_P, _I],
    "giraffe_abi_version": [],
    "giraffe_layer_step_size": [],
    "giraffe_decode_call_size": [],
    "giraffe_struct_fields": [_I, _P, _I],
    "giraffe_packed_matrix_size": [],
}  # fmt: skip
RETURNS_INT64 = ("giraffe_decode_scratch",)
I8_ONLY = ("giraffe_repack_i8", "giraffe_gemm_i8", "giraffe_dequantize_i8")  # need AVX-512 VNNI


def library_path() -> Path | None:
    """The compiled library (built now if needed), or None without a compiler."""
    cc = _compiler()
    return None if cc is None else _build(cc)


@lru_cache(maxsize=1)
def _library() -> dict | None:
    """Name -> ctypes function of the compiled library, or None (no compiler, opted out)."""
    if os.environ.get("GIRAFFE_NO_KERNELS") == "1":
        return None
    cc = _compiler()
    if cc is None:
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))
    except OSError as e:
        print(f"giraffe: {e}; using the slower pure-torch path", file=sys.stderr)
        return None
    check_library(lib)
    functions = {}
    for name, argtypes in SIGNATURES.items():
        if name in I8_ONLY and not lib.giraffe_i8_supported(0):
            continue  # built without AVX-512 VNNI
        if not hasattr(lib, name):
            continue  # built without AVX-512 (the attention kernel)
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int64 if name in RETURNS_INT64 else ctypes.c_int
        fn.argtypes = argtypes
        functions[name] = fn
    return functions


def check_library(lib) -> None:
    """Refuse a library whose ABI version or block table differs from giraffe.quant.types.

    A stale or hand-edited build would otherwise read blocks with the wrong sizes and
    return wrong numbers; this makes it an error that says what differs."""
    version = lib.giraffe_abi_version()
    if version != ABI_VERSION:
        raise KernelMismatchError(
            f"the compiled kernel library speaks ABI {version}, giraffe expects {ABI_VERSION}; "
            f"delete {cache_dir()} so it rebuilds from this version's sources"
        )
    columns = 8  # csrc/blocks.h's BLOCK_TABLE_COLUMNS
    table = (ctypes.c_int32 * (columns * 64))()
    rows = lib.giraffe_block_table(table, 64)
    theirs = {tuple(table[r * columns : (r + 1) * columns]) for r in range(max(rows, 0))}
    ours = {tuple(t) for t in BLOCK_TYPES.values()}
    if theirs != ours:
        names = {t.code: k for k, t in BLOCK_TYPES.items()}
        differ = sorted(names.get(row[0], f"code {row[0]}") for row in theirs ^ ours)
        raise KernelMismatchError(
            f"the compiled kernels' block table differs from giraffe.quant.types for "
            f"{', '.join(dict.fromkeys(differ))}; csrc/blocks.h and types.py must describe the "
            f"same types (fix the one that is wrong, then delete {cache_dir()})"
        )
    if lib.giraffe_i8_supported(0):
        check_int8_sizes(lib)
    for name in (
        "giraffe_layer_step_size",
        "giraffe_packed_matrix_size",
        "giraffe_decode_call_size",
    ):
        getattr(lib, name).restype = ctypes.c_int


def check_int8_sizes(lib) -> None:
    """Refuse a library whose int8 form has other sizes than FORM_BLOCK_BYTES and
    tile_scale_bytes say: every type, in bytes and its own form, in float scales and its
    file's. repack_int8 sizes its buffers from the Python side, so a drift there would
    let the C side write past them."""
    out = (ctypes.c_int64 * 2)()
    fn = lib.giraffe_i8_sizes
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_void_p]
    for kind, t in BLOCK_TYPES.items():
        if not t.int8:  # a float type: no int8 form, and the library must say so
            if fn(t.code, 0, SCALE_FORMS[torch.float32], 8, out) == 0:
                raise KernelMismatchError(
                    f"the compiled kernels offer an int8 form for {kind}, which has none"
                )
            continue
        for form, dtype, blocks in itertools.product(
            dict.fromkeys((0, t.nibbles)),
            dict.fromkeys((torch.float32, file_scale_dtype(kind))),
            (8, 24, 80),
        ):
            ours = (FORM_BLOCK_BYTES[form], tile_scale_bytes(kind, 32 * blocks, dtype))
            if fn(t.code, form, SCALE_FORMS[dtype], blocks, out) != 0 or tuple(out) != ours:
                raise KernelMismatchError(
                    f"the compiled kernels lay out {kind} tiles (form {form}, {dtype} scales, "
                    f"{blocks} blocks) in {tuple(out)} bytes, giraffe.quant.kernels in {ours}; "
                    "FORM_BLOCK_BYTES and tile_scale_bytes must follow csrc/gemm_i8.h"
                )


STRUCTS = ("layer_step", "packed_matrix", "decode_call")  # giraffe_struct_fields' numbering


def struct_fields(name: str) -> list[tuple[str, int]]:
    """(field, offset) of a struct, in declaration order, as the library declares it."""
    out = ctypes.create_string_buffer(8192)
    if _function("giraffe_struct_fields")(STRUCTS.index(name), out, len(out)) < 0:
        return []
    pairs = (f.split("@") for f in out.value.decode().split(",") if f)
    return [(field, int(at)) for field, at in pairs]


def struct_size(name: str) -> int:
    """sizeof a struct as the library sees it ("layer_step", "packed_matrix", "decode_call");
    0 without it."""
    fn = _function(f"giraffe_{name}_size")
    return 0 if fn is None else fn()


def _function(name: str):
    functions = _library()
    return None if functions is None else functions.get(name)


def available() -> bool:
    return _library() is not None


def qmatmul(
    packed: torch.Tensor, kind: str, n_out: int, n_in: int, x: torch.Tensor
) -> torch.Tensor:
    """x (..., n_in) float32 @ W^T for packed W (n_out rows of blocks) -> (..., n_out)."""
    fn = _function("giraffe_qmatmul")
    x = x.contiguous()
    rows = x.numel() // n_in
    out = torch.empty(*x.shape[:-1], n_out, dtype=torch.float32)  # (..., n_out)
    threads = torch.get_num_threads()
    status = fn(
        packed.data_ptr(),
        KIND_CODES[kind],
        n_out,
        n_in,
        x.data_ptr(),
        rows,
        out.data_ptr(),
        threads,
    )
    if status != 0:
        raise ValueError(f"quantized matmul rejected its input ({kind}, {n_out}x{n_in})")
    return out


def decode_layer_function():
    """The compiled decode step over every layer (csrc/qmatmul.c's giraffe_decode_layers),
    or None without the kernel library."""
    return _function("giraffe_decode_layers")


def decode_scratch_floats(steps, n: int, max_len: int, prompt: bool) -> int:
    """Floats of scratch giraffe_decode_layers needs for a call of n rows over these layer
    structs (a ctypes array; max_len: the cache's slots; prompt: one sequence's rows)."""
    return _function("giraffe_decode_scratch")(steps, len(steps), n, max_len, int(prompt))


def dequantize(
    packed: torch.Tensor, kind: str, n_out: int, n_in: int, out: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Packed blocks -> float32 (n_out, n_in) in C (into `out` if given); None without the kernel."""
    fn = _function("giraffe_dequantize")
    if fn is None or kind not in KIND_CODES:
        return None
    packed = packed.contiguous()
    out = torch.empty(n_out, n_in, dtype=torch.float32) if out is None else out
    if (
        fn(
            packed.data_ptr(),
            KIND_CODES[kind],
            n_out,
            n_in,
            out.data_ptr(),
            torch.get_num_threads(),
        )
        != 0
    ):
        raise ValueError(f"dequantize rejected its input ({kind}, {n_out}x{n_in})")
    return out


@dataclass(frozen=True)
class Int8Weights:
    """A weight repacked for the int8-activation GEMM (csrc/gemm_i8.h): tiles of 16 rows."""

    q: torch.Tensor  # (tiles * blocks * 512 (256 nibbles, 320 fives, 384 sixes),) uint8: VNNI order
    # per tile, its scales in one of csrc/gemm_i8.h's scale forms, told by the dtype:
    # float32 (16 scales, then 16 mins, a tile block), float16 (the same, where each is an
    # fp16 exactly), uint8 (a K-quant's own: fp16 super-block scales, then integer scales)
    dm: torch.Tensor
    kind: str
    n_out: int
    n_in: int
    # how the integers are packed: 0 a byte each; 1 two 4-bit integers a byte (Q4_0, Q4_1,
    # Q4_K); 2 those nibbles plus a plane of fifth bits (Q5_0, Q5_1, Q5_K); 3 nibbles plus
    # planes of fifth and sixth bits (Q6_K)
    nibbles: int = 0

    @property
    def scale_form(self) -> int:
        """csrc/gemm_i8.h's SF_FLOAT (0), SF_HALF (1) or SF_K (2), from the scales' dtype."""
        return SCALE_FORMS[self.dm.dtype]

    def dequantize(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The weight back as float32 (n_out, n_in), or only `rows` (any int shape -> (N, n_in)):
        the same numbers as dequantizing the ggml blocks it came from."""
        index = None if rows is None else rows.reshape(-1).to(torch.int64).contiguous()
        n = self.n_out if index is None else index.numel()
        out = torch.empty(n, self.n_in, dtype=torch.float32)  # (n, n_in)
        status = _function("giraffe_dequantize_i8")(
            self.q.data_ptr(), self.dm.data_ptr(), KIND_CODES[self.kind], int(self.nibbles),
            self.scale_form, self.n_out, self.n_in, None if index is None else index.data_ptr(), n,
            out.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        if status != 0:
            raise IndexError(f"row ids outside 0..{self.n_out - 1} for a {self.kind} weight")
        return out

    def rows(self, start: int, stop: int) -> Int8Weights:
        """Output rows start..stop-1 as views (both multiples of 16, the tile height)."""
        if start % 16 or (stop % 16 and stop != self.n_out):
            raise ValueError(f"int8 tiles split at multiples of 16 rows, not {start}..{stop}")
        tile_q, tile_dm = (
            self.q.numel() // -(-self.n_out // 16),
            self.dm.numel() // -(-self.n_out // 16),
        )
        t0, t1 = start // 16, -(-stop // 16)
        return Int8Weights(
            self.q[t0 * tile_q : t1 * tile_q], self.dm[t0 * tile_dm : t1 * tile_dm],
            self.kind, stop - start, self.n_in, self.nibbles,
        )  # fmt: skip


@lru_cache(maxsize=1)  # asked on every packed product: the library's answer never changes
def int8_kinds() -> tuple[str, ...]:
    """Block types the int8 GEMM takes on this machine (none without AVX-512 VNNI)."""
    fn = _function("giraffe_i8_supported")
    if fn is None or _function("giraffe_gemm_i8") is None:
        return ()
    return tuple(k for k, code in KIND_CODES.items() if fn(code))


@lru_cache(maxsize=1)
def nibble_kinds() -> tuple[str, ...]:
    """Types the int8 GEMM keeps under a byte a weight (their integers fit 4, 5 or 6 bits)."""
    fn = _function("giraffe_i8_nibbles")
    return () if fn is None else tuple(k for k in int8_kinds() if fn(KIND_CODES[k]))


# The scales' dtype in an Int8Weights -> csrc/gemm_i8.h's scale form.
SCALE_FORMS = {torch.float32: 0, torch.float16: 1, torch.uint8: 2}
# Bytes of a tile's block of 32 inputs per integer form (bytes, nibbles, fives, sixes,
# grid indices): csrc/gemm_i8.h's i8_block_bytes.
FORM_BLOCK_BYTES = (512, 256, 320, 384, 256)


def file_scale_dtype(kind: str) -> torch.dtype:
    """The scale form a type's blocks repack into, as the dtype that names it: fp16 for
    the 32-weight types (d and m are the file's own fp16 numbers), the K-quants' own
    layout (bytes) for the rest. Either reads no more scale bytes than the file holds."""
    return torch.float16 if BLOCK_TYPES[kind].weights == 32 else torch.uint8


def tile_scale_bytes(kind: str, n_in: int, dtype: torch.dtype) -> int:
    """Bytes of scales per tile of 16 rows (csrc/gemm_i8.h's i8_tile_scale_bytes)."""
    blocks, t = n_in // 32, BLOCK_TYPES[kind]
    if dtype == torch.uint8:  # per super-block 16 fp16 d (and 16 dmin); per block 16 a set
        return (blocks // 8) * (64 if t.has_min else 32) + blocks * scales_per_block(kind)
    return blocks * scales_per_block(kind) * (2 if dtype == torch.float16 else 4)


def int8_bytes(kind: str, n_out: int, n_in: int) -> int:
    """Resident bytes of an (n_out, n_in) weight of this type repacked in its own form."""
    form = BLOCK_TYPES[kind].nibbles
    per_tile = (n_in // 32) * FORM_BLOCK_BYTES[form]
    return -(-n_out // 16) * (per_tile + tile_scale_bytes(kind, n_in, file_scale_dtype(kind)))


def scales_per_block(kind: str) -> int:
    """Scales per tile and block of 32 inputs: 16 per scale set (csrc/blocks.h's i8_sets):
    the scales, with split scales those of weights 16-31, with mins the mins (per 16
    weights, with both: Q2_K)."""
    t = BLOCK_TYPES[kind]
    return 16 * (1 + t.split + t.has_min * (1 + t.split))


def repack_int8(
    packed: torch.Tensor | list[torch.Tensor],
    kind: str,
    n_out: int,
    n_in: int,
    nibbles: bool | None = None,
) -> Int8Weights:
    """Packed blocks -> the GEMM's layout, once per weight, reading no more bytes than the
    file's blocks: ~0.56-0.63 bytes a weight as nibbles (4-bit types), ~0.69 as nibbles +
    fifth bits (5-bit types), ~0.82 with sixth bits too (Q6_K), ~1.06 as bytes (Q8_0).
    nibbles: None or True for the type's own packed form (as the block table says), False
    for bytes.

    `packed` may be a list of parts stacked along the output rows (q|k|v): each is
    repacked straight into its place in one buffer, no concatenated copy; every part
    but the last must be whole 16-row tiles."""
    if kind not in int8_kinds() or n_in % 32:
        raise ValueError(f"the int8 GEMM does not take {kind} weights of {n_out}x{n_in}")
    if nibbles and kind not in nibble_kinds():
        raise ValueError(f"{kind} integers have no packed form; repack it as bytes")
    form = BLOCK_TYPES[kind].nibbles if nibbles is None or nibbles else 0
    parts = packed if isinstance(packed, list) else [packed]
    if any(p.shape[0] % 16 for p in parts[:-1]) or sum(p.shape[0] for p in parts) != n_out:
        raise ValueError(f"parts of {[p.shape[0] for p in parts]} rows do not stack into {n_out}")
    tiles, blocks = -(-n_out // 16), n_in // 32
    dtype = file_scale_dtype(kind)
    tile_q = blocks * FORM_BLOCK_BYTES[form]
    tile_dm = tile_scale_bytes(kind, n_in, dtype) // dtype.itemsize  # in elements
    q = torch.empty(tiles * tile_q, dtype=torch.uint8)
    dm = torch.empty(tiles * tile_dm, dtype=dtype)
    start = 0  # in tiles
    for part in parts:
        rows = part.shape[0]
        args = (part.contiguous().data_ptr(), KIND_CODES[kind], rows, n_in)
        status = _function("giraffe_repack_i8")(
            *args, q[start * tile_q :].data_ptr(), dm[start * tile_dm :].data_ptr(),
            form, SCALE_FORMS[dtype], torch.get_num_threads(),
        )  # fmt: skip
        if status != 0:
            raise ValueError(f"repacking {kind} {rows}x{n_in} for the int8 GEMM failed")
        start += rows // 16
    return Int8Weights(q, dm, kind, n_out, n_in, form)


def gemm_int8(w: Int8Weights, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., n_in) float32 @ W^T with x rounded to int8 per block of 32 -> (..., n_out).

    Numerically llama.cpp's kind of result: equal to rounding to "round x per block
    (scale max|x|/127, nearest even), then the float reference" (tested), not to the
    float reference itself.
    """
    x = x.contiguous()
    rows = x.numel() // w.n_in
    if out is None:
        out = torch.empty(*x.shape[:-1], w.n_out, dtype=torch.float32)  # (..., n_out)
    status = _function("giraffe_gemm_i8")(
        w.q.data_ptr(), w.dm.data_ptr(), KIND_CODES[w.kind], int(w.nibbles), w.scale_form, w.n_out, w.n_in,
        x.data_ptr(), rows, out.data_ptr(), out.stride(-2) if out.dim() > 1 else w.n_out,
        torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise ValueError(f"int8 GEMM rejected its input ({w.kind}, {w.n_out}x{w.n_in})")
    return out


def attention_causal(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int | None
) -> torch.Tensor | None:
    """Causal attention of T queries (B, H, T, D) over S >= T keys/values (B, Hkv, S, D).

    The queries are the last T slots. Returns (B, H, T, D) (a transposed view of a
    (B, T, H, D) buffer, so joining the heads afterwards copies nothing), or None where
    the kernel is not built or does not take these shapes (D % 16, D > 256, odd strides).
    """
    fn = _function("giraffe_attention_causal")
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    usable = fn is not None and q.dtype == k.dtype == v.dtype == torch.float32
    if not usable or D % 16 or D > 256 or k.stride() != v.stride():
        return None
    if q.stride(-1) != 1 or k.stride(-1) != 1 or S < T or H % Hkv:
        return None
    out = torch.empty(B, T, H, D)  # (B, T, H, D)
    for b in range(B):
        status = fn(
            q[b].data_ptr(), q.stride(1), q.stride(2), k[b].data_ptr(), v[b].data_ptr(),
            k.stride(1), k.stride(2), H, Hkv, T, S, D, scale, window or 0,
            out[b].data_ptr(), out.stride(2), out.stride(1), torch.get_num_threads(),
        )  # fmt: skip
        if status != 0:
            return None
    return out.transpose(1, 2)  # (B, H, T, D)
