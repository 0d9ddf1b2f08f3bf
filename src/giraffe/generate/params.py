"""Decoding options: one frozen dataclass, validated when built, shared by CLI, API and server.

Field names follow Hugging Face `generate` (and OpenAI's API for the two penalties), so
users can bring their habits. The numeric bounds live in one table, `BOUNDS`: the
dataclass checks them, and the HTTP schema (`giraffe.serve.schema`) declares them from
it, so the three doors accept the same values. It does not know models, tokenizers or text.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass


class DecodingError(ValueError):
    """A decoding option has a value outside its allowed range, or does not exist; `param` names it."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class GenerationError(ValueError):
    """The request cannot be generated as asked (empty prompt, too long for the context)."""


# name -> {"ge"|"gt"|"le"|"lt": limit}, as pydantic's Field spells them
BOUNDS: dict[str, dict[str, float]] = {
    "max_new_tokens": {"ge": 1},
    "min_new_tokens": {"ge": 0},
    "temperature": {"ge": 0},
    "top_k": {"ge": 0},
    "top_p": {"gt": 0, "le": 1},
    "min_p": {"ge": 0, "lt": 1},
    "repetition_penalty": {"gt": 0},
    "frequency_penalty": {"ge": -2, "le": 2},
    "presence_penalty": {"ge": -2, "le": 2},
    "no_repeat_ngram_size": {"ge": 0},
    "num_beams": {"ge": 1},
    "top_logprobs": {"ge": 0, "le": 20},
    # JSON's safe integers: a bound every client and JSON parser holds exactly (int64's
    # ends are not floats' ends: -2**63 printed from a float reads as a smaller integer)
    "seed": {"ge": -(2**53 - 1), "le": 2**53 - 1},
}
_COMPARE = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="),
            "lt": (operator.lt, "<")}  # fmt: skip


def bounds_text(name: str) -> str:
    return " and ".join(f"{_COMPARE[k][1]} {v}" for k, v in BOUNDS[name].items())


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
    json_schema: str | None = None  # JSON text of a JSON Schema the output must match
    grammar: str | None = None  # a Lark grammar (llguidance's dialect) the output must match
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit); -100 bans

    def __post_init__(self) -> None:
        for name, limits in BOUNDS.items():
            value = getattr(self, name)
            if value is None:  # optional (seed): unset is always allowed
                continue
            ok = all(_COMPARE[k][0](value, v) for k, v in limits.items())
            _require(ok, name, value, bounds_text(name))
        _require(
            self.min_new_tokens <= self.max_new_tokens,
            "min_new_tokens",
            self.min_new_tokens,
            f"between 0 and max_new_tokens ({self.max_new_tokens})",
        )
        _require(all(isinstance(s, str) for s in self.stop), "stop", self.stop, "a list of strings")
        _require(
            all(-100 <= b <= 100 for _, b in self.logit_bias),
            "logit_bias",
            dict(self.logit_bias),
            "a map of token id to a bias in [-100, 100]",
        )
        constrained = self.json_schema is not None or self.grammar is not None
        _require(
            self.num_beams == 1 or not (constrained or self.logit_bias),
            "num_beams",
            self.num_beams,
            "1 with json_schema, grammar or logit_bias (beam search does not take them)",
        )
        _require(
            self.json_schema is None or self.grammar is None,
            "grammar",
            "...",
            "unset when json_schema is given (one constraint at a time)",
        )

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
                f"unknown decoding option {unknown[0]!r}; valid options: {', '.join(sorted(known))}",
                unknown[0],
            )
        if isinstance(kw.get("stop"), str):
            kw["stop"] = (kw["stop"],)
        if isinstance(kw.get("logit_bias"), dict):
            kw["logit_bias"] = _bias_pairs(kw["logit_bias"])
        for name in ("stop", "stop_token_ids", "logit_bias"):
            if kw.get(name) is not None:
                kw[name] = tuple(kw[name])
            elif name in kw:
                kw[name] = ()
        try:
            return cls(**kw)
        except TypeError as e:  # e.g. a comparison between str and int
            raise DecodingError(f"bad decoding option type: {e}") from None


def _bias_pairs(bias: dict) -> tuple[tuple[int, float], ...]:
    """OpenAI's {"token id": bias} (keys are strings in JSON) as sorted (id, bias) pairs."""
    try:
        return tuple(sorted((int(k), float(v)) for k, v in bias.items()))
    except (TypeError, ValueError):
        raise DecodingError(
            f"logit_bias={bias!r} is invalid: it must map token ids to numbers", "logit_bias"
        ) from None


def _require(ok: bool, name: str, value, allowed: str) -> None:
    if not ok:
        raise DecodingError(f"{name}={value!r} is invalid: it must be {allowed}", name)
