"""One sequence's sampling state: what it has seen, its random stream, its budget.

The samplers are pure; the state they read (tokens seen for the repetition penalty,
counts for OpenAI's penalties, the token list for n-gram bans, the per-sequence random
generator, the grammar matcher of constrained decoding) lives here, one object per
sequence, so that a sequence samples the same
tokens alone, in a fixed batch (`DecodeSession`) or in a batch that others join and
leave (the server's scheduler). It takes one row of logits (numpy float32) and returns
one `TokenEvent`; it does not know the model, the cache, text or torch. `stop_set` is the
one rule for which tokens end a sequence; `check_prompts` the one check on prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from giraffe.generate.constraint import Constraint, TokenTable, mask_rows
from giraffe.generate.params import DecodingConfig, GenerationError
from giraffe.generate.samplers import choose_rows, keeps_logits, logprobs_of, process_logits


@dataclass
class TokenEvent:
    row: int  # which sequence of the batch
    token_id: int  # the chosen token (a stop token is reported but is not part of the output)
    logprob: float | None  # log-probability of token_id under the model, when asked for
    top: list[tuple[int, float]] | None  # the top alternatives (id, logprob), when asked for
    finish_reason: str | None  # "stop" (stop token), "length", or None while the row goes on


def stop_set(cfg: DecodingConfig, eos_ids) -> frozenset[int]:
    """The tokens that end a sequence: the config's own, and the model's unless ignore_eos."""
    return frozenset(cfg.stop_token_ids) | (frozenset() if cfg.ignore_eos else frozenset(eos_ids))


def check_prompts(prompts: Sequence[Sequence[int]], context: int) -> None:
    """Every prompt has at least one token and leaves room for one more in the context."""
    for i, p in enumerate(prompts):
        which = "the prompt" if len(prompts) == 1 else f"prompt {i}"
        if len(p) == 0:
            raise GenerationError(f"{which} is empty: give at least one token")
        if len(p) >= context:
            raise GenerationError(
                f"{which} has {len(p)} tokens but the context is {context}: "
                "shorten it to leave room for the answer"
            )


def make_generator(cfg: DecodingConfig, seed: int | None) -> np.random.Generator | None:
    """A sequence's own random stream (PCG64); None when it does not sample.

    seed None: fresh entropy. numpy takes no negative seed: a negative one (the bounds
    allow them) counts as its 64-bit two's complement, as torch's manual_seed read it."""
    if not cfg.sampling:
        return None
    return np.random.default_rng(None if seed is None else seed % 2**64)


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
        table: TokenTable | None = None,
    ) -> None:
        """table: the vocabulary for a json_schema / grammar constraint (giraffe.lm builds it)."""
        self.cfg, self.row, self.budget = cfg, row, budget
        self.stop_ids = set(stop_set(cfg, stop_ids))
        bad = [t for t, _ in cfg.logit_bias if not 0 <= t < vocab_size]
        if bad:
            raise GenerationError(
                f"logit_bias names token {bad[0]}, outside the vocabulary (0..{vocab_size - 1})"
            )
        self.constraint = Constraint.for_config(cfg, table)
        self.tokens = list(prompt)  # prompt + generated, for n-gram bans
        self.n_prompt = len(self.tokens)
        # the penalties' views of self.tokens, brought up to date only when a penalty
        # reads them (seen_mask, generated_counts): two indexed writes a token cost
        # ~40 us of a ~4 ms SmolLM2 step when no penalty is on
        self._seen = np.zeros((1, vocab_size), dtype=bool)  # prompt + generated
        self._counts = np.zeros((1, vocab_size), dtype=np.int64)  # generated only
        self._seen_upto = self._counted_upto = 0
        self.generator = make_generator(cfg, cfg.seed if seed is None else seed)
        self.n_generated = 0
        self.finished = budget <= 0

    def seen_mask(self) -> np.ndarray:
        """(1, V) bool: every token of the prompt and of what was generated."""
        new = self.tokens[self._seen_upto :]
        if new:
            self._seen[0, new] = True
            self._seen_upto = len(self.tokens)
        return self._seen

    def generated_counts(self) -> np.ndarray:
        """(1, V) int64: how often each token was generated (the prompt not counted)."""
        new = self.tokens[max(self._counted_upto, self.n_prompt) :]
        if new:
            np.add.at(self._counts[0], new, 1)  # repeats add up
            self._counted_upto = len(self.tokens)
        return self._counts

    def step(self, logits: np.ndarray) -> TokenEvent:
        """Choose the next token from this sequence's logits (1, V) and record it."""
        return step_many([self], logits)[0]

    def sampler_key(self) -> tuple:
        """Sequences with equal keys can be processed as one batch (seeds may differ)."""
        c = self.cfg
        return (
            c.sampling, c.temperature, c.top_k, c.top_p, c.min_p, c.repetition_penalty,
            c.frequency_penalty, c.presence_penalty, c.no_repeat_ngram_size,
            self.n_generated < c.min_new_tokens, frozenset(self.stop_ids),
        )  # fmt: skip

    def takes_argmax(self) -> bool:
        """Whether this step's token is the raw logits' first maximum: the samplers keep
        them (`keeps_logits`), no bias or grammar applies (`_step_group` adds those) and no
        log-probabilities are asked for."""
        c = self.cfg
        extra = bool(c.logit_bias) or self.constraint is not None
        return keeps_logits(c, self.n_generated) and not (extra or c.logprobs or c.top_logprobs > 0)

    def _record(self, token: int, lp) -> TokenEvent:
        if self.constraint is not None:
            self.constraint.advance(token)
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


