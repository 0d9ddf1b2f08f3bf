"""Build (once) and call the packed-weight matmul kernel in `csrc/qmatmul.c` through ctypes.

The C source compiles at first use with the machine's gcc (-O3 -march=native -fopenmp)
into a per-user cache keyed by the source's hash and the compiler; a message says so
while it compiles. When no compiler is there, or `GIRAFFE_NO_KERNELS=1`, `available()`
is False and callers take the pure-torch path. This module knows buffers, not models.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "qmatmul.c"
HEADERS = [Path(__file__).parent / "csrc" / "blocks.h"]
# Block type -> the code csrc/blocks.h uses for it.
KIND_CODES = {
    "Q8_0": 0,
    "Q4_0": 1,
    "Q4_1": 2,
    "Q5_0": 3,
    "Q5_1": 4,
    "Q4_K": 5,
    "Q5_K": 6,
    "Q6_K": 7,
}
# Types with an int8-activation (VNNI) kernel.
INT8_KINDS = ("Q8_0", "Q4_0", "Q4_1")


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


# C signatures: name in the library -> argument types (every function returns int status).
_P, _I64, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
_MATMUL = [_P, _I, _I64, _I64, _P, _I64, _P, _I]
SIGNATURES = {
    "giraffe_qmatmul": _MATMUL,
    "giraffe_qmatmul_int8": _MATMUL,
    "giraffe_dequantize": [_P, _I, _I64, _I64, _P, _I],
    "giraffe_decode_layer": [_P, _I64, _I64, _P, _P, _F, _P, _P, _P, _P, _I, _I, _I,
                             _P, _P, _P, _P, _I64, _P, _I64, _I64, _P, _I],
}  # fmt: skip


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
    functions = {}
    for name, argtypes in SIGNATURES.items():
        if name == "giraffe_qmatmul_int8" and not lib.giraffe_has_int8():
            continue  # built without AVX-512 VNNI
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = ctypes.c_int, argtypes
        functions[name] = fn
    return functions


def _function(name: str):
    functions = _library()
    return None if functions is None else functions.get(name)


def available() -> bool:
    return _library() is not None


def int8_available() -> bool:
    """Whether the int8-activation kernel (AVX-512 VNNI) was built for this CPU."""
    return _function("giraffe_qmatmul_int8") is not None


def qmatmul(
    packed: torch.Tensor, kind: str, n_out: int, n_in: int, x: torch.Tensor, int8: bool = False
) -> torch.Tensor:
    """x (..., n_in) float32 @ W^T for packed W (n_out rows of blocks) -> (..., n_out).

    int8=True first rounds x to int8 per block of 32, as llama.cpp does: faster, and
    numerically llama.cpp's result rather than the float reference's.
    """
    int8 = int8 and kind in INT8_KINDS
    fn = _function("giraffe_qmatmul_int8" if int8 else "giraffe_qmatmul")
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
    """The whole-layer decode step (csrc/qmatmul.c), or None without the kernel library."""
    return _function("giraffe_decode_layer")


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
