"""Build (once), load and check the compiled kernel library (`csrc/qmatmul.c`); no torch.

The C source compiles at first use with the machine's gcc (-O3 -march=native -fopenmp)
into a per-user cache keyed by the source's hash and the compiler; a message says so
while it compiles. When no compiler is there, or `GIRAFFE_NO_KERNELS=1`, `available()`
is False and callers take the reference path. A library whose ABI version, block table,
int8 tile sizes or structs differ from giraffe's Python side is refused
(`KernelMismatchError`). It also owns the facts both sides share about the int8 tiles'
layout, and how many threads a call uses. It knows the library, not tensors: the torch
wrappers over buffers are `giraffe.quant.kernels`.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import os
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from giraffe.quant.types import BLOCK_TYPES

SOURCE = Path(__file__).parent / "csrc" / "qmatmul.c"
HEADERS = [
    Path(__file__).parent / "csrc" / name
    for name in ("blocks.h", "gemm_i8.h", "gemm_amx.h", "attention.h", "decode_rows.h")
]
# Block type -> the code csrc/blocks.h uses for it (from the one table, giraffe.quant.types).
KIND_CODES = {name: t.code for name, t in BLOCK_TYPES.items()}
# What the library must report (csrc/blocks.h's GIRAFFE_ABI_VERSION): its functions' and
# structs' shapes as this module calls them.
ABI_VERSION = 23


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
    "giraffe_amx": [_I],
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
        print(f"giraffe: {e}; using the slower reference path", file=sys.stderr)
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
    if os.environ.get("GIRAFFE_AMX") == "0":
        lib.giraffe_amx(0)
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
            if fn(t.code, 0, SCALE_FORMS["float32"], 8, out) == 0:
                raise KernelMismatchError(
                    f"the compiled kernels offer an int8 form for {kind}, which has none"
                )
            continue
        for form, dtype, blocks in itertools.product(
            dict.fromkeys((0, t.nibbles)),
            dict.fromkeys(("float32", file_scale_dtype(kind))),
            (8, 24, 80),
        ):
            ours = (FORM_BLOCK_BYTES[form], tile_scale_bytes(kind, 32 * blocks, dtype))
            if fn(t.code, form, SCALE_FORMS[dtype], blocks, out) != 0 or tuple(out) != ours:
                raise KernelMismatchError(
                    f"the compiled kernels lay out {kind} tiles (form {form}, {dtype} scales, "
                    f"{blocks} blocks) in {tuple(out)} bytes, giraffe.quant.library in {ours}; "
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


def decode_layer_function():
    """The compiled decode step over every layer (csrc/qmatmul.c's giraffe_decode_layers),
    or None without the kernel library."""
    return _function("giraffe_decode_layers")


def decode_scratch_floats(steps, n: int, max_len: int, prompt: bool) -> int:
    """Floats of scratch giraffe_decode_layers needs for a call of n rows over these layer
    structs (a ctypes array; max_len: the cache's slots; prompt: one sequence's rows)."""
    return _function("giraffe_decode_scratch")(steps, len(steps), n, max_len, int(prompt))


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


# The scales' dtype (by name, torch's or numpy's) -> csrc/gemm_i8.h's scale form.
SCALE_FORMS = {"float32": 0, "float16": 1, "uint8": 2}
# Bytes of a tile's block of 32 inputs per integer form (bytes, nibbles, fives, sixes,
# grid indices): csrc/gemm_i8.h's i8_block_bytes.
FORM_BLOCK_BYTES = (512, 256, 320, 384, 256)


def scale_form(dtype) -> int:
    """csrc/gemm_i8.h's scale form of scales held in this dtype (torch's or numpy's)."""
    return SCALE_FORMS[str(dtype).removeprefix("torch.")]


def file_scale_dtype(kind: str) -> str:
    """The scale form a type's blocks repack into, as the dtype's name: fp16 for
    the 32-weight types (d and m are the file's own fp16 numbers), the K-quants' own
    layout (bytes) for the rest. Either reads no more scale bytes than the file holds."""
    return "float16" if BLOCK_TYPES[kind].weights == 32 else "uint8"


def tile_scale_bytes(kind: str, n_in: int, dtype: str) -> int:
    """Bytes of scales per tile of 16 rows (csrc/gemm_i8.h's i8_tile_scale_bytes)."""
    blocks, t = n_in // 32, BLOCK_TYPES[kind]
    if dtype == "uint8":  # per super-block 16 fp16 d (and 16 dmin); per block 16 a set
        return (blocks // 8) * (64 if t.has_min else 32) + blocks * scales_per_block(kind)
    return blocks * scales_per_block(kind) * (2 if dtype == "float16" else 4)


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


def threads() -> int:
    """Threads a kernel call uses: torch's setting once torch is loaded (`torch.set_num_threads`,
    `set_threads`), else OMP_NUM_THREADS, else the CPUs this process may run on (torch's own
    default on these machines). Asked per call: a later setting holds."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.get_num_threads()
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return _cpus()


def set_threads(n: int) -> None:
    """Use n threads from now on, in giraffe's kernels and in torch, loaded now or later
    (torch reads OMP_NUM_THREADS when it starts)."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


@lru_cache(maxsize=1)
def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def amx(on: bool | None = None) -> bool:
    """Whether the int8 GEMM runs products of 16 rows or more (prompts, large batches) on
    AMX tiles (csrc/gemm_amx.h): where the CPU has them (Intel Xeon since Sapphire
    Rapids) and Linux grants them, unless GIRAFFE_AMX=0. The results are the VNNI path's
    bits. `on` switches it for this process (the tests compare both paths)."""
    fn = _function("giraffe_amx")
    return fn is not None and bool(fn(-1 if on is None else int(on)))


def int8_unit() -> str:
    """Where a prompt's int8 products run here: "amx", "vnni", or "float" (int8
    activations off or not built)."""
    return "amx" if amx() else "vnni" if int8_activations() else "float"


def int8_activations() -> bool:
    """Whether inference rounds activations to int8 for the VNNI GEMM (the default).

    As llama.cpp does for every product: per block of 32, d = max|x|/127, x ~ d * q. It
    measured ~2.3x faster 512-token prompts and ~1.4x faster decoding on SmolLM2-135M
    Q4_1 (4-bit types stay two integers a byte, so decode reads no more than before),
    for +0.25% perplexity against float activations (and within 0.1% of llama.cpp's
    own). GIRAFFE_INT8_ACTIVATIONS=0 keeps float activations (equal to the dequantized
    float model to rounding). Needs AVX-512 VNNI.
    """
    if os.environ.get("GIRAFFE_INT8_ACTIVATIONS") == "0":
        return False
    return bool(int8_kinds())
