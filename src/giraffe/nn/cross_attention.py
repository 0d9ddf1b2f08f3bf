"""Cross-attention: a decoder's queries read the encoder's output (Vaswani et al. 2017, 3.2.3).

The same projections and attention as `Attention`, except that keys and values come
from a second sequence, the encoder's hidden states ("memory"), so no causal mask and no
positions apply; only the memory's padding is hidden. It does not cache the memory's
keys and values: a caller decoding many steps can pass them in `memory_kv`.
"""

from __future__ import annotations

import torch

from giraffe.nn.attention import Attention


class CrossAttention(Attention):
    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the memory (B, S, C): each (B, Hkv, S, D)."""
        B, S, _ = memory.shape
        k = self.k_proj(memory).view(B, S, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(memory).view(B, S, self.kv_heads, self.head_dim).transpose(1, 2)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None,
        mask: torch.Tensor | None,
        memory_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        keep_weights: list | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) attends over memory (B, S, C); mask (B, 1, 1, S) bool or None."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k, v = memory_kv if memory_kv is not None else self.memory_kv(memory)
        return self.combine(q, k, v, mask, False, keep_weights)
