"""Prompts for reinforcement learning: a JSONL file of {"prompt": ..., other fields}.

Each line holds the user's request in "prompt" (a non-empty string); every other key
is passed to a Python reward function as a keyword (e.g. "answer" for
`giraffe.train.verifiers.tagged_answer`). A line without "prompt" is refused with its
number (or skipped with --on-error skip). Prompts are rendered as one user turn with
the chat template and the assistant's opening (`add_generation_prompt`); one longer
than `max_prompt_tokens` is dropped and counted. It knows nothing of sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

from giraffe.files.records import RecordError, RecordReport, read_records
from giraffe.tokenizer.chat import render_chat, resolve_template
from giraffe.train.chat_data import encode_chat


@dataclass(frozen=True)
class PromptItem:
    ids: tuple[int, ...]  # the rendered user turn + assistant header
    text: str  # the user's request as written
    record: dict  # the whole JSON object (fields for the reward function)
    line: int  # JSONL line


def check_prompt(row: dict) -> dict:
    value = row.get("prompt")
    if not isinstance(value, str) or not value.strip():
        have = ", ".join(sorted(row)) or "none"
        raise RecordError(f'needs a "prompt" field with the request as text (keys here: {have})')
    return row


def prompt_ids(tokenizer, text: str, template: str | None) -> list[int]:
    rendered = render_chat(
        [{"role": "user", "content": text}],
        resolve_template(template if template is not None else tokenizer.chat_template),
        add_generation_prompt=True,
        bos_token=tokenizer.bos_token or "",
        eos_token=tokenizer.eos_token or "",
    )
    return tokenizer.encode(rendered, add_special_tokens=False)


def load_prompts(
    path, tokenizer, template: str | None, max_prompt_tokens: int, on_error: str = "stop"
) -> tuple[list[PromptItem], RecordReport, int]:
    """(prompts, the file's report, how many were dropped as too long)."""
    report = RecordReport(str(path))
    items, too_long = [], 0
    for rec in read_records(path, check_prompt, on_error, report):
        ids = prompt_ids(tokenizer, rec.value["prompt"], template)
        if len(ids) > max_prompt_tokens:
            too_long += 1
            continue
        items.append(PromptItem(tuple(ids), rec.value["prompt"], rec.value, rec.line))
    return items, report, too_long


def conversation_ids(tokenizer, template: str | None, prompt: str, answer: str) -> list[int]:
    """The user turn + the assistant's answer, rendered as a reward model was trained."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return list(encode_chat(tokenizer, messages, template).ids)
