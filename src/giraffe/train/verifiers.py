"""Verifiable rewards, ready for `giraffe rl --reward python:giraffe.train.verifiers:NAME`.

Each is `fn(prompt, completion, **fields) -> float`; `fields` are the prompt record's
other keys. A program checks the answer, so the reward cannot be flattered:
- `exact_answer`: 1 when the completion (stripped) equals `answer`;
- `number_answer`: the required format is the bare number ("68", a final "." allowed): 1
  when it equals `answer`; 0.5 when the right number is somewhere in a longer reply;
  0.2 for a bare wrong number; 0 otherwise;
- `equation_answer`: the required format is the whole equation, "4 + 3 = 7" (a final "."
  allowed, spaces free): 1 when its left side is the record's `question` (e.g. "4 + 3")
  and its right side equals `answer`; 0 otherwise - no credit for form alone;
- `tagged_answer`: the required format "<answer>X</answer>": 1 when X equals `answer`,
  0.2 for the format with a wrong X, 0 without the format;
- `json_valid`: 1 when the completion parses as JSON (after an optional ```json fence),
  and, given `keys`, is an object holding each of them;
- `regex_match`: 1 when `pattern` matches the whole completion (stripped);
- `unit_tests`: the completion is Python code (an optional ```python fence removed);
  it runs with `tests` (Python asserting on it) in a fresh interpreter with a time
  limit; 1 when the process exits 0.

It does not know models or training; `giraffe.train.rewards` calls these.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ANSWER_TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
FENCE = re.compile(r"^```[a-zA-Z]*\n(.*?)\n?```$", re.DOTALL)
FORMAT_ONLY = 0.2  # the required format around a wrong answer (number_/tagged_answer)
IN_TEXT = 0.5  # number_answer: the right number, but inside other text


def _unfence(text: str) -> str:
    text = text.strip()
    m = FENCE.match(text)
    return m.group(1) if m else text


def exact_answer(prompt: str, completion: str, answer, **fields) -> float:
    return float(completion.strip() == str(answer).strip())


def bare_number(completion: str) -> str | None:
    """The completion when it is just an integer (a final "." allowed), else None."""
    text = completion.strip().removesuffix(".").strip()
    return text if re.fullmatch(r"-?\d+", text) else None


def number_answer(prompt: str, completion: str, answer, **fields) -> float:
    number = bare_number(completion)
    if number is not None:
        return 1.0 if int(number) == int(answer) else FORMAT_ONLY
    mentioned = re.findall(r"-?\d+", completion)
    return IN_TEXT if str(int(answer)) in mentioned else 0.0


EQUATION = re.compile(r"(.+?)=\s*(-?\d+)")


def _no_space(text: str) -> str:
    return re.sub(r"\s+", "", text)


def equation_answer(prompt: str, completion: str, answer, question: str, **fields) -> float:
    m = EQUATION.fullmatch(completion.strip().removesuffix(".").strip())
    if m is None or _no_space(m.group(1)) != _no_space(str(question)):
        return 0.0
    return float(int(m.group(2)) == int(answer))


def tagged_answer(prompt: str, completion: str, answer, **fields) -> float:
    found = ANSWER_TAG.findall(completion)
    if not found:
        return 0.0
    return 1.0 if found[-1] == str(answer).strip() else FORMAT_ONLY


def json_valid(prompt: str, completion: str, keys=None, **fields) -> float:
    try:
        value = json.loads(_unfence(completion))
    except json.JSONDecodeError:
        return 0.0
    if keys:
        return float(isinstance(value, dict) and all(k in value for k in keys))
    return 1.0


def regex_match(prompt: str, completion: str, pattern: str, **fields) -> float:
    return float(re.fullmatch(pattern, completion.strip(), re.DOTALL) is not None)


def unit_tests(prompt: str, completion: str, tests: str, timeout: float = 5.0, **fields) -> float:
    """Run completion + tests in a fresh Python (isolated mode, a temporary folder as its
    working directory); a failing assert, an error or the time limit give 0."""
    code = _unfence(completion) + "\n\n" + tests + "\n"
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "candidate.py"
        script.write_text(code, encoding="utf-8")
        try:
            done = subprocess.run(
                [sys.executable, "-I", str(script)],
                cwd=tmp,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return 0.0
    return float(done.returncode == 0)
