"""A preallocated key/value cache: one (B, H_kv, S_max, D) buffer per layer for k and v.

Prefill writes T slots at once, each decode step one more; nothing is reallocated while
generating. The cache knows slots, not token positions: with left padding a row's
position differs from its slot, which the caller tracks. It does not know about
attention masks either; the model builds those.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self,
        n_layers: int,
        batch: int,
        kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (n_layers, batch, kv_heads, max_len, head_dim)  # (L, B, H, S, D)
        self.k = torch.zeros(shape, dtype=dtype)
        self.v = torch.zeros(shape, dtype=dtype)
        self.max_len = max_len
        self.length = 0  # slots filled by completed forward passes

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    def write(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, D) after the filled slots; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(
                f"KV cache full: {end} slots needed, {self.max_len} allocated; "
                "allocate a larger cache or shorten the prompt"
            )
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (B, H, S, D)

    def advance(self, n: int) -> None:
        """Mark n more slots as filled; the model calls this once per forward pass."""
        self.length += n

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep/duplicate batch rows (beam search): row i becomes old row rows[i]."""
        self.k = self.k.index_select(1, rows)
        self.v = self.v.index_select(1, rows)

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
