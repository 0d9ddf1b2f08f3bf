"""A key/value cache with one slot row per running sequence, each at its own length.

Continuous batching (Yu et al. 2022, "Orca") lets requests join and leave a running
batch between decode steps, so unlike `KVCache` the rows do not share one length.
`SlotCache` keeps (L, B_max, H_kv, S, D) buffers and a length per row; the live rows
are always rows 0..n-1 (a leaving row is replaced by the last one), so a batched step
reads a plain view of the buffer, never a gathered copy. S grows by doubling up to
`max_len` as the longest row needs it, so memory follows use, not the worst case
(16 rows x 4096 tokens of SmolLM2 would be 3 GB up front).

Two views speak the `KVCache` protocol (`length`, `batch`, `max_len`, `k`, `v`,
`write`, `advance`) to the model:
- `RowView(cache, row)`: one row alone (prefill, or a batch of one), contiguous per
  layer, so the compiled one-token step can use it.
- `BatchView(cache, n)`: rows 0..n-1 for one token each; every row writes at its own
  length. The caller passes the attention mask (`slot_mask`), since the causal mask the
  model would build assumes one shared length.
It does not know tokens, positions or requests: the scheduler maps those to rows.
"""

from __future__ import annotations

import torch

INITIAL_SLOTS = 256


class SlotCache:
    def __init__(
        self,
        n_layers: int,
        max_batch: int,
        kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        # zeros, not empty: masked slots get weight 0, and 0 * NaN garbage would be NaN.
        shape = (n_layers, max_batch, kv_heads, min(max_len, INITIAL_SLOTS), head_dim)
        self.k = torch.zeros(shape, dtype=dtype)  # (L, B, H, S, D)
        self.v = torch.zeros(shape, dtype=dtype)
        self.max_len = max_len
        self.lengths = torch.zeros(max_batch, dtype=torch.long)  # filled slots per row

    @property
    def allocated(self) -> int:
        return self.k.shape[3]

    def reserve(self, slots: int) -> None:
        """Make room for `slots` per row (call before taking views: growing moves the buffers)."""
        _check_room(slots, self.max_len)
        if slots <= self.allocated:
            return
        new = min(self.max_len, max(slots, 2 * self.allocated))
        for name in ("k", "v"):
            old = getattr(self, name)
            grown = old.new_zeros(*old.shape[:3], new, old.shape[4])
            grown[:, :, :, : old.shape[3]] = old
            setattr(self, name, grown)

    @property
    def max_batch(self) -> int:
        return self.k.shape[1]

    def clear(self, row: int) -> None:
        """Make a row empty (its old keys are masked out by its length of 0)."""
        self.lengths[row] = 0

    def move(self, src: int, dst: int) -> None:
        """Copy row src into row dst (compaction when the row at dst left)."""
        n = int(self.lengths[src])
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst] = n
        self.lengths[src] = 0

    def slot_mask(self, n: int, window: int | None = None) -> torch.Tensor:
        """(n, 1, 1, S) bool: which slots the next token of rows 0..n-1 may attend to.

        Call before the step: the new token goes to slot `lengths[row]` and sees it too.
        """
        lengths = self.lengths[:n, None]  # (n, 1)
        S = int(lengths.max()) + 1
        slots = torch.arange(S)[None]  # (1, S)
        mask = slots <= lengths
        if window is not None:
            mask &= slots > lengths - window  # sliding window: the last `window` tokens
        return mask[:, None, None, :]

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


class RowView:
    """One row of a SlotCache, as a batch-1 `KVCache` with room for `new_tokens` more."""

    def __init__(self, cache: SlotCache, row: int, new_tokens: int) -> None:
        cache.reserve(int(cache.lengths[row]) + new_tokens)
        self.cache, self.row = cache, row
        self.k = cache.k[:, row : row + 1]  # (L, 1, H, S, D); k[i, 0] is contiguous
        self.v = cache.v[:, row : row + 1]
        self.max_len = cache.allocated  # the row stride the compiled step must use

    batch = 1

    @property
    def length(self) -> int:
        return int(self.cache.lengths[self.row])

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (1, H, T, D) after this row's filled slots; return its keys/values."""
        start = self.length
        end = start + k.shape[2]
        _check_room(end, self.max_len)
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (1, H, S, D)

    def advance(self, n: int) -> None:
        self.cache.lengths[self.row] += n


class BatchView:
    """Rows 0..n-1 of a SlotCache for a one-token step, each writing at its own length."""

    def __init__(self, cache: SlotCache, n: int) -> None:
        self.slots = cache.lengths[:n].clone()  # where each row's new token goes
        self.span = int(self.slots.max()) + 1  # S: keys up to the longest row
        cache.reserve(self.span)
        self.cache, self.batch = cache, n
        self.k, self.v = cache.k[:, :n], cache.v[:, :n]
        self.max_len = cache.allocated
        self.rows = torch.arange(n)

    @property
    def length(self) -> int:
        return self.span - 1  # the model's notion of "start"; unused with an explicit mask

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (n, H, 1, D) at each row's slot; return (n, H, S, D) keys/values."""
        if k.shape[2] != 1:
            raise ValueError("a batched slot step takes exactly one new token per row")
        self.k[layer][self.rows, :, self.slots] = k[:, :, 0]  # (n, H, D) at (row, slot)
        self.v[layer][self.rows, :, self.slots] = v[:, :, 0]
        return self.k[layer, :, :, : self.span], self.v[layer, :, :, : self.span]

    def advance(self, n: int) -> None:
        self.cache.lengths[: self.batch] += n


def _check_room(end: int, max_len: int) -> None:
    if end > max_len:
        raise ValueError(
            f"KV cache full: {end} slots needed, room for {max_len}; "
            "use a longer context or a shorter prompt"
        )
