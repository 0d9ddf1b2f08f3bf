"""Call the compiled kernels (`csrc/qmatmul.c`) on torch tensors: packed products, the
int8 GEMM and its repack, dequantization, causal attention.

Building, loading and checking the library, and the facts both sides share (block codes,
the ABI version, the int8 tiles' sizes, threads per call), belong to `giraffe.quant.library`;
its names are re-exported here for this module's callers. This module knows buffers,
not models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from giraffe.quant.library import (  # noqa: F401 - re-exported: the library's names, one owner
    ABI_VERSION,
    FORM_BLOCK_BYTES,
    KIND_CODES,
    SCALE_FORMS,
    KernelMismatchError,
    _function,
    _library,
    available,
    cache_dir,
    check_library,
    decode_layer_function,
    decode_scratch_floats,
    file_scale_dtype,
    int8_bytes,
    int8_kinds,
    library_path,
    nibble_kinds,
    scale_form,
    scales_per_block,
    struct_fields,
    struct_size,
    threads,
    tile_scale_bytes,
)
from giraffe.quant.types import BLOCK_TYPES


def qmatmul(
    packed: torch.Tensor, kind: str, n_out: int, n_in: int, x: torch.Tensor
) -> torch.Tensor:
    """x (..., n_in) float32 @ W^T for packed W (n_out rows of blocks) -> (..., n_out)."""
    fn = _function("giraffe_qmatmul")
    x = x.contiguous()
    rows = x.numel() // n_in
    out = torch.empty(*x.shape[:-1], n_out, dtype=torch.float32)  # (..., n_out)
    status = fn(
        packed.data_ptr(),
        KIND_CODES[kind],
        n_out,
        n_in,
        x.data_ptr(),
        rows,
        out.data_ptr(),
        threads(),
    )
    if status != 0:
        raise ValueError(f"quantized matmul rejected its input ({kind}, {n_out}x{n_in})")
    return out


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
            threads(),
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
        return scale_form(self.dm.dtype)

    def dequantize(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The weight back as float32 (n_out, n_in), or only `rows` (any int shape -> (N, n_in)):
        the same numbers as dequantizing the ggml blocks it came from."""
        index = None if rows is None else rows.reshape(-1).to(torch.int64).contiguous()
        n = self.n_out if index is None else index.numel()
        out = torch.empty(n, self.n_in, dtype=torch.float32)  # (n, n_in)
        status = _function("giraffe_dequantize_i8")(
            self.q.data_ptr(), self.dm.data_ptr(), KIND_CODES[self.kind], int(self.nibbles),
            self.scale_form, self.n_out, self.n_in, None if index is None else index.data_ptr(), n,
            out.data_ptr(), threads(),
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
    dtype = getattr(torch, file_scale_dtype(kind))
    tile_q = blocks * FORM_BLOCK_BYTES[form]
    tile_dm = tile_scale_bytes(kind, n_in, file_scale_dtype(kind)) // dtype.itemsize  # in elements
    q = torch.empty(tiles * tile_q, dtype=torch.uint8)
    dm = torch.empty(tiles * tile_dm, dtype=dtype)
    start = 0  # in tiles
    for part in parts:
        rows = part.shape[0]
        args = (part.contiguous().data_ptr(), KIND_CODES[kind], rows, n_in)
        status = _function("giraffe_repack_i8")(
            *args, q[start * tile_q :].data_ptr(), dm[start * tile_dm :].data_ptr(),
            form, scale_form(dtype), threads(),
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
        threads(),
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
            out[b].data_ptr(), out.stride(2), out.stride(1), threads(),
        )  # fmt: skip
        if status != 0:
            return None
    return out.transpose(1, 2)  # (B, H, T, D)
