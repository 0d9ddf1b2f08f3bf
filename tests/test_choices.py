"""Multiple-choice scoring: equal to a hand computation, certain models score 1, bad lines named."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

import giraffe
from giraffe.eval.choices import (
    ChoiceError,
    check_choice,
    encode_pair,
    evaluate_choices,
    format_report,
)
from giraffe.files.records import RecordError

TASKS = [
    {"question": "The giraffe is the", "choices": ["tallest animal", "leaves", "No"], "answer": 0},
    {"prompt": "Giraffes eat", "choices": ["trees", "leaves from tall trees"], "answer": 1},
    {"question": "Giraffes sleep", "choices": ["standing up", "No, I am"], "answer": "standing up"},
]


@pytest.fixture(scope="module")
def lm(tiny_folder):
    return giraffe.load(tiny_folder)


def _write(tmp_path, rows, name="tasks.jsonl"):
    path = tmp_path / name
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _hand_logprob(lm, context_ids, option_ids):
    ids = context_ids + option_ids
    logp = F.log_softmax(lm.logits(ids), dim=-1)  # (T, V), one unbatched forward
    n = len(context_ids)
    return sum(logp[n - 1 + i, t].item() for i, t in enumerate(option_ids))


def test_plain_scores_equal_hand_computation(lm, tmp_path):
    report = evaluate_choices(lm, _write(tmp_path, TASKS), chat=False)
    assert not report.chat and len(report.results) == 3
    enc = lm.tokenizer.encode
    for row, result in zip(TASKS, report.results, strict=True):
        question = row.get("question", row.get("prompt"))
        ctx = enc(question)
        expected_n = []
        for choice, got in zip(row["choices"], result.logprobs, strict=True):
            # No merge crosses " " here, so the option's tokens are those after the context's.
            whole = enc(f"{question} {choice}")
            assert whole[: len(ctx)] == ctx
            option = whole[len(ctx) :]
            expected_n.append(len(option))
            assert got == pytest.approx(_hand_logprob(lm, ctx, option), abs=1e-4)
        assert result.tokens == expected_n
        assert result.n_bytes == [len(c) + 1 for c in row["choices"]]  # the space is scored
        per_byte = [lp / b for lp, b in zip(result.logprobs, result.n_bytes, strict=True)]
        assert result.predicted("per_byte") == per_byte.index(max(per_byte))
        assert result.predicted("total") == result.logprobs.index(max(result.logprobs))
    assert report.results[2].task.answer == 0  # answer given as text
    hits = sum(r.predicted("per_token") == r.task.answer for r in report.results)
    assert report.accuracy("per_token") == pytest.approx(hits / 3)


def test_chat_scores_the_option_as_the_assistant_reply(lm, tmp_path):
    report = evaluate_choices(lm, _write(tmp_path, TASKS[:1]))  # the tokenizer has a template
    assert report.chat
    context = lm.render_chat([{"role": "user", "content": TASKS[0]["question"]}])
    assert context.endswith("<|im_start|>assistant\n")
    ctx = lm.tokenizer.encode(context)
    for choice, got in zip(TASKS[0]["choices"], report.results[0].logprobs, strict=True):
        option = lm.tokenizer.encode(context + choice)[len(ctx) :]
        assert got == pytest.approx(_hand_logprob(lm, ctx, option), abs=1e-4)
    assert report.results[0].n_bytes == [len(c) for c in TASKS[0]["choices"]]


class Oracle(torch.nn.Module):
    """Puts almost all probability on the next token of a known sequence, uniform elsewhere."""

    def __init__(self, config, sequences):
        super().__init__()
        self.config = config
        self.next = {tuple(s[: i + 1]): s[i + 1] for s in sequences for i in range(len(s) - 1)}

    def forward(self, ids):
        out = torch.zeros(*ids.shape, self.config.vocab_size)  # (B, T, V)
        for b in range(ids.shape[0]):
            for t in range(ids.shape[1]):
                following = self.next.get(tuple(ids[b, : t + 1].tolist()))
                if following is not None:
                    out[b, t, following] = 30.0
        return out


def test_a_model_certain_of_the_answers_scores_one(lm, tmp_path):
    rows = [{**r, "question": r.get("question", r.get("prompt"))} for r in TASKS]
    truth = []
    for r in rows:
        answer = r["answer"] if isinstance(r["answer"], str) else r["choices"][r["answer"]]
        truth.append(lm.tokenizer.encode(f"{r['question']} {answer}"))
    certain = giraffe.lm.LanguageModel(lm.model, lm.tokenizer)
    certain.model = Oracle(lm.config, truth)
    report = evaluate_choices(certain, _write(tmp_path, rows), chat=False)
    # The long right answer of task 2 wins even by total log-prob: the model is sure of it.
    assert all(report.accuracy(norm) == 1.0 for norm in ("total", "per_token", "per_byte"))
    right = report.results[1]
    assert right.logprobs[1] > -1e-3 and right.logprobs[0] < -20


def test_boundary_merges_keep_the_contexts_tokens(lm):
    tok = lm.tokenizer
    # A clean boundary: the continuation is what follows the context's tokens.
    ctx, cont = encode_pair(tok, "The giraffe is", " the tallest animal")
    assert ctx + cont == tok.encode("The giraffe is the tallest animal")
    # "gir" + "affe" merges into one "giraffe" token across the boundary.
    whole = tok.encode("giraffe")
    assert whole[: len(tok.encode("gir"))] != tok.encode("gir")
    ctx, cont = encode_pair(tok, "gir", "affe", prefix=[7])
    assert ctx == [7, *tok.encode("gir")] and cont == tok.encode("affe")


def test_trailing_whitespace_moves_to_the_option(lm, tmp_path):
    row = {"question": "The giraffe is\n", "choices": ["tall", "short"], "answer": 0}
    result = evaluate_choices(lm, _write(tmp_path, [row]), chat=False).results[0]
    ctx = lm.tokenizer.encode("The giraffe is")
    option = lm.tokenizer.encode("The giraffe is\ntall")[len(ctx) :]
    assert result.logprobs[0] == pytest.approx(_hand_logprob(lm, ctx, option), abs=1e-4)
    assert result.n_bytes == [5, 6]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"choices": ["a", "b"], "answer": 0}, '"question"'),
        ({"question": "q", "choices": [], "answer": 0}, "at least two"),
        ({"question": "q", "choices": ["a", ""], "answer": 0}, "non-empty string"),
        ({"question": "q", "choices": ["a", "a"], "answer": 0}, "same option twice"),
        ({"question": "q", "choices": ["a", "b"], "answer": 2}, "out of range"),
        ({"question": "q", "choices": ["a", "b"], "answer": "c"}, "not one of the choices"),
        ({"question": "q", "choices": ["a", "b"], "answer": True}, "index"),
        ({"question": "q", "choices": ["a", "b"]}, "index"),
    ],
)
def test_check_choice_says_what_is_wrong(row, message):
    with pytest.raises(ChoiceError, match=message):
        check_choice(row)


def test_bad_lines_stop_or_are_skipped(lm, tmp_path):
    rows = [TASKS[0], "{oops", {"question": "q", "choices": ["a"], "answer": 0}, "", TASKS[1]]
    path = _write(tmp_path, rows)
    with pytest.raises(RecordError, match=r"tasks.jsonl line 2: not valid JSON"):
        evaluate_choices(lm, path)
    seen = []
    report = evaluate_choices(lm, path, on_error="skip", progress=lambda d, t: seen.append((d, t)))
    assert [r.line for r in report.results] == [1, 5]
    assert [n for n, _ in report.skipped] == [2, 3] and "at least two" in report.skipped[1][1]
    assert seen == [(1, 2), (2, 2)]
    text = format_report(report, details=True)
    assert "2 tasks" in text and "skipped 2" in text and "line 5:" in text
    data = report.to_dict()
    assert data["tasks"] == 2 and set(data["accuracy"]) == {"total", "per_token", "per_byte"}
    assert data["results"][0]["predicted"]["total"] == report.results[0].predicted("total")
    json.dumps(data)  # --json output is plain JSON


def test_errors_about_the_whole_run(lm, tmp_path):
    with pytest.raises(RecordError, match="does not exist"):
        evaluate_choices(lm, tmp_path / "missing.jsonl")
    long = {"question": "giraffe " * 300, "choices": ["a", "b"], "answer": 0}
    with pytest.raises(ChoiceError, match="line 1: .* more than the model's context"):
        evaluate_choices(lm, _write(tmp_path, [long]), chat=False)
    plain = giraffe.lm.LanguageModel(lm.model, copy.copy(lm.tokenizer))
    plain.tokenizer.chat_template = None
    with pytest.raises(ChoiceError, match="no chat template"):
        evaluate_choices(plain, _write(tmp_path, TASKS), chat=True)
    assert not evaluate_choices(plain, _write(tmp_path, TASKS)).chat


# Whole-sentence options: a 135M model rarely answers with a bare word, so bare options
# are scored as unlikely openings; in a sentence the fact is the only difference.
EASY = [
    ("What is the capital of France?", "The capital of France is {}.", "Paris London Berlin", 0),
    ("What color is the sky on a clear day?", "The sky is {}.", "green blue red", 1),
    ("How many legs does a dog have?", "A dog has {} legs.", "two six four", 2),
    ("What is 2 + 2?", "2 + 2 = {}.", "3 4 5", 1),
    (
        "Which animal is the king of the jungle?",
        "The {} is the king of the jungle.",
        "mouse lion",
        1,
    ),
    ("What do bees make?", "Bees make {}.", "milk honey silk", 1),
    ("What is frozen water called?", "Frozen water is called {}.", "steam ice sand", 1),
    (
        "What is the largest ocean on Earth?",
        "The largest ocean is the {} Ocean.",
        "Arctic Pacific",
        1,
    ),
    ("How many days are in a week?", "A week has {} days.", "five seven ten", 1),
]


@pytest.mark.slow
def test_smollm2_knows_easy_facts(tmp_path):
    lm = giraffe.load("smollm2-135m-instruct", packed=False)
    rows = [
        {"question": q, "choices": [shape.format(w) for w in words.split()], "answer": a}
        for q, shape, words, a in EASY
    ]
    path = _write(tmp_path, rows)
    chat = evaluate_choices(lm, path)
    assert chat.chat and len(chat.results) == len(EASY)
    assert chat.accuracy("per_byte") >= 0.75 and chat.accuracy("total") >= 0.75
    assert evaluate_choices(lm, path, chat=False).accuracy("per_byte") >= 0.75
