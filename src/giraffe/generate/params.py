"""Decoding options: one frozen dataclass, validated when built, shared by CLI, API and server.

Field names follow Hugging Face `generate` (and OpenAI's API for the two penalties), so
users can bring their habits. It does not know models, tokenizers or text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


class DecodingError(ValueError):
    """A decoding option has a value outside its allowed range, or does not exist."""


@dataclass(frozen=True)
class DecodingConfig:
    max_new_tokens: int = 256  # upper bound on generated tokens (>= 1)
    min_new_tokens: int = 0  # stop tokens are banned until this many were generated
    temperature: float = 1.0  # >= 0; divides the logits; 0 means greedy
    top_k: int = 0  # keep only the k most likely tokens; 0 = off
    top_p: float = 1.0  # nucleus: smallest set with probability >= top_p, in (0, 1]
    min_p: float = 0.0  # drop tokens below min_p x the top probability, in [0, 1)
    repetition_penalty: float = 1.0  # > 0; CTRL-style, on prompt and generated tokens
    frequency_penalty: float = 0.0  # OpenAI-style: minus this x count, in [-2, 2]
    presence_penalty: float = 0.0  # OpenAI-style: minus this once a token appeared, in [-2, 2]
    no_repeat_ngram_size: int = 0  # ban any n-gram from occurring twice; 0 = off
    do_sample: bool | None = None  # None: sample iff temperature > 0
    num_beams: int = 1  # beam search when > 1 (deterministic)
    length_penalty: float = 1.0  # beam score = logprob / length**length_penalty
    early_stopping: bool = False  # beam search stops once num_beams hypotheses finished
    stop: tuple[str, ...] = ()  # stop strings: generation ends before the first one
    stop_token_ids: tuple[int, ...] = ()  # extra token ids that end generation
    ignore_eos: bool = False  # keep going past the model's end-of-sequence tokens
    seed: int | None = None  # same seed, same tokens; None = fresh randomness
    logprobs: bool = False  # report the log-probability of each chosen token
    top_logprobs: int = 0  # also report this many alternatives per token, 0..20

    def __post_init__(self) -> None:
        _require(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, ">= 1")
        _require(
            0 <= self.min_new_tokens <= self.max_new_tokens,
            "min_new_tokens",
            self.min_new_tokens,
            f"between 0 and max_new_tokens ({self.max_new_tokens})",
        )
        _require(self.temperature >= 0, "temperature", self.temperature, ">= 0 (0 = greedy)")
        _require(self.top_k >= 0, "top_k", self.top_k, ">= 0 (0 = off)")
        _require(0 < self.top_p <= 1, "top_p", self.top_p, "in (0, 1]")
        _require(0 <= self.min_p < 1, "min_p", self.min_p, "in [0, 1)")
        _require(self.repetition_penalty > 0, "repetition_penalty", self.repetition_penalty, "> 0")
        for name in ("frequency_penalty", "presence_penalty"):
            _require(-2 <= getattr(self, name) <= 2, name, getattr(self, name), "in [-2, 2]")
        _require(
            self.no_repeat_ngram_size >= 0,
            "no_repeat_ngram_size",
            self.no_repeat_ngram_size,
            ">= 0",
        )
        _require(self.num_beams >= 1, "num_beams", self.num_beams, ">= 1")
        _require(0 <= self.top_logprobs <= 20, "top_logprobs", self.top_logprobs, "in 0..20")
        _require(all(isinstance(s, str) for s in self.stop), "stop", self.stop, "a list of strings")

    @property
    def sampling(self) -> bool:
        if self.do_sample is None:
            return self.temperature > 0
        return self.do_sample and self.temperature > 0

    @classmethod
    def from_kwargs(cls, **kw) -> DecodingConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kw) - known)
        if unknown:
            raise DecodingError(
                f"unknown decoding option {unknown[0]!r}; valid options: {', '.join(sorted(known))}"
            )
        if isinstance(kw.get("stop"), str):
            kw["stop"] = (kw["stop"],)
        for name in ("stop", "stop_token_ids"):
            if kw.get(name) is not None:
                kw[name] = tuple(kw[name])
            elif name in kw:
                kw[name] = ()
        try:
            return cls(**kw)
        except TypeError as e:  # e.g. a comparison between str and int
            raise DecodingError(f"bad decoding option type: {e}") from None


def _require(ok: bool, name: str, value, allowed: str) -> None:
    if not ok:
        raise DecodingError(f"{name}={value!r} is invalid: it must be {allowed}")
