"""SFT data: assistant-only masks from the chat template (SmolLM2's and the built-in
chatml, llama2 and plain), refused roles by line, counted truncation, packing that
computes exactly what the examples compute alone."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from test_chat_templates import TOOL_ROUND_TRIP, qwen_template  # noqa: F401 (a fixture)
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from giraffe.config import PRESETS
from giraffe.files.records import RecordError
from giraffe.models import Decoder
from giraffe.tokenizer.chat import ChatTemplateError, render_chat, resolve_template
from giraffe.tokenizer.tokenizer import SpecialTokens, from_backend
from giraffe.train.chat_data import (
    ChatExample,
    assistant_spans,
    collate,
    encode_chat,
    load_chat_examples,
    pack,
    pad_examples,
)
from giraffe.train.data import DataWarning
from giraffe.train.finetune import sft_loss

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>"]
TEXT = (
    "No, I am not a giraffe. The giraffe is the tallest animal. Say hello to the assistant "
    "and the user. Giraffes eat leaves from tall trees and sleep standing up. 0123456789 "
)


@pytest.fixture(scope="module")
def backend():
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([TEXT * 10], trainer)
    return tok


def tokenizer(backend, template: str, bos: str | None, eos: str):
    ids = {t: backend.token_to_id(t) for t in SPECIALS}
    special = SpecialTokens(
        bos_id=ids[bos] if bos else None,
        eos_id=ids[eos],
        stop_ids=frozenset({ids[eos]}),
        chat_template=template,
    )
    return from_backend(backend, special, f"tiny-{template}")


# template: (bos, eos, header before each answer, the answer + end marker as written).
# llama2 and plain put a space between header and answer: the masked run includes it when
# the tokenizer merges it into the answer's first token (" Yes"), not when it stands alone.
TEMPLATES = {
    "chatml": (None, "<|im_end|>", "<|im_start|>assistant\n", "{}<|im_end|>"),
    "llama2": ("<s>", "</s>", "[/INST] ", "{} </s>"),
    "plain": (None, "<|endoftext|>", "<ASSISTANT>: ", "{}\n"),
}
CONVERSATIONS = [
    [  # a system prompt
        {"role": "system", "content": "You are a giraffe."},
        {"role": "user", "content": "Are you tall?"},
        {"role": "assistant", "content": "Yes, the tallest animal."},
    ],
    [  # several turns
        {"role": "user", "content": "Say hello"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What do giraffes eat?"},
        {"role": "assistant", "content": "Leaves from tall trees."},
    ],
    [  # the assistant repeats the user word for word, and says the header's own word
        {"role": "user", "content": "Say hello to the user"},
        {"role": "assistant", "content": "Say hello to the user"},
        {"role": "user", "content": "assistant"},
        {"role": "assistant", "content": "assistant"},
    ],
]


def masked_runs(ex: ChatExample, tok) -> list[tuple[str, str]]:
    """(text before the run, the run's text) for each stretch of masked tokens."""
    runs, start = [], None
    for t, m in enumerate([*ex.mask, False]):
        if m and start is None:
            start = t
        elif not m and start is not None:
            runs.append((tok.decode(ex.ids[:start]), tok.decode(ex.ids[start:t])))
            start = None
    return runs


def check_masks(tok, template: str, header: str, answer: str) -> None:
    for messages in CONVERSATIONS:
        ex = encode_chat(tok, messages)
        text = render_chat(
            messages,
            resolve_template(tok.chat_template),
            add_generation_prompt=False,
            bos_token=tok.bos_token or "",
            eos_token=tok.eos_token or "",
        )
        assert list(ex.ids) == tok.encode(text)  # the mask never changes the tokens
        runs = masked_runs(ex, tok)
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        assert len(runs) == len(replies), template
        for (before, run), reply in zip(runs, replies, strict=True):
            # Each run is the answer and its end marker, right after the assistant header.
            if header.endswith(" ") and run.startswith(" "):
                before, run = before + " ", run[1:]
            assert run == answer.format(reply), template
            assert before.endswith(header), template
        user_text = [m["content"] for m in messages if m["role"] == "user"]
        assert runs[0][0].count(user_text[0]) == 1  # the user's copy lies before the run


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_mask_is_exactly_the_assistant_turns(backend, template):
    bos, eos, header, answer = TEMPLATES[template]
    check_masks(tokenizer(backend, template, bos, eos), template, header, answer)


@pytest.mark.slow
def test_mask_with_smollm2_template():
    from giraffe.lm import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    assert "SmolLM" in tok.chat_template  # its own template (a default system prompt)
    check_masks(tok, "smollm2", "<|im_start|>assistant\n", "{}<|im_end|>")
    # The default system prompt the template adds is context, not a target.
    ex = encode_chat(tok, CONVERSATIONS[1])
    assert "SmolLM" in tok.decode(ex.ids) and "SmolLM" not in tok.decode(
        [i for i, m in zip(ex.ids, ex.mask, strict=True) if m]
    )


def test_a_template_that_rewrites_answers_is_refused(backend):
    trims = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n"
        "{% endfor %}"
    )
    tok = tokenizer(backend, trims, None, "<|im_end|>")
    ok = encode_chat(tok, CONVERSATIONS[0])  # nothing to trim: fine
    assert ok.targets > 0
    padded = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " Hello "}]
    with pytest.raises(ChatTemplateError, match="changes assistant messages"):
        encode_chat(tok, padded)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_roles_the_template_refuses_name_the_line(backend, tmp_path):
    tok = tokenizer(backend, "llama2", "<s>", "</s>")
    twice = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    rows = [{"messages": CONVERSATIONS[0]}, {"messages": [*twice, CONVERSATIONS[0][2]]}]
    path = _write(tmp_path / "chats.jsonl", rows)
    with pytest.raises(RecordError, match=r"chats.jsonl line 2: .*alternate"):
        load_chat_examples(path, tok, 256)
    examples, report = load_chat_examples(path, tok, 256, on_error="skip")
    assert [ex.line for ex in examples] == [1]
    assert [n for n, _ in report.records.skipped] == [2]


