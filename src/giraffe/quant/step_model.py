"""A decoder that is only its compiled step: ids in, next-token logits out, no torch.

`StepModel` answers what the generation core asks of a model (`config`, `new_cache`,
`next_token_logits`) with one `CompiledStep` call a step (lookup, every layer, the head
and the argmax in C) over an `ArrayCache` - the torch `KVCache`'s layout in numpy. It runs
one sequence at a time with no padding (a prompt, then a token a step): the one case its
step takes whole. `giraffe.lm` hands it single-sequence generation and builds the torch
model for everything else (batches, beams, scores, training, inspection). It knows the
step and the cache, not files, tokenizers or sampling.
"""

from __future__ import annotations

import numpy as np

from giraffe.quant.compiled_step import CacheSpan, CompiledStep, NewRows, aligned


class ArrayCache:
    """Keys and values (L, B, H, S, D) float32, as `giraffe.nn.kv_cache.KVCache` lays them
    out; `length` slots filled."""

    def __init__(self, n_layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int):
        shape = (n_layers, batch, kv_heads, max_len, head_dim)  # (L, B, H, S, D)
        self.k = aligned(shape, np.float32, zeros=True)  # pages come as they are written
        self.v = aligned(shape, np.float32, zeros=True)
        self.max_len, self.length = max_len, 0

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    def advance(self, n: int) -> None:
        self.length += n

    def span(self, shared: bool) -> CacheSpan:
        """Where the step writes: strides in floats; a prompt's rows share one row (0)."""
        floats = [s // 4 for s in self.k.strides]
        row = 0 if shared else floats[1]
        return CacheSpan(self.k.ctypes.data, self.v.ctypes.data, floats[0], row, self.max_len)


class StepModel:
    def __init__(self, cfg, step: CompiledStep) -> None:
        self.config, self.step = cfg, step

    def new_cache(self, batch: int, max_len: int) -> ArrayCache:
        cfg = self.config
        return ArrayCache(cfg.n_layers, batch, cfg.kv_heads, max_len, cfg.dim_per_head)

    def next_token_logits(
        self, ids, *, cache: ArrayCache, positions=None, key_mask=None, attn_mask=None
    ) -> tuple[np.ndarray, list[int]]:
        """(logits (1, V) float32 of the last new token, [its first maximal logit]) for ids
        (1, T) of one sequence written at the cache's next T slots; positions (1, T), by
        default the slots. The cache advances by T."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)  # (1, T)
        B, T = ids.shape
        if B != 1 or cache.batch != 1 or key_mask is not None or attn_mask is not None:
            raise ValueError(
                "a StepModel runs one sequence with no padding mask; batches run on the "
                "torch model (LanguageModel.model)"
            )
        if cache.length + T > cache.max_len:
            raise ValueError(
                f"KV cache full: {cache.length + T} slots needed, {cache.max_len} allocated; "
                "allocate a larger cache or shorten the prompt"
            )
        slots = np.arange(cache.length, cache.length + T, dtype=np.int64)  # (T,)
        at = slots if positions is None else np.ascontiguousarray(positions, np.int64).reshape(-1)
        step, C = self.step, self.config.hidden_size
        with step.lock:
            x = step.reused("x", T * C, np.float32).reshape(T, C)  # (T, C), filled by the lookup
            rows = NewRows(x, slots, at, ids.reshape(-1), shared=T > 1)
            logits, argmax = step.run_rows(rows, cache.span(T > 1), head_rows=1)
        cache.advance(T)
        return logits, argmax
