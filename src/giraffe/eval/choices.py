"""Multiple-choice evaluation by log-likelihood: which option does the model find likeliest?

A task is one JSON line `{"question", "choices": [...], "answer"}` ("prompt" may stand
for "question"; "answer" is the right choice's index or its text). Each option is scored
by the log-probability of its tokens given the question, as lm-eval-harness does for
its `loglikelihood` requests: nothing is generated, so the number is exact and cheap.

- Plain models continue "question" with " option" (the harness's target delimiter); a
  chat model (its tokenizer has a chat template, unless chat=False) gets the question
  as a user turn with the assistant prompt, and the option is scored as the reply.
- Tokenization at the boundary: the context is encoded alone, then context + option;
  the option's tokens are those after the context's. Where a merge crosses the
  boundary (the joint encoding does not start with the context's tokens), context and
  option are encoded separately and the ids concatenated, so the context keeps its own
  tokens and every option is scored after the same ones.
- Three accuracies: by total log-probability ("total", the harness's acc: favours short
  options), per token, and per UTF-8 byte of the scored text ("per_byte", our acc_norm:
  unlike per token it does not depend on the tokenizer, so models compare; the harness's
  acc_norm divides by characters, the same for ASCII).

It reads only `LanguageModel`'s tokenizer, chat template and forward pass; it does not
generate and does not change the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from giraffe.files.records import RecordError, RecordReport, read_records

NORMS = ("total", "per_token", "per_byte")
NORM_NAMES = {"total": "total log-prob", "per_token": "per token", "per_byte": "per byte"}


class ChoiceError(RecordError):
    """A multiple-choice file, or one task in it, cannot be scored; the message says why."""


@dataclass(frozen=True)
class ChoiceTask:
    question: str
    choices: list[str]
    answer: int  # index into choices


@dataclass
class ChoiceResult:
    line: int  # 1-based line in the file
    task: ChoiceTask
    logprobs: list[float]  # summed log-probability (nats) of each option's tokens
    tokens: list[int]  # tokens scored per option
    n_bytes: list[int]  # UTF-8 bytes of the scored text per option

    def scores(self, norm: str) -> list[float]:
        if norm == "total":
            return list(self.logprobs)
        size = self.tokens if norm == "per_token" else self.n_bytes
        return [lp / n for lp, n in zip(self.logprobs, size, strict=True)]

    def predicted(self, norm: str) -> int:
        scores = self.scores(norm)
        return max(range(len(scores)), key=scores.__getitem__)

    def correct(self, norm: str) -> bool:
        return self.predicted(norm) == self.task.answer

    def to_dict(self) -> dict:
        return {
            "line": self.line,
            "question": self.task.question,
            "choices": self.task.choices,
            "answer": self.task.answer,
            "logprobs": self.logprobs,
            "tokens": self.tokens,
            "bytes": self.n_bytes,
            "predicted": {norm: self.predicted(norm) for norm in NORMS},
        }


@dataclass
class ChoiceReport:
    path: str
    chat: bool  # whether questions were rendered with the chat template
    results: list[ChoiceResult] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)

    def accuracy(self, norm: str = "per_byte") -> float:
        if not self.results:
            return float("nan")
        return sum(r.correct(norm) for r in self.results) / len(self.results)

    def to_dict(self) -> dict:
        return {
            "file": self.path,
            "chat": self.chat,
            "tasks": len(self.results),
            "accuracy": {norm: self.accuracy(norm) for norm in NORMS},
            "skipped": [{"line": n, "reason": why} for n, why in self.skipped],
            "results": [r.to_dict() for r in self.results],
        }


def check_choice(row: dict) -> ChoiceTask:
    """One task line -> ChoiceTask; ChoiceError says what is wrong with it."""
    question = row.get("question", row.get("prompt"))
    if not isinstance(question, str) or not question.strip():
        raise ChoiceError('needs a non-empty "question" (or "prompt") string')
    choices = row.get("choices")
    if not isinstance(choices, list) or len(choices) < 2:
        raise ChoiceError('needs "choices": a list of at least two option strings')
    if not all(isinstance(c, str) and c.strip() for c in choices):
        raise ChoiceError('every entry of "choices" must be a non-empty string')
    if len(set(choices)) < len(choices):
        raise ChoiceError('"choices" has the same option twice, so no answer is unambiguous')
    answer = row.get("answer")
    if isinstance(answer, str):
        if answer not in choices:
            raise ChoiceError(f'"answer" {answer!r} is not one of the choices')
        answer = choices.index(answer)
    elif not isinstance(answer, int) or isinstance(answer, bool):
        raise ChoiceError('needs "answer": the right choice\'s index (from 0) or its text')
    elif not 0 <= answer < len(choices):
        raise ChoiceError(f'"answer" {answer} is out of range for {len(choices)} choices (0-based)')
    return ChoiceTask(question, list(choices), answer)


def read_choices(
    path: str | Path, on_error: str = "stop", skipped: list | None = None
) -> Iterator[tuple[int, ChoiceTask]]:
    """(line number, task) for each good line; bad lines stop the read or go to `skipped`."""
    report = RecordReport(str(path))
    for record in read_records(path, check_choice, on_error, report):
        yield record.line, record.value
    if skipped is not None:
        skipped.extend(report.skipped)


def evaluate_choices(
    lm,
    path: str | Path,
    chat: bool | None = None,
    on_error: str = "stop",
    progress: Callable[[int, int], None] | None = None,
) -> ChoiceReport:
    """Score every task of a JSONL file; chat=None uses the chat template when there is one.

    progress(done, total) is called after each task.
    """
    has_template = lm.tokenizer.chat_template is not None
    if chat and not has_template:
        raise ChoiceError(f"{lm.source or 'the model'} has no chat template; score with chat=False")
    report = ChoiceReport(str(path), has_template if chat is None else chat)
    tasks = list(read_choices(path, on_error, report.skipped))
    for done, (n, task) in enumerate(tasks, 1):
        try:
            report.results.append(score_task(lm, task, report.chat, line=n))
        except ChoiceError as e:
            if on_error == "stop":
                raise ChoiceError(f"{path} line {n}: {e}") from None
            report.skipped.append((n, str(e)))
        if progress:
            progress(done, len(tasks))
    report.skipped.sort()
    return report


def split_task(lm, task: ChoiceTask, chat: bool) -> tuple[str, list[str]]:
    """(context text, continuation text per option): what is conditioned on, what is scored."""
    if chat:
        turn = [{"role": "user", "content": task.question}]
        return lm.render_chat(turn, add_generation_prompt=True), list(task.choices)
    # Trailing whitespace belongs to the continuation (as in lm-eval-harness), so that
    # "Answer: " + "Paris" is tokenized as the text reads, with " Paris" one word.
    context = task.question.rstrip()
    gap = task.question[len(context) :] or " "
    return context, [gap + c for c in task.choices]


def encode_pair(tokenizer, context: str, continuation: str, prefix=()) -> tuple[list, list]:
    """(context ids, continuation ids); the context keeps its own tokens at the boundary."""
    ctx = [*prefix, *tokenizer.encode(context, add_special_tokens=False)]
    whole = [*prefix, *tokenizer.encode(context + continuation, add_special_tokens=False)]
    if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
        return ctx, whole[len(ctx) :]
    # A merge crossed the boundary: score the continuation's own tokens after the context's.
    return ctx, tokenizer.encode(continuation, add_special_tokens=False)


def score_task(lm, task: ChoiceTask, chat: bool, line: int = 0) -> ChoiceResult:
    context, continuations = split_task(lm, task, chat)
    tok = lm.tokenizer
    # The chat template writes its own special tokens; plain text gets bos as generate() does.
    prefix = [tok.bos_id] if tok.add_bos and not chat and tok.bos_id is not None else []
    pairs = [encode_pair(tok, context, c, prefix) for c in continuations]
    ctx_ids = pairs[0][0]
    options = [cont for _, cont in pairs]
    longest = len(ctx_ids) + max(len(o) for o in options)
    if longest > lm.config.max_position_embeddings:
        raise ChoiceError(
            f"question and option take {longest} tokens, more than the model's context "
            f"of {lm.config.max_position_embeddings}"
        )
    logprobs = option_logprobs(lm.model, ctx_ids, options)
    n_bytes = [len(c.encode("utf-8")) for c in continuations]
    return ChoiceResult(line, task, logprobs, [len(o) for o in options], n_bytes)


@torch.inference_mode()
def option_logprobs(model, context: list[int], options: list[list[int]]) -> list[float]:
    """Summed log P(option tokens | context) for each option, in one batched forward pass."""
    n, width = len(context), len(context) + max(len(o) for o in options)
    # Right padding with id 0: causal attention keeps padding out of every real position.
    ids = torch.zeros(len(options), width, dtype=torch.long)  # (B, T)
    for i, option in enumerate(options):
        ids[i, : n + len(option)] = torch.tensor(context + option)
    logits = model(ids)[:, n - 1 : -1].float()  # (B, T_opt, V): position t predicts t + 1
    logp = F.log_softmax(logits, dim=-1)
    out = []
    for i, option in enumerate(options):
        rows = logp[i, torch.arange(len(option)), torch.tensor(option)]  # (len(option),)
        out.append(rows.sum().item())
    return out


def format_report(report: ChoiceReport, details: bool = False) -> str:
    """A few lines for people: accuracy three ways; with details, one line per task."""
    how = "chat template" if report.chat else "plain continuation"
    lines = [f"{report.path}: {len(report.results)} tasks ({how})"]
    if report.skipped:
        shown = "; ".join(f"line {n}: {why}" for n, why in report.skipped[:5])
        lines.append(f"skipped {len(report.skipped)}: {shown}")
    if report.results:
        acc = "  ".join(f"{NORM_NAMES[m]} {report.accuracy(m):.1%}" for m in NORMS)
        lines.append(f"accuracy  {acc}")
    if details:
        for r in report.results:
            guess = r.predicted("per_byte")
            mark = "ok " if guess == r.task.answer else "NO "
            lines.append(
                f"{mark}line {r.line}: {_short(r.task.question)} -> {_short(r.task.choices[guess])}"
                f" (answer: {_short(r.task.choices[r.task.answer])})"
            )
    return "\n".join(lines)


def _short(text: str, width: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."
