"""The decoding loop: prefill the prompt(s) once, then one token per step with the KV cache.

A `DecodeSession` runs a batch of prompts of different lengths (left padding, per-row
positions, padding masked out of attention), applies the samplers, tracks what each row
has produced, and yields one `TokenEvent` per live row per step. It sees the model only
as "ids (+ cache, positions, key mask) -> next-token logits" (`next_token_logits`, which
may bring each row's argmax: a greedy row then needs no array op), all numpy: it does
not import torch, and the model runs its step without gradients itself. It sees token
ids only: stop strings, text and chat belong to the caller (`giraffe.lm`), which may
end a row early with `finish(row)`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from giraffe.forks import note_if_forked
from giraffe.generate.params import DecodingConfig, GenerationError
from giraffe.generate.sequence import SequenceState, TokenEvent, check_prompts, step_many

__all__ = ["DecodeSession", "GenerationError", "TokenEvent", "check_prompts"]


class DecodeSession:
    def __init__(
        self,
        model,
        prompts: Sequence[Sequence[int]],
        cfg: DecodingConfig,
        stop_ids: Sequence[int] = (),
        seeds: Sequence[int | None] | None = None,
        table=None,
    ) -> None:
        """table: a `constraint.TokenTable`, needed when cfg has a json_schema or grammar."""
        note_if_forked()
        context = model.config.max_position_embeddings
        check_prompts(prompts, context)
        self.model, self.cfg = model, cfg
        self.B = len(prompts)
        self.prompt_len = max(len(p) for p in prompts)
        # Never run past the position table / trained context: the last rows finish "length".
        self.budget = min(cfg.max_new_tokens, context - self.prompt_len)
        seeds = list(seeds) if seeds is not None else [None] * self.B
        V = model.config.vocab_size
        self.rows = [
            SequenceState(p, cfg, V, self.budget, stop_ids, seed, row, table)
            for row, (p, seed) in enumerate(zip(prompts, seeds, strict=True))
        ]
        self._setup(prompts)

    def _setup(self, prompts) -> None:
        B, L = self.B, self.prompt_len
        self.ids = np.zeros((B, L), dtype=np.int64)
        self.key_mask = np.zeros((B, L + self.budget), dtype=bool)  # (B, S)
        for i, p in enumerate(prompts):
            self.ids[i, L - len(p) :] = p
            self.key_mask[i, L - len(p) :] = True  # generated slots are valid too
        self.padded = any(len(p) != L for p in prompts)
        pad = L - np.array([len(p) for p in prompts], dtype=np.int64)[:, None]  # (B, 1)
        self.positions = np.maximum(np.arange(L, dtype=np.int64)[None] - pad, 0)  # (B, L)

    def finish(self, row: int) -> None:
        """End a row early (e.g. the caller saw a stop string)."""
        self.rows[row].finished = True

    def _forward(self, ids: np.ndarray, positions: np.ndarray) -> tuple:
        """((B, V) float32 logits of the last position, argmax list or None)"""
        end = self.cache.length + ids.shape[1]
        key_mask = self.key_mask[:, :end] if self.padded else None
        return self.model.next_token_logits(
            ids, cache=self.cache, positions=positions, key_mask=key_mask
        )

    def __iter__(self) -> Iterator[list[TokenEvent]]:
        if self.budget <= 0:
            return
        self.cache = self.model.new_cache(self.B, self.prompt_len + self.budget)
        logits = self._forward(self.ids, self.positions)
        # each step's tokens and positions (B, 1), rewritten in place and read by the model
        # without a copy: a fresh array or tensor a step costs ~20-50 us once the weights
        # have swept the caches
        tokens = np.zeros((self.B, 1), dtype=np.int64)
        last_pos = self.positions[:, -1:].copy()
        for step in range(self.budget):
            tokens[:, 0], events = self._choose(logits)
            yield events
            if all(r.finished for r in self.rows) or step + 1 == self.budget:
                return
            last_pos += 1
            logits = self._forward(tokens, last_pos)

    def _choose(self, step: tuple) -> tuple[list[int], list[TokenEvent]]:
        """One event per live row, and the B tokens to feed next; a finished row is fed its
        last token again (ignored)."""
        logits, argmax = step
        chosen = [r.tokens[-1] for r in self.rows]
        live = [row for row, state in enumerate(self.rows) if not state.finished]
        # every row live (the usual case): their logits as they are, not an indexed copy
        everyone = len(live) == len(self.rows)
        events = step_many(
            [self.rows[row] for row in live],
            logits if everyone else logits[live],
            argmax=argmax if everyone or argmax is None else [argmax[row] for row in live],
        )
        for event in events:
            chosen[event.row] = event.token_id
        return chosen, events
