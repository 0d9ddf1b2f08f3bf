"""Supervised fine-tuning data: conversations -> token ids + the mask of tokens to learn.

A conversation is rendered with the model's own chat template, and the loss covers only
what the assistant writes: each assistant message's content plus the end-of-turn marker
the template puts after it (`<|im_end|>` in ChatML, ` </s>` in Llama-2), so the model
learns to stop. System and user text and the role headers (`<|im_start|>assistant\\n`)
are context, never targets.

The mask comes from the template's rendering, not from searching the text: every
assistant content is replaced by a unique sentinel, the conversation is rendered, and
the sentinels' positions are the assistant spans (an assistant turn that repeats the
user word for word is still found in the right place). The end marker is what the
template writes after the content, up to and including the first stop token. Character
spans become token positions through the tokenizer's offsets.

Long examples are cut at `max_len` tokens (the start kept), counted and warned about.
Packing puts several short examples in one row; each keeps its own mask, positions
restart at 0 and attention stays inside each example (a block-diagonal causal mask), so
a packed row computes exactly what the examples would alone. (TRL's default packing lets
attention cross example boundaries; giraffe's decoder takes an explicit mask, so it need
not.)

It knows tokenizers and templates, not models or optimisers.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from giraffe.files.records import RecordError, RecordReport, check_chat, read_records
from giraffe.tokenizer.chat import ChatTemplateError, render_chat, resolve_template
from giraffe.tokenizer.tokenizer import Tokenizer
from giraffe.train.data import DataWarning

# Private-use characters: never in real text, and no template trims or escapes them.
SENTINEL = "\ue000giraffe-assistant-{}\ue001"


@dataclass(frozen=True)
class ChatExample:
    ids: tuple[int, ...]  # the rendered conversation's tokens
    mask: tuple[bool, ...]  # mask[t]: ids[t] is a target (assistant content or end marker)
    line: int = 0  # line of the JSONL record it came from (0 = not from a file)
    messages: tuple = field(default=(), compare=False, repr=False)  # the conversation itself

    @property
    def targets(self) -> int:
        return sum(self.mask)


# ---- rendering and masks -----------------------------------------------------------------


def stop_texts(tokenizer: Tokenizer) -> tuple[str, ...]:
    """The text of each token that ends a turn (eos, <|im_end|>, ...)."""
    texts = {t for t, i in tokenizer.special_tokens.items() if i in tokenizer.stop_ids}
    if tokenizer.eos_token:
        texts.add(tokenizer.eos_token)
    return tuple(sorted(texts))


def assistant_spans(
    messages: Sequence[dict],
    template: str,
    *,
    bos_token: str = "",
    eos_token: str = "",
    stops: Sequence[str] = (),
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans the loss covers.

    Each span is one assistant message's content followed by its end marker: the text the
    template writes after the content, cut after the first of `stops` in it.
    """

    def render(msgs, generation_prompt: bool = False) -> str:
        return render_chat(
            msgs, template, add_generation_prompt=generation_prompt, bos_token=bos_token,
            eos_token=eos_token,
        )  # fmt: skip

    text = render(messages)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and _content(m)]
    # An assistant message with tool calls and no content (OpenAI's shape): its target is
    # all it writes, the calls, found by rendering the conversation up to it (below).
    calls = [i for i, m in enumerate(messages)
             if m["role"] == "assistant" and not _content(m) and m.get("tool_calls")]  # fmt: skip
    if any(SENTINEL.format("")[:-1] in _content(m) for m in messages):
        raise ChatTemplateError("a message contains giraffe's private sentinel text")
    marked = [dict(m) for m in messages]
    for k, i in enumerate(turns):
        marked[i]["content"] = SENTINEL.format(k)
    skeleton = render(marked)

    # Put the real contents back where the sentinels are, noting where each one lands.
    rebuilt, spans, cursor, length = [], [], 0, 0
    places = [_place(skeleton, SENTINEL.format(k), i) for k, i in enumerate(turns)]
    for k, (i, at) in enumerate(zip(turns, places, strict=True)):
        rebuilt += [skeleton[cursor:at], messages[i]["content"]]
        start = length + at - cursor
        length = start + len(messages[i]["content"])
        cursor = at + len(SENTINEL.format(k))
        gap_end = places[k + 1] if k + 1 < len(places) else len(skeleton)
        marker = _end_marker(skeleton[cursor:gap_end], render(marked[: i + 1]), k, stops)
        spans.append((start, start + len(messages[i]["content"]) + len(marker)))
    spans += [_calls_span(messages, i, render, text, stops) for i in calls]
    spans.sort()
    rebuilt.append(skeleton[cursor:])
    if "".join(rebuilt) != text:
        raise ChatTemplateError(
            "the chat template changes assistant messages as it renders them (e.g. trims "
            "them), so their tokens cannot be located; clean the data or the template"
        )
    return text, spans


