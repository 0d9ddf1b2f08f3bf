"""Decoding lab: one prompt continued by several strategies, side by side.

Greedy, beam search and sampling at several temperatures / top-k / top-p, each with the
total log-probability the model gives its continuation and how repetitive it is (the
fraction of repeated n-grams). Generation itself is `LanguageModel.complete`, the same
function the CLI and server use; sampled rows use one seed, so a lab run repeats exactly.

Every strategy starts from neutral settings (no penalties, no filters) rather than the
model's recommended defaults, so that each row differs from the others only in what its
name says. It does not judge quality: a high log-probability can be dull text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from giraffe.explain.inputs import require_decoder
from giraffe.generate.params import DecodingConfig

# Settings every strategy starts from: the model's own distribution, untouched.
NEUTRAL = {
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "no_repeat_ngram_size": 0,
    "num_beams": 1,
}

DEFAULT_STRATEGIES: tuple[dict, ...] = (
    {"temperature": 0.0},
    {"num_beams": 4},
    {"temperature": 0.7},
    {"temperature": 1.0},
    {"temperature": 1.5},
    {"top_k": 40},
    {"top_p": 0.9},
)
INT_OPTIONS = {"top_k", "num_beams", "no_repeat_ngram_size", "max_new_tokens", "seed"}


@dataclass
class LabRow:
    name: str  # what this row does, e.g. "sample, temperature=0.7"
    settings: dict  # the decoding options that differ from NEUTRAL
    text: str
    token_ids: list[int]
    logprob: float  # sum of the model's log-probabilities of the generated tokens
    repetition: float  # fraction of repeated n-grams among the generated tokens
    finish_reason: str
    extra: dict = field(default_factory=dict)

    @property
    def mean_logprob(self) -> float:
        return self.logprob / len(self.token_ids) if self.token_ids else 0.0

    def to_dict(self) -> dict:
        """Plain data for JSON (CLI --json, a web page)."""
        return {
            "strategy": self.name,
            "settings": self.settings,
            "text": self.text,
            "token_ids": self.token_ids,
            "logprob": self.logprob,
            "mean_logprob": self.mean_logprob,
            "repetition_rate": self.repetition,
            "finish_reason": self.finish_reason,
        }


def strategy_name(settings: dict) -> str:
    if settings.get("num_beams", 1) > 1:
        kind = f"beam search ({settings['num_beams']} beams)"
        rest = {k: v for k, v in settings.items() if k != "num_beams"}
    elif settings.get("temperature", 1.0) == 0:
        kind, rest = "greedy", {k: v for k, v in settings.items() if k != "temperature"}
    else:
        kind, rest = "sample", settings
    shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in rest.items())
    return f"{kind}, {shown}" if shown else kind


def repetition_rate(ids: list[int], n: int = 3) -> float:
    """Share of the n-grams that already occurred earlier: 0 = none repeats, near 1 = a loop."""
    if n < 1:
        raise ValueError(f"the n-gram length must be at least 1, got {n}.")
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


@torch.inference_mode()
def sequence_logprob(lm, prompt: list[int], generated: list[int]) -> float:
    """Sum of log p(token | everything before it) over `generated`, by one forward pass."""
    if not generated:
        return 0.0
    logp = lm.logits(prompt + generated).double().log_softmax(-1)  # (P+G, V)
    rows = torch.arange(len(prompt) - 1, len(prompt) + len(generated) - 1)
    return float(logp[rows, torch.tensor(generated)].sum())


def parse_strategy(text: str) -> dict:
    """'temperature=0.7,top_p=0.9' -> {"temperature": 0.7, "top_p": 0.9}, checked."""
    out = {}
    for part in filter(None, (s.strip() for s in text.split(","))):
        name, eq, value = part.partition("=")
        name = name.strip().replace("-", "_")
        try:
            out[name] = int(value) if name in INT_OPTIONS else float(value)
        except ValueError:
            eq = ""
        if not eq:
            raise ValueError(
                f"cannot read the strategy setting {part!r}; write it like temperature=0.7,top_p=0.9."
            )
    DecodingConfig.from_kwargs(**{**NEUTRAL, **out})  # names and ranges, with a clear message
    return out


def run_lab(
    lm,
    prompt: str,
    strategies=DEFAULT_STRATEGIES,
    max_new_tokens: int = 40,
    seed: int = 0,
    ngram: int = 3,
) -> list[LabRow]:
    require_decoder(lm, "the decoding lab")
    ids = lm.encode_prompt(prompt)
    rows = []
    for settings in strategies:
        settings = dict(settings)
        options = {**NEUTRAL, **settings, "max_new_tokens": max_new_tokens, "seed": seed}
        beam = options["num_beams"] > 1
        result = lm.complete(ids, logprobs=not beam, **options)
        # Beam search reports a length-normalised score, not per-token log-probabilities:
        # score its result the way every other row is scored, with one forward pass.
        if beam or result.logprobs is None:
            total = sequence_logprob(lm, ids, result.token_ids)
        else:
            total = float(sum(result.logprobs))
        rows.append(
            LabRow(
                strategy_name(settings),
                settings,
                result.text,
                result.token_ids,
                total,
                repetition_rate(result.token_ids, ngram),
                result.finish_reason,
            )
        )
    return rows
