"""Quantize float32 rows into ggml's K-quant blocks (Q4_K, Q5_K, Q6_K), with numpy.

The `gguf` package reads these types but cannot write them, so giraffe does. Layouts are
ggml's (ggml-common.h; see csrc/blocks.h for a picture): 256 weights per super-block, an
fp16 super-scale (and super-min), 6-bit (Q4_K/Q5_K) or 8-bit (Q6_K) scales per
sub-block, 4/5/6-bit quants.

How the scales are chosen (ours; llama.cpp runs a weighted grid search instead): for
each super-block, two candidates - "bounded" (every sub-block's range covered, scales
rounded up: no weight clipped, each off by at most half a step, |w - w_hat| <= d*sc/2)
and "fitted" (least-squares scales, may clip outliers) - and the one with the smaller
squared error wins, so the error is never above the bounded candidate's. Knows nothing
of files or models: arrays in, bytes out.
"""

from __future__ import annotations

import numpy as np

SUPER = 256  # weights per super-block


def quantize_q4_k(w: np.ndarray) -> np.ndarray:
    """(rows, cols) float32, cols % 256 == 0 -> (rows, cols // 256 * 144) uint8."""
    return _quantize_affine(w, bits=4)


def quantize_q5_k(w: np.ndarray) -> np.ndarray:
    """(rows, cols) float32, cols % 256 == 0 -> (rows, cols // 256 * 176) uint8."""
    return _quantize_affine(w, bits=5)


def quantize_q6_k(w: np.ndarray) -> np.ndarray:
    """(rows, cols) float32, cols % 256 == 0 -> (rows, cols // 256 * 210) uint8.

    Symmetric: 16 sub-blocks of 16 weights, w = d * sc * (q - 32), q in 0..63, sc int8.
    """
    rows, blocks = _super_blocks(w)  # (N, 256)
    sub = blocks.reshape(-1, 16, 16)  # (N, 16 sub-blocks, 16)
    bounded = _symmetric_bounded(sub)
    fitted = _symmetric_params(_fit_symmetric(sub, bounded[0][:, None] * bounded[1]))
    d, sc, q = _better(sub, (bounded, fitted), _symmetric_codes)
    q = (q + 32).reshape(-1, 2, 128)  # two halves of 128 weights, 0..63
    # ql: byte l of a half holds weights l (low) and l+64 (high); byte l+32: l+32 and l+96.
    ql = np.concatenate(
        [
            q[:, :, 0:32] & 15 | (q[:, :, 64:96] & 15) << 4,
            q[:, :, 32:64] & 15 | (q[:, :, 96:128] & 15) << 4,
        ],
        axis=2,
    )  # (N, 2, 64)
    qh = (q[:, :, 0:32] >> 4) | (q[:, :, 32:64] >> 4) << 2 | (q[:, :, 64:96] >> 4) << 4
    qh = qh | (q[:, :, 96:128] >> 4) << 6  # (N, 2, 32)
    out = np.concatenate(
        [
            ql.reshape(-1, 128).astype(np.uint8),
            qh.reshape(-1, 64).astype(np.uint8),
            sc.astype(np.int8).view(np.uint8),
            d.astype(np.float16).view(np.uint8).reshape(-1, 2),
        ],
        axis=1,
    )  # (N, 210)
    return out.reshape(rows, -1)


