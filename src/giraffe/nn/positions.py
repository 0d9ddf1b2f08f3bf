"""Rotary position embeddings (RoPE, Su et al. 2021, arXiv:2104.09864).

Uses the "rotate half" layout of Hugging Face Llama: dimension i pairs with i + D/2.
Partial rotary (GPT-NeoX): the tables cover only the first dims of each head, which
`apply_rotary` rotates while the rest pass through unchanged.
GGUF files store q/k weights permuted for llama.cpp's adjacent-pair layout; undoing
that is the loader's job, not this module's. Learned absolute positions (GPT-2) are a
plain `nn.Embedding` in the model and need nothing here.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from giraffe.config import ConfigError


def rope_inverse_frequencies(
    head_dim: int, theta: float, scaling: dict | None, factors: tuple[float, ...] | None = None
) -> torch.Tensor:
    """inv_freq[i] = theta^(-2i/D), optionally rescaled for long-context variants.

    factors: per-frequency divisors applied last (llama.cpp's `rope_freqs` tensor, which
    is how its converter stores Llama 3.1's scaling).
    """
    inv_freq = _scaled(head_dim, theta, scaling)
    if factors is not None:
        inv_freq = inv_freq / torch.tensor(factors, dtype=torch.float32, device="cpu")
    return inv_freq


def _scaled(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    # Always on the CPU: tables are cheap, and on "meta" the math would import torch._dynamo.
    steps = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float()
    inv_freq = 1.0 / (theta ** (steps / head_dim))
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        return _llama3_scaling(inv_freq, scaling)
    raise ConfigError(
        f"rope_scaling type {kind!r} is not supported (giraffe knows default, linear, llama3)"
    )


def _llama3_scaling(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    """Llama 3.1's frequency-dependent scaling: long wavelengths slowed, short kept."""
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class Rotary(nn.Module):
    """Produces (cos, sin) tables for given positions; holds no learned weights."""

    def __init__(
        self,
        head_dim: int,
        theta: float,
        scaling: dict | None = None,
        factors: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        inv_freq = rope_inverse_frequencies(head_dim, theta, scaling, factors)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, T) -> (cos, signed sin), each (B, 1, T, D), broadcast over heads."""
        freqs = positions[..., None].float() * self.inv_freq  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D)
        sin, half = emb.sin(), emb.shape[-1] // 2
        # rotate_half(x) * sin == roll(x) * sin with its first half negated (see apply_rotary)
        signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        return emb.cos()[:, None], signed_sin[:, None]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1): the textbook form, kept for reading and tests."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, written as one roll: fewer ops per layer, same numbers.

    x: (B, H, T, D); cos, signed_sin: (B, 1, T, R) from `Rotary`, R <= D: with R < D
    (partial rotary) the first R dims of each head rotate and the others pass through.
    """
    rot = cos.shape[-1]
    if rot < x.shape[-1]:
        return torch.cat((apply_rotary(x[..., :rot], cos, signed_sin), x[..., rot:]), dim=-1)
    return x * cos + x.roll(rot // 2, dims=-1) * signed_sin