def step_many(
    states: Sequence[SequenceState],
    logits: np.ndarray,
    isolate: bool = False,
    argmax: Sequence[int] | None = None,
) -> list[TokenEvent | Exception]:
    """One token for each state from its row of logits (n, V) float32, in order.

    argmax: each row's first maximal logit, when the model computed it with the logits;
    when every state `takes_argmax`, those are the tokens, chosen without an array op.

    States whose samplers agree (`sampler_key`) go through the pure samplers together,
    as one (k, V) batch: per-row work on a 49k vocabulary costs ~0.5 ms per sequence,
    which a 16-sequence decode step would otherwise pay 16 times. Each keeps its own
    random stream, so its tokens do not depend on who else is in the batch.

    isolate=True: when a group fails, its rows are retried one by one and a row that
    still fails gets its exception in place of an event (a server must not fail every
    request for one bad one). A group fails before recording anything, so no row steps twice.
    """
    if argmax is not None and all(s.takes_argmax() for s in states):  # greedy, no array op
        return [s._record(int(t), None) for s, t in zip(states, argmax, strict=True)]
    groups: dict[tuple, list[int]] = {}
    for i, state in enumerate(states):
        groups.setdefault(state.sampler_key(), []).append(i)
    events: list = [None] * len(states)
    for rows in groups.values():
        try:
            # one group of every state (the usual case): the logits as they are, no copy
            group = logits if len(rows) == len(states) else logits[rows]
            results = _step_group([states[i] for i in rows], group)
        except Exception:
            if not isolate:
                raise
            results = [_step_alone(states[i], logits[i : i + 1]) for i in rows]
        for i, event in zip(rows, results, strict=True):
            events[i] = event
    return events


def _step_alone(state: SequenceState, logits: np.ndarray) -> TokenEvent | Exception:
    try:
        return _step_group([state], logits)[0]
    except Exception as e:  # noqa: BLE001 - returned to the caller, who fails that row only
        return e


def _step_group(states: list[SequenceState], logits: np.ndarray) -> list[TokenEvent]:
    first = states[0]
    cfg = first.cfg
    raw = logits
    logits = _bias(logits, [s.cfg.logit_bias for s in states])
    logits = mask_rows(logits, [s.constraint for s in states])
    seen = counts = None
    if cfg.repetition_penalty != 1.0:
        seen = np.concatenate([s.seen_mask() for s in states])  # (k, V)
    if cfg.frequency_penalty or cfg.presence_penalty:
        counts = np.concatenate([s.generated_counts() for s in states])  # (k, V)
    processed = process_logits(
        logits,
        cfg,
        seen_mask=seen,
        counts=counts,
        sequences=[s.tokens for s in states],
        n_generated=first.n_generated,  # the group agrees on n_generated < min_new_tokens
        eos_ids=sorted(first.stop_ids),
    )
    chosen = choose_rows(processed, cfg, [s.generator for s in states])  # (k,)
    k = max(s.cfg.top_logprobs for s in states)
    want = any(s.cfg.logprobs or s.cfg.top_logprobs > 0 for s in states)
    lp = logprobs_of(raw, chosen, k) if want else None  # the model's own, unbiased
    events = []
    for row, state in enumerate(states):
        row_lp = None
        if lp is not None and (state.cfg.logprobs or state.cfg.top_logprobs > 0):
            n_top = state.cfg.top_logprobs
            row_lp = (
                lp[0][row : row + 1],
                lp[1][row : row + 1, :n_top],
                lp[2][row : row + 1, :n_top],
            )
        events.append(state._record(int(chosen[row]), row_lp))
    return events


def _bias(logits: np.ndarray, biases: list[tuple[tuple[int, float], ...]]) -> np.ndarray:
    """OpenAI's logit_bias: add each row's (id, bias); -100 (or below) bans the token outright."""
    if not any(biases):
        return logits
    out = logits.copy()
    for row, pairs in enumerate(biases):
        for token, bias in pairs:
            out[row, token] = float("-inf") if bias <= -100 else out[row, token] + bias
    return out
