"""JSON Lines records for fine-tuning: read, check each line, report bad ones by number.

`read_records(path, check, on_error="stop"|"skip")` yields `Record(line, value)` for each
non-blank line whose JSON object passes `check` (a function that returns the cleaned
value or raises `RecordError` saying what is wrong). With "stop" the first bad line ends
the read with an error naming the file and line; with "skip" bad lines are collected in
`RecordReport.skipped` (line numbers and reasons) and the rest is read. `check_chat` and
`check_preference` are the two shapes fine-tuning uses (DESIGN.md: `{"messages"}` and
`{"prompt","chosen","rejected"}`). It knows nothing of tokenizers or templates.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ON_ERROR = ("stop", "skip")


class RecordError(ValueError):
    """A JSONL file, or one line of it, is not what fine-tuning reads; the message says why."""


@dataclass(frozen=True)
class Record:
    line: int  # 1-based line number in the file, for messages
    value: object  # what `check` returned


@dataclass
class RecordReport:
    path: str
    kept: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)

    def summary(self) -> str:
        text = f"{self.path}: {self.kept} records"
        if self.skipped:
            shown = "; ".join(f"line {n}: {why}" for n, why in self.skipped[:5])
            more = f" (and {len(self.skipped) - 5} more)" if len(self.skipped) > 5 else ""
            text += f", {len(self.skipped)} skipped - {shown}{more}"
        return text


def read_records(
    path: str | Path,
    check: Callable[[dict], object],
    on_error: str = "stop",
    report: RecordReport | None = None,
) -> Iterator[Record]:
    if on_error not in ON_ERROR:
        raise RecordError(f"on_error must be one of {', '.join(ON_ERROR)}, not {on_error!r}")
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path} does not exist or is not a file")
    report = report if report is not None else RecordReport(str(path))
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(_lines(f, path), 1):
            if not line.strip():
                continue
            try:
                value = check(_object(line))
            except RecordError as e:
                if on_error == "stop":
                    raise RecordError(
                        f"{path} line {n}: {e} (pass --on-error skip to skip bad lines)"
                    ) from None
                report.skipped.append((n, str(e)))
                continue
            report.kept += 1
            yield Record(n, value)


def _lines(f, path: Path) -> Iterator[str]:
    try:
        yield from f
    except UnicodeDecodeError as e:
        raise RecordError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _object(line: str) -> dict:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise RecordError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(value, dict):
        raise RecordError(f"expected a JSON object, got {type(value).__name__}")
    return value


def check_chat(row: dict) -> list[dict]:
    """{"messages": [{"role", "content"}, ...]} with at least one assistant turn."""
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RecordError('needs "messages": a non-empty list of {"role", "content"} objects')
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RecordError(f'message {i} needs a "role" string')
        if not isinstance(m.get("content"), str):
            raise RecordError(f'message {i} ({m["role"]}) needs a "content" string')
    if not any(m["role"] == "assistant" for m in messages):
        raise RecordError("the conversation has no assistant turn, so nothing to learn from")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def check_preference(row: dict) -> dict:
    """{"prompt", "chosen", "rejected"}: three strings, chosen != rejected."""
    for key in ("prompt", "chosen", "rejected"):
        if not isinstance(row.get(key), str) or not row[key]:
            raise RecordError(f'needs a non-empty "{key}" string (prompt, chosen, rejected)')
    if row["chosen"] == row["rejected"]:
        raise RecordError('"chosen" and "rejected" are the same text')
    return {k: row[k] for k in ("prompt", "chosen", "rejected")}