def _quantize_affine(w: np.ndarray, bits: int) -> np.ndarray:
    """Q4_K / Q5_K: w = d*sc*q - dmin*m per sub-block of 32, q in 0..2^bits-1."""
    rows, blocks = _super_blocks(w)  # (N, 256)
    sub = blocks.reshape(-1, 8, 32)  # (N, 8, 32)
    levels = (1 << bits) - 1
    bounded = _affine_bounded(sub, levels)
    d0, dmin0, sc0, m0 = bounded
    start = (d0[:, None] * sc0, dmin0[:, None] * m0)
    fitted = _affine_params(*_fit_affine(sub, levels, *start))
    codes = lambda x, *p: _affine_codes(x, *p, levels)  # noqa: E731
    d, dmin, sc, m, q = _better(sub, (bounded, fitted), codes)
    head = np.concatenate(
        [
            d.astype(np.float16).view(np.uint8).reshape(-1, 2),
            dmin.astype(np.float16).view(np.uint8).reshape(-1, 2),
            _pack_scales_k4(sc, m),
        ],
        axis=1,
    )  # (N, 16)
    pairs = q.reshape(-1, 4, 2, 32)  # sub-blocks 2g (low nibbles) and 2g+1 (high nibbles)
    nibbles = (pairs[:, :, 0] & 15 | (pairs[:, :, 1] & 15) << 4).reshape(-1, 128)
    parts = [head]
    if bits == 5:  # bit j of qh[l] is the fifth bit of weight l of sub-block j
        fifth = (q >> 4) & 1  # (N, 8, 32)
        parts.append((fifth << np.arange(8)[None, :, None]).sum(axis=1))  # (N, 32)
    parts.append(nibbles)
    return np.concatenate(parts, axis=1).astype(np.uint8).reshape(rows, -1)


# ---- choosing scales ----
# Two candidates per super-block: "bounded" covers every sub-block's range with scales
# rounded up (no clipping, error <= half a step); "fitted" refines each sub-block's scale
# (and offset) by alternating rounding and least squares, then rounds the 6-bit scales to
# nearest, and may clip a few outliers. Each super-block keeps whichever reconstructs its
# 256 weights with the smaller squared error, so the result is never worse than bounded.


def _better(sub: np.ndarray, candidates, codes) -> tuple:
    """Per super-block, the candidate params (+ codes) with the lower squared error."""
    results = [(*params, *codes(sub, *params)) for params in candidates]
    errors = [((sub - r[-1]) ** 2).sum(axis=(1, 2)) for r in results]  # (N,) each
    pick = errors[1] < errors[0]
    chosen = []
    for a, b in zip(results[0][:-1], results[1][:-1], strict=True):
        mask = pick.reshape(-1, *([1] * (a.ndim - 1)))
        chosen.append(np.where(mask, b, a))
    return tuple(chosen)


def _affine_bounded(sub: np.ndarray, levels: int):
    low = np.minimum(sub.min(axis=2), 0.0)  # (N, 8): ggml's offset only moves down
    high = sub.max(axis=2)
    dmin = _fp16_at_least((-low).max(axis=1) / 63.0)  # (N,)
    m = _ceil_div(-low, dmin[:, None], 63)  # (N, 8): offset -dmin*m <= every weight
    step = (high + dmin[:, None] * m) / levels  # (N, 8): top of the range reaches the max
    d = _fp16_at_least(step.max(axis=1) / 63.0)  # (N,)
    return d, dmin, _ceil_div(step, d[:, None], 63), m


def _fit_affine(sub, levels, scale, offset, rounds: int = 6):
    """Least-squares scale and offset per sub-block: x ~ scale*q - offset, offset >= 0."""
    n = sub.shape[2]
    for _ in range(rounds):
        q = _round_div(sub + offset[:, :, None], scale[:, :, None], 0, levels).astype(np.float64)
        sq, sx = q.sum(axis=2), sub.sum(axis=2)
        sqq, sqx = (q * q).sum(axis=2), (q * sub).sum(axis=2)
        det = n * sqq - sq * sq
        new_scale = np.where(det > 0, (n * sqx - sq * sx) / np.where(det > 0, det, 1), 0)
        new_offset = -(sx - new_scale * sq) / n
        # An offset must be >= 0 (the format stores it unsigned): refit the scale alone.
        alone = np.where(sqq > 0, sqx / np.where(sqq > 0, sqq, 1), 0)
        new_scale = np.where(new_offset < 0, alone, new_scale)
        new_offset = np.maximum(new_offset, 0)
        ok = new_scale > 0
        scale, offset = np.where(ok, new_scale, scale), np.where(ok, new_offset, offset)
    return scale, offset


