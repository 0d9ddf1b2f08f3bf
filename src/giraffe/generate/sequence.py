"""One sequence's sampling state: what it has seen, its random stream, its budget.

The samplers are pure; the state they read (tokens seen for the repetition penalty,
counts for OpenAI's penalties, the token list for n-gram bans, the per-sequence random
generator) lives here, one object per sequence, so that a sequence samples the same
tokens alone, in a fixed batch (`DecodeSession`) or in a batch that others join and
leave (the server's scheduler). It takes one row of logits and returns one
`TokenEvent`; it does not know the model, the cache or text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from giraffe.generate.params import DecodingConfig
from giraffe.generate.samplers import choose, logprobs_of, process_logits


@dataclass
class TokenEvent:
    row: int  # which sequence of the batch
    token_id: int  # the chosen token (a stop token is reported but is not part of the output)
    logprob: float | None  # log-probability of token_id under the model, when asked for
    top: list[tuple[int, float]] | None  # the top alternatives (id, logprob), when asked for
    finish_reason: str | None  # "stop" (stop token), "length", or None while the row goes on


def make_generator(cfg: DecodingConfig, seed: int | None) -> torch.Generator | None:
    if not cfg.sampling:
        return None
    g = torch.Generator()
    g.manual_seed(seed) if seed is not None else g.seed()
    return g


class SequenceState:
    def __init__(
        self,
        prompt: Sequence[int],
        cfg: DecodingConfig,
        vocab_size: int,
        budget: int,
        stop_ids: Sequence[int] = (),
        seed: int | None = None,
        row: int = 0,
    ) -> None:
        self.cfg, self.row, self.budget = cfg, row, budget
        self.stop_ids = set(cfg.stop_token_ids) | (set() if cfg.ignore_eos else set(stop_ids))
        self.seen = torch.zeros(1, vocab_size, dtype=torch.bool)  # prompt + generated
        self.seen[0, torch.tensor(list(prompt), dtype=torch.long)] = True
        self.counts = torch.zeros(1, vocab_size, dtype=torch.long)  # generated only
        self.tokens = list(prompt)  # prompt + generated, for n-gram bans
        self.generator = make_generator(cfg, cfg.seed if seed is None else seed)
        self.n_generated = 0
        self.finished = budget <= 0

    def step(self, logits: torch.Tensor) -> TokenEvent:
        """Choose the next token from this sequence's logits (1, V) and record it."""
        cfg = self.cfg
        processed = process_logits(
            logits,
            cfg,
            seen_mask=self.seen,
            counts=self.counts,
            sequences=[self.tokens],
            n_generated=self.n_generated,
            eos_ids=sorted(self.stop_ids),
        )
        chosen = choose(processed, cfg, self.generator)  # (1,)
        lp = None
        if cfg.logprobs or cfg.top_logprobs > 0:
            lp = logprobs_of(logits, chosen, cfg.top_logprobs)
        return self._record(int(chosen[0]), lp)

    def _record(self, token: int, lp) -> TokenEvent:
        self.seen[0, token] = True
        self.counts[0, token] += 1
        self.tokens.append(token)
        self.n_generated += 1
        reason = None
        if token in self.stop_ids:
            reason = "stop"
        elif self.n_generated >= self.budget:
            reason = "length"
        self.finished = reason is not None
        logprob = top = None
        if lp is not None:
            chosen_lp, top_ids, top_lps = lp
            logprob = float(chosen_lp[0])
            top = [(int(t), float(v)) for t, v in zip(top_ids[0], top_lps[0], strict=True)]
        return TokenEvent(self.row, token, logprob, top, reason)