def _content(message: dict) -> str:
    """A message's text: "" when it has none (null or left out, as beside tool calls)."""
    content = message.get("content")
    return content if isinstance(content, str) else ""


def _calls_span(messages, i: int, render, text: str, stops: Sequence[str]) -> tuple[int, int]:
    """Assistant message i writes only tool calls: its span is what the template writes for
    it after the generation prompt (what the model would generate), through the first stop."""
    through = render(messages[: i + 1])
    if not text.startswith(through):
        raise ChatTemplateError(
            f"the chat template renders the conversation up to message {i} differently "
            "from the whole, so its tool calls cannot be located for the loss"
        )
    start = len(os.path.commonprefix([render(messages[:i], True), through]))
    block = through[start:]
    found = [block.index(s) + len(s) for s in stops if s and s in block]
    return start, start + (min(found) if found else len(block))


def _place(skeleton: str, sentinel: str, i: int) -> int:
    if skeleton.count(sentinel) != 1:
        raise ChatTemplateError(
            f"the chat template does not write assistant message {i} exactly once, so its "
            "tokens cannot be located for the loss"
        )
    return skeleton.index(sentinel)


def _end_marker(gap: str, alone: str, k: int, stops: Sequence[str]) -> str:
    """What the template writes after assistant turn k, up to the first stop token.

    `gap` runs to the next assistant turn; `alone` is the conversation rendered up to this
    turn, so its tail is what ends an assistant message (not the next turn's header).
    """
    tail = alone[alone.index(SENTINEL.format(k)) + len(SENTINEL.format(k)) :]
    marker = os.path.commonprefix([gap, tail])
    found = [marker.index(s) + len(s) for s in stops if s and s in marker]
    return marker[: min(found)] if found else marker