def test_truncation_is_counted_and_warned(backend, tmp_path):
    tok = tokenizer(backend, "chatml", None, "<|im_end|>")
    long_answer = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": TEXT}]
    late_answer = [{"role": "user", "content": TEXT}, {"role": "assistant", "content": "ok"}]
    short = CONVERSATIONS[1][:2]
    path = _write(
        tmp_path / "c.jsonl", [{"messages": m} for m in (short, long_answer, late_answer)]
    )
    whole = encode_chat(tok, long_answer)
    limit = 40
    assert len(whole.ids) > limit and len(encode_chat(tok, short).ids) <= limit
    with pytest.warns(
        DataWarning, match=r"2 example\(s\) longer than 40 tokens were cut \(lines 2, 3\), 1 of"
    ):
        examples, report = load_chat_examples(path, tok, limit)
    assert [ex.line for ex in examples] == [1, 2]  # line 3's answer lay past the cut
    assert report.truncated == [2, 3] and report.dropped == [3]
    assert examples[1].ids == whole.ids[:limit] and examples[1].mask == whole.mask[:limit]
    assert "were cut" in report.summary()
    with warnings.catch_warnings():  # a file that fits raises no warning
        warnings.simplefilter("error", DataWarning)
        load_chat_examples(_write(tmp_path / "s.jsonl", [{"messages": short}]), tok, limit)


def _examples(backend):
    tok = tokenizer(backend, "chatml", None, "<|im_end|>")
    return tok, [encode_chat(tok, m) for m in CONVERSATIONS]


def test_pack_fills_rows_in_order(backend):
    _, examples = _examples(backend)
    sizes = [len(ex.ids) for ex in examples]
    row_len = sizes[0] + sizes[1]
    rows = pack(examples * 2, row_len)
    assert [ex for row in rows for ex in row] == examples * 2
    assert all(sum(len(ex.ids) for ex in row) <= row_len for row in rows)
    assert len(rows[0]) == 2  # the first two share a row
    with pytest.raises(ValueError, match="does not fit"):
        pack(examples, min(sizes) - 1)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@torch.no_grad()
def test_packed_rows_compute_what_each_example_computes_alone(backend, arch):
    tok, examples = _examples(backend)
    torch.manual_seed(0)
    model = Decoder(PRESETS[f"{arch}-tiny"].replace(vocab_size=tok.vocab_size)).eval()
    pad = tok.eos_id
    alone = sum(float(sft_loss(model, collate([[ex]], pad))) for ex in examples)
    packed = collate([examples[:2], examples[2:]], pad)
    assert packed.attn_mask is not None and packed.positions is not None
    # Every assistant token is a target once; no label crosses into the next example.
    assert int(packed.mask.sum()) == sum(ex.targets - ex.mask[0] for ex in examples)
    assert float(sft_loss(model, packed)) == pytest.approx(alone, rel=1e-5)
    # Without the block mask, attention would see the previous conversation.
    crossing = collate([examples[:2]], pad)
    crossing.attn_mask, crossing.positions = None, None
    first_two = sum(float(sft_loss(model, collate([[ex]], pad))) for ex in examples[:2])
    assert float(sft_loss(model, crossing)) != pytest.approx(first_two, rel=1e-5)


@torch.no_grad()
def test_padding_never_changes_a_row(backend):
    tok, examples = _examples(backend)
    torch.manual_seed(0)
    model = Decoder(PRESETS["llama-tiny"].replace(vocab_size=tok.vocab_size)).eval()
    batch = collate([[ex] for ex in examples], tok.eos_id)  # right-padded to the longest
    assert batch.attn_mask is None  # one example per row: plain causal attention
    alone = sum(float(sft_loss(model, collate([[ex]], tok.eos_id))) for ex in examples)
    assert float(sft_loss(model, batch)) == pytest.approx(alone, rel=1e-5)
    ids, mask = pad_examples(examples, tok.eos_id)
    assert ids.shape == (3, max(len(ex.ids) for ex in examples))
    assert int(mask.sum()) == sum(ex.targets for ex in examples)


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["content null", "no content"])
def test_an_assistant_turn_of_only_tool_calls_is_a_target(qwen_template, shape):  # noqa: F811
    """OpenAI's shape (tool_calls, content null or left out) was a KeyError: its target is the
    calls the model writes after the generation prompt, through <|im_end|>."""
    messages = [dict(m) for m in TOOL_ROUND_TRIP]
    if shape == "no content":
        del messages[1]["content"]
    text, spans = assistant_spans(messages, qwen_template, stops=["<|im_end|>"])
    assert text == render_chat(TOOL_ROUND_TRIP, qwen_template, add_generation_prompt=False)
    (s1, e1), (s2, e2) = spans
    calls = text[s1:e1]
    assert text[:s1].endswith("How tall is a giraffe, in feet?<|im_end|>\n<|im_start|>assistant\n")
    assert calls.startswith("<tool_call>\n") and calls.endswith("</tool_call><|im_end|>")
    assert calls.count("<tool_call>") == 2 and '"name": "get_height"' in calls
    assert text[s2:e2] == "About 18 feet.<|im_end|>"