def _affine_params(scale, offset):
    """Real-valued per-sub-block scales/offsets -> fp16 super-scales and 6-bit codes."""
    d = _fp16(scale.max(axis=1) / 63.0)
    dmin = _fp16(offset.max(axis=1) / 63.0)
    return d, dmin, _nearest(scale, d[:, None], 63), _nearest(offset, dmin[:, None], 63)


def _affine_codes(sub, d, dmin, sc, m, levels):
    scale = (d[:, None] * sc)[:, :, None]  # (N, 8, 1)
    offset = (dmin[:, None] * m)[:, :, None]
    q = _round_div(sub + offset, scale, 0, levels)  # (N, 8, 32)
    return q, scale * q - offset


def _symmetric_bounded(sub: np.ndarray):
    step = np.abs(sub).max(axis=2) / 31.0  # (N, 16): q - 32 stays in -31..31
    d = _fp16_at_least(step.max(axis=1) / 127.0)  # (N,)
    return d, _ceil_div(step, d[:, None], 127)


def _fit_symmetric(sub, scale, rounds: int = 6):
    for _ in range(rounds):
        q = _round_div(sub, scale[:, :, None], -32, 31).astype(np.float64)
        sqq, sqx = (q * q).sum(axis=2), (q * sub).sum(axis=2)
        new = np.where(sqq > 0, sqx / np.where(sqq > 0, sqq, 1), 0)
        scale = np.where(new > 0, new, scale)
    return scale


def _symmetric_params(scale):
    d = _fp16(scale.max(axis=1) / 127.0)
    return d, _nearest(scale, d[:, None], 127)


def _symmetric_codes(sub, d, sc):
    scale = (d[:, None] * sc)[:, :, None]  # (N, 16, 1)
    q = _round_div(sub, scale, -32, 31)
    return q, scale * q


def _pack_scales_k4(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins -> ggml's 12 bytes (inverse of get_scale_min_k4)."""
    out = np.zeros((sc.shape[0], 12), dtype=np.int64)
    out[:, 0:4] = sc[:, 0:4] | (sc[:, 4:8] >> 4) << 6
    out[:, 4:8] = m[:, 0:4] | (m[:, 4:8] >> 4) << 6
    out[:, 8:12] = (sc[:, 4:8] & 15) | (m[:, 4:8] & 15) << 4
    return out


def _super_blocks(w: np.ndarray) -> tuple[int, np.ndarray]:
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2 or w.shape[1] % SUPER:
        raise ValueError(
            f"K-quants need rows of a multiple of {SUPER} weights, got shape {w.shape}"
        )
    return w.shape[0], w.reshape(-1, SUPER).astype(np.float64)


def _fp16_at_least(x: np.ndarray) -> np.ndarray:
    """x rounded to fp16, never below x (so scales derived from it never clip)."""
    h = x.astype(np.float16)
    low = h.astype(np.float64) < x
    h[low] = np.nextafter(h[low], np.float16(np.inf))
    return h.astype(np.float64)


def _fp16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float64)


def _nearest(x: np.ndarray, d: np.ndarray, top: int) -> np.ndarray:
    safe = np.where(d > 0, d, 1.0)
    return np.clip(np.rint(x / safe), 0, top).astype(np.int64)


def _ceil_div(x: np.ndarray, d: np.ndarray, top: int) -> np.ndarray:
    safe = np.where(d > 0, d, 1.0)
    return np.clip(np.ceil(x / safe - 1e-9), 0, top).astype(np.int64)


def _round_div(x: np.ndarray, scale: np.ndarray, lo: int, hi: int) -> np.ndarray:
    safe = np.where(scale > 0, scale, 1.0)
    q = np.where(scale > 0, np.rint(x / safe), 0.0)
    return np.clip(q, lo, hi).astype(np.int64)
