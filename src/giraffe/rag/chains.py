"""Long documents -> one summary, within a language model's context: stuff, map-reduce, refine.

    plan = make_plan(text, "map-reduce", count, budget=1500, summary_tokens=200)
    print(plan.describe())            # "6 chunks; at most 9 model calls", before any call
    summary = summarize(text, plan, complete)

- stuff: the whole text in one prompt (refused if it does not fit).
- map-reduce: summarise each chunk (map), then combine the summaries; while they do
  not fit one prompt, group them into prompts that fit and summarise each group
  (collapse), recursively.
- refine: summarise the first chunk, then update the running summary with each next
  chunk in turn.

Termination: every summary is held to `summary_tokens` (cut between words, with a
notice, if a model overruns) and the budget must hold at least two summaries, so every
collapse round at least roughly halves the number of summaries; the planner's count is
an upper bound (next-fit grouping never needs more groups for shorter items).

`complete(prompt) -> str` and `count(text) -> int` are plain callables, so the chains
run on a real model (`ChatCompleter`) or on a fake in tests.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from giraffe.rag.chunk import ChunkSpec, chunk_spans

METHODS = ("map-reduce", "refine", "stuff")
MAP = "Summarise the following text in a few sentences.\n\nText:\n{text}\n\nSummary:"
COMBINE = (
    "These are summaries of consecutive parts of one document. Combine them into one "
    "concise summary.\n\n{text}\n\nSummary:"
)
REFINE = (
    "Here is a summary of a document so far:\n{summary}\n\nUpdate it with the next part "
    "of the document, keeping it concise.\n\nNext part:\n{text}\n\nUpdated summary:"
)


class PlanError(ValueError):
    """The text cannot be summarised this way within the budget."""


@dataclass(frozen=True)
class Plan:
    method: str
    chunks: tuple[str, ...]
    calls: int  # at most this many model calls
    budget: int  # prompt tokens per call
    summary_tokens: int

    def describe(self) -> str:
        n = len(self.chunks)
        return (
            f"{self.method}: {n} chunk{'s' * (n != 1)} of at most "
            f"{self.budget} prompt tokens; at most {self.calls} model call"
            f"{'s' * (self.calls != 1)} of up to {self.summary_tokens} new tokens each"
        )


@dataclass
class Trace:
    calls: int = 0
    rounds: int = 0
    notices: list[str] = field(default_factory=list)


def make_plan(
    text: str, method: str, count: Callable[[str], int], budget: int, summary_tokens: int
) -> Plan:
    if method not in METHODS:
        raise PlanError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if not text.strip():
        raise PlanError("the text is empty: nothing to summarise")
    overhead = count(MAP.format(text="")) + 2
    if method == "stuff":
        if count(text) + overhead > budget:
            raise PlanError(
                f"the text has {count(text)} tokens; with the prompt it does not fit the "
                f"budget of {budget}: use --method map-reduce or refine"
            )
        return Plan(method, (text,), 1, budget, summary_tokens)
    room = budget - max(overhead, count(COMBINE.format(text="")) + 2)
    if method == "refine":
        room = budget - count(REFINE.format(text="", summary="")) - summary_tokens - 2
    if room < 2 * summary_tokens + 8 and method == "map-reduce" or room < 16:
        raise PlanError(
            f"a budget of {budget} prompt tokens cannot hold two {summary_tokens}-token "
            "summaries besides the instructions, so combining could never finish: raise the "
            "budget or lower --summary-tokens"
        )
    chunks = tuple(text[s:e] for s, e in chunk_spans(text, _many(count), ChunkSpec(room, 0)))
    if method == "refine":
        return Plan(method, chunks, len(chunks), budget, summary_tokens)
    return Plan(
        method, chunks, _map_reduce_calls(len(chunks), room, summary_tokens), budget, summary_tokens
    )


def _many(count: Callable[[str], int]):
    return lambda texts: [count(t) for t in texts]


def _map_reduce_calls(n: int, room: int, summary_tokens: int) -> int:
    """Worst case: every summary uses all its tokens (+2 for the separator)."""
    if n == 1:
        return 1
    calls, items = n, n
    while items * (summary_tokens + 2) > room:
        per_group = room // (summary_tokens + 2)
        items = math.ceil(items / per_group)
        calls += items
    return calls + 1  # the final combination


def summarize(
    text: str,
    plan: Plan,
    complete: Callable[[str], str],
    count: Callable[[str], int],
    trace: Trace | None = None,
) -> str:
    trace = trace if trace is not None else Trace()
    run = _Runner(plan, complete, count, trace)
    if plan.method == "stuff" or len(plan.chunks) == 1:
        return run.call(MAP.format(text=plan.chunks[0]))
    if plan.method == "refine":
        summary = run.call(MAP.format(text=plan.chunks[0]))
        for chunk in plan.chunks[1:]:
            summary = run.call(REFINE.format(summary=summary, text=chunk))
        return summary
    summaries = [run.call(MAP.format(text=c)) for c in plan.chunks]
    room = plan.budget - count(COMBINE.format(text="")) - 2
    limit = max(1, math.ceil(math.log2(len(summaries))) + 1)
    while len(summaries) > 1 and count("\n\n".join(summaries)) > room:
        trace.rounds += 1
        if trace.rounds > limit:  # unreachable by the argument above; a guard, not a hope
            raise PlanError(f"map-reduce did not converge in {limit} rounds")
        summaries = [
            run.call(COMBINE.format(text="\n\n".join(g))) for g in _groups(summaries, count, room)
        ]
    return run.call(COMBINE.format(text="\n\n".join(summaries)))


def _groups(items: list[str], count, room: int) -> list[list[str]]:
    """Next-fit: consecutive items, a new group when the next would overflow."""
    groups, current, used = [], [], 0
    for item in items:
        n = count(item) + 2
        if current and used + n > room:
            groups.append(current)
            current, used = [], 0
        current.append(item)
        used += n
    return groups + [current] if current else groups


class _Runner:
    def __init__(self, plan: Plan, complete, count, trace: Trace) -> None:
        self.plan, self.complete, self.count, self.trace = plan, complete, count, trace

    def call(self, prompt: str) -> str:
        self.trace.calls += 1
        out = self.complete(prompt).strip()
        if self.count(out) > self.plan.summary_tokens:
            self.trace.notices.append(
                f"call {self.trace.calls}: a {self.count(out)}-token summary was cut to "
                f"{self.plan.summary_tokens} tokens"
            )
            out = _cut(out, self.count, self.plan.summary_tokens)
        return out


def _cut(text: str, count, limit: int) -> str:
    """The longest prefix of whole words within `limit` tokens (binary search)."""
    ends = [m.end() for m in re.finditer(r"\S+", text)]
    lo, hi = 0, len(ends)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(text[: ends[mid - 1]]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return text[: ends[lo - 1]] if lo else ""


class ChatCompleter:
    """A LanguageModel as `complete`/`count`: one user turn, greedy, bounded output."""

    def __init__(self, lm, max_new_tokens: int) -> None:
        self.lm, self.max_new_tokens = lm, max_new_tokens
        self.overhead = len(lm.chat_ids([{"role": "user", "content": ""}]))

    def count(self, text: str) -> int:
        return len(self.lm.tokenizer.encode(text, add_special_tokens=False))

    def __call__(self, prompt: str) -> str:
        # Greedy; a mild repetition penalty because plain greedy decoding makes a 135M
        # model loop on one sentence ("It is a smart kettle. It is a smart kettle...").
        messages = [{"role": "user", "content": prompt}]
        return self.lm.chat(
            messages, max_new_tokens=self.max_new_tokens, temperature=0.0, repetition_penalty=1.1
        )

    def budget(self, context: int | None = None) -> int:
        """Prompt tokens per call: the context minus the chat wrapping and the answer."""
        context = context or self.lm.config.max_position_embeddings
        return context - self.overhead - self.max_new_tokens
