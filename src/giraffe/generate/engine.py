"""The decoding loop: prefill the prompt(s) once, then one token per step with the KV cache.

A `DecodeSession` runs a batch of prompts of different lengths (left padding, per-row
positions, padding masked out of attention), applies the samplers, tracks what each row
has produced, and yields one `TokenEvent` per live row per step. It sees the model only
as "ids (+ cache, positions, key mask) -> logits" (`hidden` + `head`), and token ids
only: stop strings, text and chat belong to the caller (`giraffe.lm`), which may end a
row early with `finish(row)`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from giraffe.generate.params import DecodingConfig
from giraffe.generate.samplers import choose, logprobs_of, process_logits


class GenerationError(ValueError):
    """The request cannot be generated as asked (empty prompt, too long for the context)."""


@dataclass
class TokenEvent:
    row: int  # which prompt of the batch
    token_id: int  # the chosen token (a stop token is reported but is not part of the output)
    logprob: float | None  # log-probability of token_id under the model, when asked for
    top: list[tuple[int, float]] | None  # the top alternatives (id, logprob), when asked for
    finish_reason: str | None  # "stop" (stop token), "length", or None while the row goes on


def check_prompts(prompts: Sequence[Sequence[int]], context: int) -> None:
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise GenerationError(f"prompt {i} is empty: give at least one token")
        if len(p) >= context:
            raise GenerationError(
                f"prompt {i} has {len(p)} tokens but the model's context is {context}: "
                "shorten it to leave room for the answer"
            )


class DecodeSession:
    def __init__(
        self,
        model,
        prompts: Sequence[Sequence[int]],
        cfg: DecodingConfig,
        stop_ids: Sequence[int] = (),
        seeds: Sequence[int | None] | None = None,
    ) -> None:
        context = model.config.max_position_embeddings
        check_prompts(prompts, context)
        self.model, self.cfg = model, cfg
        self.B = len(prompts)
        self.prompt_len = max(len(p) for p in prompts)
        # Never run past the position table / trained context: the last rows finish "length".
        self.budget = min(cfg.max_new_tokens, context - self.prompt_len)
        self.stop_ids = set(cfg.stop_token_ids) | (set() if cfg.ignore_eos else set(stop_ids))
        self.generators = _generators(cfg, seeds, self.B)
        self.finished = [False] * self.B
        self.sequences = [list(p) for p in prompts]  # prompt + generated, for n-gram bans
        self._setup(prompts)

    def _setup(self, prompts) -> None:
        V = self.model.config.vocab_size
        B, L = self.B, self.prompt_len
        self.ids = torch.zeros(B, L, dtype=torch.long)
        self.key_mask = torch.zeros(B, L + self.budget, dtype=torch.bool)  # (B, S)
        for i, p in enumerate(prompts):
            self.ids[i, L - len(p) :] = torch.tensor(p)
            self.key_mask[i, L - len(p) :] = True  # generated slots are valid too
        self.padded = any(len(p) != L for p in prompts)
        pad = (L - torch.tensor([len(p) for p in prompts]))[:, None]  # (B, 1)
        self.positions = (torch.arange(L)[None] - pad).clamp(min=0)  # (B, L)
        self.seen = torch.zeros(B, V, dtype=torch.bool)  # prompt + generated (repetition penalty)
        for i, p in enumerate(prompts):
            self.seen[i, torch.tensor(p)] = True
        self.counts = torch.zeros(B, V, dtype=torch.long)  # generated only (OpenAI penalties)

    def finish(self, row: int) -> None:
        """End a row early (e.g. the caller saw a stop string)."""
        self.finished[row] = True

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        end = self.cache.length + ids.shape[1]
        key_mask = self.key_mask[:, :end] if self.padded else None
        h = self.model.hidden(ids, cache=self.cache, positions=positions, key_mask=key_mask)
        return self.model.head(h[:, -1]).float()  # (B, V): only the last position is needed

    @torch.inference_mode()
    def __iter__(self) -> Iterator[list[TokenEvent]]:
        if self.budget <= 0:
            return
        self.cache = self.model.new_cache(self.B, self.prompt_len + self.budget)
        logits = self._forward(self.ids, self.positions)
        last_pos = self.positions[:, -1:]
        for step in range(self.budget):
            chosen, events = self._choose(logits, step)
            yield events
            if all(self.finished) or step + 1 == self.budget:
                return
            last_pos = last_pos + 1
            logits = self._forward(chosen[:, None], last_pos)

    def _choose(self, logits: torch.Tensor, step: int) -> tuple[torch.Tensor, list[TokenEvent]]:
        cfg = self.cfg
        processed = process_logits(
            logits,
            cfg,
            seen_mask=self.seen,
            counts=self.counts,
            sequences=self.sequences,
            n_generated=step,
            eos_ids=sorted(self.stop_ids),
        )
        chosen = torch.cat(
            [choose(processed[i : i + 1], cfg, g) for i, g in enumerate(self.generators)]
        )
        want = cfg.logprobs or cfg.top_logprobs > 0
        lp = logprobs_of(logits, chosen, cfg.top_logprobs) if want else None
        events = []
        for row in range(self.B):
            if self.finished[row]:
                continue
            events.append(self._record(row, int(chosen[row]), lp, step))
        return chosen, events

    def _record(self, row: int, token: int, lp, step: int) -> TokenEvent:
        self.seen[row, token] = True
        self.counts[row, token] += 1
        self.sequences[row].append(token)
        reason = None
        if token in self.stop_ids:
            reason = "stop"
        elif step + 1 == self.budget:
            reason = "length"
        if reason:
            self.finished[row] = True
        logprob = top = None
        if lp is not None:
            chosen_lp, top_ids, top_lps = lp
            logprob = float(chosen_lp[row])
            top = [(int(t), float(v)) for t, v in zip(top_ids[row], top_lps[row], strict=True)]
        return TokenEvent(row, token, logprob, top, reason)


def _generators(cfg: DecodingConfig, seeds, batch: int) -> list[torch.Generator | None]:
    """One random stream per row, so a row samples the same tokens alone or in a batch."""
    if not cfg.sampling:
        return [None] * batch
    seeds = list(seeds) if seeds is not None else [cfg.seed] * batch
    gens = []
    for seed in seeds:
        g = torch.Generator()
        g.manual_seed(seed) if seed is not None else g.seed()
        gens.append(g)
    return gens
