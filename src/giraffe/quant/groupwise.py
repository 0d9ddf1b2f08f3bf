"""Group-wise int8/int4 weights (giraffe's own folder format) and the layer that runs them.

Each row of a weight matrix is cut into groups of `group_size` weights; each group keeps
a scale (and, asymmetric, its minimum), stored as float16:
  symmetric:  w ~ scale * q,          q in -127..127 (int8) or -8..7 (int4), scale = max|w| / 127 (or 7)
  asymmetric: w ~ scale * q + min,    q in 0..255 (int8) or 0..15 (int4),    scale = (max - min) / 255 (or 15)
Either way |w - w~| <= scale / 2 (rounding to the nearest step; the scale is rounded to
float16 first, so the bound holds for what is stored). int4 packs two weights a byte
(even column in the low nibble). Unlike ggml's fixed 32-weight blocks, any group size
that divides the row works; multiples of 32 run on the int8 GEMM (csrc/gemm_i8.h),
others on the reference path (dequantize, then a float matmul). Knows tensors, not files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from giraffe.quant import kernels
from giraffe.quant.linear import int8_activations

QUANT_METHOD = "giraffe-groupwise"  # the tag in config.json's quantization_config
PART_NAMES = ("q", "scale", "min")  # tensor suffixes after the weight's own name


@dataclass(frozen=True)
class GroupConfig:
    bits: int = 8  # 8 or 4
    group_size: int = 32
    symmetric: bool = True

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"group-wise quantization stores 8 or 4 bits, not {self.bits}")
        if self.group_size < 2:
            raise ValueError(f"group size must be at least 2, got {self.group_size}")

    @property
    def levels(self) -> int:
        return 2**self.bits - 1

    def check_row(self, n_in: int, name: str = "a weight") -> None:
        if n_in % self.group_size or (self.bits == 4 and n_in % 2):
            divisors = [g for g in (16, 32, 64, 128, 256) if n_in % g == 0]
            raise ValueError(
                f"group size {self.group_size} does not divide the rows of {name} "
                f"({n_in} weights); choose one that does, e.g. {divisors or [n_in]}"
            )

    def to_json(self) -> dict:
        return {
            "quant_method": QUANT_METHOD,
            "bits": self.bits,
            "group_size": self.group_size,
            "symmetric": self.symmetric,
        }

    @staticmethod
    def from_json(raw: dict) -> GroupConfig:
        if raw.get("quant_method") != QUANT_METHOD:
            raise ValueError(
                f"quantization_config method {raw.get('quant_method')!r} is not one giraffe "
                f"reads (it writes and reads {QUANT_METHOD!r}, and GGUF files)"
            )
        return GroupConfig(int(raw["bits"]), int(raw["group_size"]), bool(raw["symmetric"]))


def quantize_groups(w: torch.Tensor, cfg: GroupConfig) -> dict[str, torch.Tensor]:
    """(out, in) float -> {"q", "scale"[, "min"]}: integers and float16 (out, in / group)."""
    n_out, n_in = w.shape
    cfg.check_row(n_in)
    groups = w.float().reshape(n_out, n_in // cfg.group_size, cfg.group_size)  # (O, G, g)
    if cfg.symmetric:
        top = cfg.levels // 2  # 127 or 7
        scale = (groups.abs().amax(-1) / top).half()
        s = scale.float()[..., None]
        q = torch.where(s > 0, torch.round(groups / s), torch.zeros_like(groups))
        q = q.clamp(-top, top)
        parts = {"scale": scale}
    else:
        low, high = groups.amin(-1), groups.amax(-1)
        scale, minimum = ((high - low) / cfg.levels).half(), low.half()
        s, m = scale.float()[..., None], minimum.float()[..., None]
        q = torch.where(s > 0, torch.round((groups - m) / s), torch.zeros_like(groups))
        q = q.clamp(0, cfg.levels)
        parts = {"scale": scale, "min": minimum}
    q = q.reshape(n_out, n_in).to(torch.int16)
    parts["q"] = _pack(q, cfg)
    return parts


def dequantize_groups(parts: dict[str, torch.Tensor], cfg: GroupConfig) -> torch.Tensor:
    """The stored weights back in float32 (out, in): the reference every path must equal."""
    q = unpack(parts["q"], cfg).float()  # (O, I)
    n_out, n_in = q.shape
    groups = q.reshape(n_out, n_in // cfg.group_size, cfg.group_size)
    w = groups * parts["scale"].float()[..., None]
    if "min" in parts:
        w = w + parts["min"].float()[..., None]
    return w.reshape(n_out, n_in)


def _pack(q: torch.Tensor, cfg: GroupConfig) -> torch.Tensor:
    if cfg.bits == 8:
        return q.to(torch.int8) if cfg.symmetric else q.to(torch.uint8)
    nibbles = (q + (8 if cfg.symmetric else 0)).to(torch.uint8)  # 0..15
    return nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)  # (O, I / 2)


def unpack(stored: torch.Tensor, cfg: GroupConfig) -> torch.Tensor:
    """Stored q -> int16 (out, in) in the ranges the module docstring gives."""
    if cfg.bits == 8:
        return stored.to(torch.int16)
    low, high = (stored & 0x0F).to(torch.int16), (stored >> 4).to(torch.int16)
    q = torch.stack([low, high], dim=-1).reshape(stored.shape[0], -1)  # (O, I)
    return q - 8 if cfg.symmetric else q


class GroupQuantLinear(nn.Module):
    """A linear layer over group-wise int8/int4 weights: int8 GEMM or dequantize-then-matmul."""

    def __init__(self, parts: dict[str, torch.Tensor], cfg: GroupConfig, bias=None) -> None:
        super().__init__()
        self.cfg = cfg
        for name in PART_NAMES:
            if name in parts:
                self.register_buffer(name, parts[name].contiguous(), persistent=False)
        self.out_features = parts["q"].shape[0]
        self.in_features = parts["scale"].shape[1] * cfg.group_size
        cfg.check_row(self.in_features)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self._int8 = None

    def parts(self) -> dict[str, torch.Tensor]:
        """The stored integers and scales; empty once compacted (the tiles hold them)."""
        return {n: getattr(self, n) for n in PART_NAMES if getattr(self, n, None) is not None}

    def dequantized_weight(self) -> torch.Tensor:
        if self.compacted:  # the tiles give the stored numbers back exactly (tested)
            return self._int8.dequantize()
        return dequantize_groups(self.parts(), self.cfg)

    @property
    def compacted(self) -> bool:
        return self.scale is None

    def compact(self) -> bool:
        """Keep only the int8 tiles (drop the stored parts) when inference will use them, as
        `QuantLinear.compact` does: not with float activations chosen, nor where the groups
        cannot become tiles. Returns whether it did."""
        if self.compacted:
            return True
        if not int8_activations() or self.int8_weights() is None:
            return False
        for name in PART_NAMES:
            if hasattr(self, name):
                setattr(self, name, None)
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = x.dtype == torch.float32 and not torch.is_grad_enabled()
        if fast and int8_activations() and self.int8_weights() is not None:
            y = kernels.gemm_int8(self._int8, x)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.dequantized_weight().to(x.dtype), self.bias)

    def int8_weights(self) -> kernels.Int8Weights | None:
        """The weights in the int8 GEMM's tiles (made at first use); None if the groups
        are not whole 32-weight blocks or the GEMM is not built here."""
        if self.cfg.group_size % 32 or not kernels.int8_kinds():
            return None
        if self._int8 is None:
            self._int8 = _to_int8_tiles(self.parts(), self.cfg, self.out_features)
        return self._int8

    def extra_repr(self) -> str:
        kind = "symmetric" if self.cfg.symmetric else "asymmetric"
        return (
            f"{self.in_features} -> {self.out_features}, int{self.cfg.bits} {kind}, "
            f"groups of {self.cfg.group_size}"
        )


TILE_CHUNK_ROWS = 2048  # rows rewritten at a time: the int16 and permuted copies stay small


def _to_int8_tiles(parts, cfg: GroupConfig, n_out: int) -> kernels.Int8Weights:
    """Rewrite w = s*q (+ min) as the GEMM's w = d*(u + offset) + m with u unsigned bytes.

    The GEMM knows three such forms by a ggml type's name: offset -128 ("Q8_0"), offset -8
    ("Q4_0"), or a minimum per block ("Q4_1"). A group of 64 is two blocks of 32 with
    the same scale. The scales stay float16 (each is one exactly). Rows go
    `TILE_CHUNK_ROWS` at a time into the finished buffers: a 49k-row token table
    rewritten whole took ~100 MB of temporaries.
    """
    if not cfg.symmetric:
        kind = "Q4_1"
    else:
        kind = "Q8_0" if cfg.bits == 8 else "Q4_0"
    n_in = parts["scale"].shape[1] * cfg.group_size
    tiles, blocks, nibbles = -(-n_out // 16), n_in // 32, cfg.bits == 4
    n_scales = 1 if kernels.scales_per_block(kind) == 16 else 2  # mins only where used
    tile_q, tile_dm = blocks * 512 // (2 if nibbles else 1), blocks * 16 * n_scales
    q = torch.empty(tiles * tile_q, dtype=torch.uint8)
    dm = torch.empty(tiles * tile_dm, dtype=torch.float16)
    for start in range(0, n_out, TILE_CHUNK_ROWS):
        chunk = {k: v[start : start + TILE_CHUNK_ROWS] for k, v in parts.items()}
        t0, t1 = start // 16, -(-min(start + TILE_CHUNK_ROWS, n_out) // 16)
        q[t0 * tile_q : t1 * tile_q], dm[t0 * tile_dm : t1 * tile_dm] = _tile_rows(
            chunk, cfg, kind, t1 - t0
        )
    return kernels.Int8Weights(q, dm, kind, n_out, n_in, int(nibbles))


def _tile_rows(parts, cfg: GroupConfig, kind: str, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Some rows' integers and scales in tile order: ((tiles * tile bytes,) uint8,
    (tiles * tile scales,) float16); the last tile padded with zero rows."""
    q = unpack(parts["q"], cfg)  # (O, I) int16
    offset = 8 if cfg.symmetric and cfg.bits == 4 else 128 if cfg.symmetric else 0
    per_block = cfg.group_size // 32
    scales = [parts["scale"]] + ([parts["min"]] if kind == "Q4_1" else [])
    scales = [s.repeat_interleave(per_block, dim=1) for s in scales]  # (O, I / 32) each
    pad = tiles * 16 - q.shape[0]
    u = F.pad((q + offset).to(torch.uint8), (0, 0, 0, pad))
    scales = [F.pad(s, (0, 0, 0, pad)) for s in scales]
    blocks = q.shape[1] // 32
    # (tiles, 16 rows, blocks, 8 groups, 4) -> (tiles, blocks, groups, 16 rows, 4)
    q_tiles = u.reshape(tiles, 16, blocks, 8, 4).permute(0, 2, 3, 1, 4)
    if cfg.bits == 4:  # groups 2p and 2p+1 share bytes: low and high halves
        q_tiles = q_tiles[:, :, 0::2] | (q_tiles[:, :, 1::2] << 4)
    dm = torch.stack([s.reshape(tiles, 16, blocks) for s in scales], dim=2)
    dm = dm.permute(0, 3, 2, 1)  # (tiles, blocks, [d x16, (m x16)])
    return q_tiles.flatten(), dm.flatten()


class GroupQuantEmbedding(nn.Module):
    """A token table kept group-wise; `project` is the tied output head (h @ E^T)."""

    def __init__(self, parts: dict[str, torch.Tensor], cfg: GroupConfig) -> None:
        super().__init__()
        self.table = GroupQuantLinear(parts, cfg)
        self.num_embeddings, self.embedding_dim = self.table.out_features, self.table.in_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.table.compacted:  # a tied head: rows from the int8 tiles
            values = self.table._int8.dequantize(ids)  # (N, C)
            return values.reshape(*ids.shape, self.embedding_dim)
        rows = {k: v[ids.flatten()] for k, v in self.table.parts().items()}  # only those asked for
        values = dequantize_groups(rows, self.table.cfg)  # (N, C)
        return values.reshape(*ids.shape, self.embedding_dim)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return self.table(h)
