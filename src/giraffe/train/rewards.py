"""Where RL rewards come from: a trained reward model, or a Python function.

`load_reward(spec, tokenizer, template)` reads `--reward`:
- a folder written by `giraffe reward` (a *ForSequenceClassification model): each answer
  is rendered as the user turn + assistant turn with the policy's chat template, as the
  reward model was trained, and scored in batches. A reward model whose vocabulary is
  not the policy's is refused (its scores of our token ids would be meaningless);
- `python:module:function`: `function(prompt, completion, **fields) -> float`, where
  fields are the prompt record's other keys (e.g. "answer"). Verifiable rewards, ready
  made, are in `giraffe.train.verifiers`.

A function that raises or runs past its time limit fails that sample only: its reward
is 0, and the failure is counted and reported once per step with the first message
(`RewardFailures`). The time limit uses SIGALRM (Unix, main thread); elsewhere the
function runs without one. It knows nothing of losses or the training loop.
"""

from __future__ import annotations

import importlib
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from giraffe.train.tuning import FinetuneError

PYTHON = "python:"


class RewardError(FinetuneError):
    """--reward names something that cannot give rewards for this policy."""


class RewardTimeout(Exception):
    pass


@dataclass
class RewardFailures:
    count: int = 0
    first: str = ""  # the first failure's message, shown with the count
    lines: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.count += 1
        if not self.first:
            self.first = message


class FunctionReward:
    def __init__(self, fn: Callable, name: str, timeout: float) -> None:
        self.fn, self.name, self.timeout = fn, name, timeout

    def __call__(self, prompts, completions, records, failures: RewardFailures) -> torch.Tensor:
        out = []
        for prompt, completion, record in zip(prompts, completions, records, strict=True):
            try:
                value = float(_with_limit(self.fn, self.timeout, prompt, completion, record))
                if value != value:  # NaN
                    raise ValueError("returned NaN")
            except RewardTimeout:
                failures.add(f"{self.name} ran past {self.timeout:g} s")
                value = 0.0
            except Exception as e:  # noqa: BLE001 - one sample fails, not the run
                failures.add(f"{self.name} raised {type(e).__name__}: {e}")
                value = 0.0
            out.append(value)
        return torch.tensor(out, dtype=torch.float32)


def _with_limit(fn, seconds: float, prompt, completion, record):
    fields = {k: v for k, v in record.items() if k != "prompt"}
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        return fn(prompt, completion, **fields)

    def expire(signum, frame):
        raise RewardTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(prompt, completion, **fields)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class ModelReward:
    """Scores from a `giraffe reward` folder, batched; the template renders each answer."""

    def __init__(self, folder: Path, policy_tokenizer, render, batch_size: int = 8) -> None:
        from giraffe.train.reward import load_reward_model

        self.rm, tok = load_reward_model(folder)
        if tok.token_texts() != policy_tokenizer.token_texts():
            raise RewardError(
                f"the reward model in {folder} uses another tokenizer ({tok.vocab_size} tokens) "
                f"than the policy ({policy_tokenizer.vocab_size}): train it from the same base "
                "model (giraffe reward MODEL ...)"
            )
        self.render, self.batch_size = render, batch_size
        self.name = str(folder)

    @torch.no_grad()
    def __call__(self, prompts, completions, records, failures) -> torch.Tensor:
        from giraffe.train.chat_data import ChatExample, pad_examples

        out = []
        for i in range(0, len(prompts), self.batch_size):
            examples = [
                ChatExample(tuple(ids), (False,) * len(ids))
                for ids in (
                    self.render(p, c)
                    for p, c in zip(
                        prompts[i : i + self.batch_size],
                        completions[i : i + self.batch_size],
                        strict=True,
                    )
                )
            ]
            ids, _ = pad_examples(examples, self.rm.pad_id)
            out.append(self.rm(ids).float())
        return torch.cat(out)


def load_reward(spec: str, policy_tokenizer, render, timeout: float = 10.0):
    """The reward source `spec` names (see the module docstring)."""
    if spec.startswith(PYTHON):
        return FunctionReward(_import_function(spec), spec, timeout)
    folder = Path(spec)
    if not (folder / "config.json").is_file():
        raise RewardError(
            f"--reward {spec!r} is neither a reward model folder (giraffe reward ... --out DIR) "
            "nor python:module:function"
        )
    return ModelReward(folder, policy_tokenizer, render)


def _import_function(spec: str) -> Callable:
    target = spec[len(PYTHON) :]
    module_name, _, name = target.rpartition(":")
    if not module_name or not name:
        raise RewardError(f"--reward {spec!r}: write python:module:function, e.g. "
                          "python:giraffe.train.verifiers:exact_answer")  # fmt: skip
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to fix
        raise RewardError(
            f"--reward {spec!r}: cannot import module {module_name!r} "
            f"({type(e).__name__}: {e}); is it on PYTHONPATH?"
        ) from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise RewardError(f"--reward {spec!r}: module {module_name!r} has no function {name!r}")
    return fn