def _offsets(tokenizer: Tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    # The `tokenizers` Encoding maps each token to its characters; giraffe's Tokenizer
    # exposes ids only, so the backend is asked directly.
    backend = getattr(tokenizer._backend, "tok", None)
    if backend is None:
        raise ChatTemplateError(
            f"{tokenizer.name} cannot map tokens to characters (not a tokenizer.json "
            "tokenizer), which assistant-only loss masks need"
        )
    enc = backend.encode(text, add_special_tokens=False)
    return enc.ids, enc.offsets


def encode_chat(
    tokenizer: Tokenizer, messages: Sequence[dict], template: str | None = None, line: int = 0
) -> ChatExample:
    """Render `messages` with the template (default: the tokenizer's) and mask assistant tokens."""
    text, spans = assistant_spans(
        messages,
        resolve_template(template if template is not None else tokenizer.chat_template),
        bos_token=tokenizer.bos_token or "",
        eos_token=tokenizer.eos_token or "",
        stops=stop_texts(tokenizer),
    )
    covered = np.zeros(len(text) + 1, dtype=bool)
    for a, b in spans:
        covered[a:b] = True
    ids, offsets = _offsets(tokenizer, text)
    # A token is a target when any of its characters is: a token that merges a template
    # space with the first word of the answer must still be predicted.
    mask = tuple(bool(e > s and covered[s:e].any()) for s, e in offsets)
    return ChatExample(tuple(ids), mask, line, tuple(messages))


# ---- reading a file ----------------------------------------------------------------------


@dataclass
class ChatDataReport:
    records: RecordReport  # lines read and skipped
    max_len: int
    examples: int = 0  # examples kept
    truncated: list[int] = field(default_factory=list)  # lines cut at max_len tokens
    dropped: list[int] = field(default_factory=list)  # lines with no target left after the cut
    tokens: int = 0
    targets: int = 0

    def summary(self) -> str:
        text = (
            f"{self.records.summary()}; {self.examples} examples, {self.tokens:,} tokens, "
            f"{self.targets:,} assistant tokens"
        )
        return text + (f"; {self.warning()}" if self.warning() else "")

    def warning(self) -> str | None:
        if not (self.truncated or self.dropped):
            return None
        text = (
            f"{len(self.truncated)} example(s) longer than {self.max_len} tokens were cut "
            f"({_lines(self.truncated)})"
        )
        if self.dropped:
            text += (
                f", {len(self.dropped)} of them with no assistant token left, so left out "
                f"({_lines(self.dropped)})"
            )
        return text + "; raise --seq-len to keep them whole"


def _lines(lines: list[int]) -> str:
    shown = ", ".join(map(str, lines[:5]))
    return f"line{'s' if len(lines) > 1 else ''} {shown}{', ...' if len(lines) > 5 else ''}"


def load_chat_examples(
    path: str | os.PathLike,
    tokenizer: Tokenizer,
    max_len: int,
    on_error: str = "stop",
    template: str | None = None,
) -> tuple[list[ChatExample], ChatDataReport]:
    """Read `{"messages": [...]}` lines and encode them; conversations the template refuses
    are bad lines like any other (stop with the line number, or skip)."""

    def check(row: dict) -> ChatExample:
        messages = check_chat(row)
        try:
            return encode_chat(tokenizer, messages, template)
        except ChatTemplateError as e:
            raise RecordError(str(e)) from None

    report = ChatDataReport(RecordReport(str(path)), max_len)
    examples = []
    for record in read_records(path, check, on_error, report.records):
        example = dataclasses.replace(record.value, line=record.line)
        kept = limit(example, max_len, report)
        if kept is not None:
            examples.append(kept)
    if report.warning():
        warnings.warn(f"{path}: {report.warning()}", DataWarning, stacklevel=2)
    return examples, report


def limit(example: ChatExample, max_len: int, report: ChatDataReport) -> ChatExample | None:
    """Cut an example to max_len tokens (counted in `report`); None if nothing to learn is left."""
    if len(example.ids) > max_len:
        report.truncated.append(example.line)
        example = dataclasses.replace(
            example, ids=example.ids[:max_len], mask=example.mask[:max_len]
        )
    if not any(example.mask):
        report.dropped.append(example.line)
        return None
    report.examples += 1
    report.tokens += len(example.ids)
    report.targets += example.targets
    return example


# ---- packing and batches -----------------------------------------------------------------


def pack(examples: Sequence[ChatExample], row_len: int) -> list[list[ChatExample]]:
    """Group examples (in order) into rows of at most row_len tokens; none is split."""
    rows, row, used = [], [], 0
    for ex in examples:
        if len(ex.ids) > row_len:
            raise ValueError(f"an example of {len(ex.ids)} tokens does not fit a row of {row_len}")
        if row and used + len(ex.ids) > row_len:
            rows.append(row)
            row, used = [], 0
        row.append(ex)
        used += len(ex.ids)
    if row:
        rows.append(row)
    return rows


@dataclass
class Batch:
    inputs: torch.Tensor  # (B, T) token ids the model reads
    labels: torch.Tensor  # (B, T) the next token after each input
    mask: torch.Tensor  # (B, T) bool: labels that count in the loss
    positions: torch.Tensor | None = None  # (B, T) position ids, restarting per packed example
    attn_mask: torch.Tensor | None = None  # (B, 1, T, T) bool, True = may attend
    tokens: int = 0  # real (non-pad) tokens in the batch

    def model_kwargs(self) -> dict:
        kw = {}
        if self.positions is not None:
            kw["positions"], kw["attn_mask"] = self.positions, self.attn_mask
        return kw


def pad_examples(examples: Sequence[ChatExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole sequences, right-padded: ids (B, L) and their token-aligned mask (B, L)."""
    width = max(len(ex.ids) for ex in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, L)
    mask = torch.zeros(len(examples), width, dtype=torch.bool)  # (B, L)
    for b, ex in enumerate(examples):
        ids[b, : len(ex.ids)] = torch.tensor(ex.ids)
        mask[b, : len(ex.ids)] = torch.tensor(ex.mask)
    return ids, mask


def collate(rows: Sequence[Sequence[ChatExample]], pad_id: int) -> Batch:
    """Rows of one or more examples -> a right-padded batch (inputs, next-token labels, mask).

    Rows holding several examples get positions that restart at each example and a
    block-diagonal causal attention mask; single-example rows use plain causal attention
    (right padding never affects the real tokens before it).
    """
    width = max(sum(len(ex.ids) for ex in row) for row in rows)
    B = len(rows)
    ids = torch.full((B, width), pad_id, dtype=torch.long)  # (B, L)
    mask = torch.zeros(B, width, dtype=torch.bool)  # (B, L)
    segment = torch.full((B, width), -1, dtype=torch.long)  # (B, L) example index, -1 = pad
    positions = torch.zeros(B, width, dtype=torch.long)  # (B, L)
    for b, row in enumerate(rows):
        at = 0
        for s, ex in enumerate(row):
            n = len(ex.ids)
            ids[b, at : at + n] = torch.tensor(ex.ids)
            mask[b, at : at + n] = torch.tensor(ex.mask)
            segment[b, at : at + n] = s
            positions[b, at : at + n] = torch.arange(n)
            at += n
    same = segment[:, 1:] == segment[:, :-1]  # (B, L-1): label belongs to the same example
    batch = Batch(
        inputs=ids[:, :-1],
        labels=ids[:, 1:],
        mask=mask[:, 1:] & same,
        tokens=int((segment >= 0).sum()),
    )
    if any(len(row) > 1 for row in rows):
        seg = segment[:, :-1]  # (B, T)
        T = seg.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool).tril()  # (T, T)
        batch.positions = positions[:, :-1]
        batch.attn_mask = ((seg[:, :, None] == seg[:, None, :]) & causal)[:, None]  # (B, 1, T, T)
    return batch
