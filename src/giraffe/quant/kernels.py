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
KIND_CODES = {"Q8_0": 0, "Q4_0": 1, "Q4_1": 2}


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "giraffe" / "kernels"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def _build(cc: str) -> Path:
    source = SOURCE.read_bytes()
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


@lru_cache(maxsize=1)
def _library():
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
    argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]  # fmt: skip
    functions = {"float": lib.giraffe_qmatmul}
    if lib.giraffe_has_int8():
        functions["int8"] = lib.giraffe_qmatmul_int8
    for fn in functions.values():
        fn.restype, fn.argtypes = ctypes.c_int, argtypes
    return functions


def available() -> bool:
    return _library() is not None


def int8_available() -> bool:
    """Whether the int8-activation kernel (AVX-512 VNNI) was built for this CPU."""
    return available() and "int8" in _library()


def qmatmul(
    packed: torch.Tensor, kind: str, n_out: int, n_in: int, x: torch.Tensor, int8: bool = False
) -> torch.Tensor:
    """x (..., n_in) float32 @ W^T for packed W (n_out rows of blocks) -> (..., n_out).

    int8=True first rounds x to int8 per block of 32, as llama.cpp does: faster, and
    numerically llama.cpp's result rather than the float reference's.
    """
    fn = _library()["int8" if int8 else "float"]
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


@lru_cache(maxsize=1)
def decode_layer_function():
    """The whole-layer decode step (csrc/qmatmul.c), or None without the kernel library."""
    if _library() is None:
        return None
    fn = ctypes.CDLL(str(_build(_compiler()))).giraffe_decode_layer
    fn.restype = ctypes.c_int
    p, i64, i = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    fn.argtypes = [
        p,
        i64,
        p,
        p,
        ctypes.c_float,
        p,
        p,
        p,
        p,
        i,
        i,
        i,
        p,
        p,
        p,
        p,
        i64,
        i64,
        i64,
        p,
        i,
    ]
    return fn


@lru_cache(maxsize=1)
def _dequantize_function():
    if _library() is None:
        return None
    fn = ctypes.CDLL(str(_build(_compiler()))).giraffe_dequantize
    fn.restype = ctypes.c_int
    fn.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_int,
    ]
    return fn


def dequantize(
    packed: torch.Tensor, kind: str, n_out: int, n_in: int, out: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Packed blocks -> float32 (n_out, n_in) in C (into `out` if given); None without the kernel."""
    fn = _dequantize_function()
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
