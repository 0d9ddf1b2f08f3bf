"""T5's relative position bias (Raffel et al. 2020, section 2.1; after Shaw et al. 2018).

Instead of adding positions to the embeddings, every attention score gets a learned
scalar per head that depends only on the distance key - query, bucketed: small
distances get a bucket each, larger ones share log-spaced buckets up to `max_distance`,
beyond which all share the last. An encoder's buckets tell left from right; a causal
decoder's only count how far back. The bucketing follows Mesh TensorFlow's
`_relative_position_bucket` (as Hugging Face's T5 does) so checkpoints carry over. This
module does not know masks or which layer owns the table (T5: the first, shared).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def relative_position_bucket(
    relative: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """Bucket index in [0, num_buckets) of each distance key_position - query_position."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2  # half the buckets for keys to the right
        buckets += (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)  # a causal query never sees the future
    exact = num_buckets // 2
    # Distances >= exact fall into log-spaced buckets (clamped to avoid log(0) below).
    log_ratio = torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < exact, distance, far)


class RelativePositionBias(nn.Module):
    """A learned (buckets, heads) table -> an additive score bias (1, H, T, S)."""

    def __init__(self, n_heads: int, num_buckets: int, max_distance: int, bidirectional: bool):
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.bidirectional = bidirectional
        self.weight = nn.Parameter(torch.empty(num_buckets, n_heads))

    def forward(self, q_len: int, k_len: int, q_start: int = 0) -> torch.Tensor:
        """Bias for queries at positions q_start.. over keys at 0..k_len-1: (1, H, T, S)."""
        device = self.weight.device
        q_pos = torch.arange(q_start, q_start + q_len, device=device)[:, None]  # (T, 1)
        k_pos = torch.arange(k_len, device=device)[None, :]  # (1, S)
        bucket = relative_position_bucket(
            k_pos - q_pos, self.bidirectional, self.num_buckets, self.max_distance
        )  # (T, S)
        return self.weight[bucket].permute(2, 0, 1)[None]  # (T, S, H) -> (1, H, T, S)
