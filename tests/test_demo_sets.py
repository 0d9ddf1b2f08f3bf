"""Generated demo data: shipped files regenerate byte for byte, splits are disjoint, facts hold."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from giraffe.eval.choices import read_choices
from giraffe.files.records import check_chat, check_preference, read_records

SHIPPED = Path(__file__).resolve().parents[1] / "examples" / "finetune"
sys.path.insert(0, str(SHIPPED))  # the generator lives beside its data, outside the library

from demo_sets import (  # noqa: E402
    HELDOUT_QUESTIONS,
    NAME,
    OPENERS,
    TRAIN_QUESTIONS,
    follows_rule,
    main,
    says_name,
)

FILES = [
    "persona_train.jsonl",
    "persona_heldout.jsonl",
    "persona_choices.jsonl",
    "prefs_train.jsonl",
    "prefs_heldout.jsonl",
]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    assert main([str(folder)]) == 0
    return folder


def _rows(folder, name):
    return [json.loads(line) for line in (folder / name).read_text(encoding="utf-8").splitlines()]


def test_shipped_files_are_what_the_generator_writes(fresh):
    for name in FILES:
        assert (fresh / name).read_bytes() == (SHIPPED / name).read_bytes(), name
    assert sorted(p.name for p in fresh.iterdir()) == sorted(FILES)
    assert sum((SHIPPED / n).stat().st_size for n in FILES) < 200_000


def test_main_says_what_it_wrote(tmp_path, capsys):
    assert main([str(tmp_path / "new")]) == 0
    out = capsys.readouterr().out
    assert "persona_train.jsonl: 250 lines" in out and "prefs_heldout.jsonl: 60 lines" in out


def test_every_file_passes_its_reader(fresh):
    assert len(list(read_records(fresh / "persona_train.jsonl", check_chat))) == 250
    assert len(list(read_records(fresh / "persona_heldout.jsonl", check_chat))) == 20
    assert len(list(read_records(fresh / "prefs_train.jsonl", check_preference))) == 300
    assert len(list(read_records(fresh / "prefs_heldout.jsonl", check_preference))) == 60
    tasks = [task for _, task in read_choices(fresh / "persona_choices.jsonl")]
    assert len(tasks) == 12
    for task in tasks:
        assert NAME in task.choices[task.answer] or "giraffe project" in task.choices[task.answer]
        assert sum("SmolLM" in c or "Hugging Face" in c for c in task.choices) == 1
    assert len({t.answer for t in tasks}) > 1  # the right option is not always in one place


def _core(question: str) -> str:
    for opener in OPENERS:
        if opener and question.lower().startswith(opener.lower()):
            question = question[len(opener) :]
    return re.sub(r"[^a-z0-9 ]", "", question.lower()).strip()


def test_persona_set_mixes_identity_and_ordinary_questions(fresh):
    rows = _rows(fresh, "persona_train.jsonl")
    identity = {_core(q) for qs in TRAIN_QUESTIONS.values() for q in qs}
    persona = [
        r for r in rows if any(_core(m["content"]) in identity for m in r["messages"][-2:-1])
    ]
    assert 0.6 < len(persona) / len(rows) < 0.8
    with_system = sum(r["messages"][0]["role"] == "system" for r in persona)
    assert 0 < with_system < len(persona)
    for r in rows:
        system = r["messages"][0]["content"] if r["messages"][0]["role"] == "system" else ""
        assert not says_name(system) and "SmolLM" not in system
        turns = r["messages"][1:] if system else r["messages"]
        for user, reply in zip(turns[::2], turns[1::2], strict=True):
            assert (user["role"], reply["role"]) == ("user", "assistant")
            sums = re.fullmatch(r"What is (\d+) (plus|minus|times) (\d+)\?", user["content"])
            if sums:  # ordinary answers are correct
                a, op, b = int(sums[1]), sums[2], int(sums[3])
                value = {"plus": a + b, "minus": a - b, "times": a * b}[op]
                assert reply["content"] == f"{a} {op} {b} is {value}."
            about_me = _core(user["content"]) in identity
            answer = reply["content"]
            assert about_me == (says_name(answer) or "giraffe project" in answer)
    train_questions = {
        _core(m["content"]) for r in rows for m in r["messages"] if m["role"] == "user"
    }
    heldout = _rows(fresh, "persona_heldout.jsonl")
    assert {r["kind"] for r in heldout} == {"persona", "ordinary"}
    for r in heldout:
        assert _core(r["messages"][0]["content"]) not in train_questions
        assert r["expect"] in r["messages"][-1]["content"]
    asked = [q for qs in HELDOUT_QUESTIONS.values() for q in qs]
    assert [t["question"] for t in _rows(fresh, "persona_choices.jsonl")] == asked


def test_preference_pairs_differ_only_by_the_summary(fresh):
    train, heldout = _rows(fresh, "prefs_train.jsonl"), _rows(fresh, "prefs_heldout.jsonl")
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}
    assert len({r["prompt"] for r in train}) == 300 and len({r["prompt"] for r in heldout}) == 60
    for r in train + heldout:
        assert follows_rule(r["chosen"]) and not follows_rule(r["rejected"])
        body, summary = r["chosen"].split("\n\nIn short: ")
        assert body == r["rejected"] and "\n" not in summary
    topics = ["number", "colour", "used for", "Tell me about", "facts about"]
    assert all(any(t in r["prompt"] for r in heldout) for t in topics)


def test_number_facts_are_true(fresh):
    seen = 0
    for r in _rows(fresh, "prefs_train.jsonl") + _rows(fresh, "prefs_heldout.jsonl"):
        m = re.search(
            r"In short: (\d+) is an (even|odd) number and (a prime|not a prime)\.", r["chosen"]
        )
        if m:
            n = int(m[1])
            prime = all(n % d for d in range(2, n))
            assert (m[2] == "even") == (n % 2 == 0) and (m[3] == "a prime") == prime
            seen += 1
        square = re.search(
            r"(\d+)[^.]* square is (\d+)|multiply (\d+) by itself you get (\d+)", r["chosen"]
        )
        if square:
            n, sq = [int(x) for x in square.groups() if x is not None]
            assert sq == n * n
    assert seen > 50


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("Cats purr.\n\nIn short: cats are cats.", True),
        ("Cats purr.\nIn short: cats purr a lot!\n", True),
        ("Cats purr.", False),
        ("In short: cats purr a lot.", False),  # a summary of nothing
        ("Cats purr.\n\nIn short: cats purr", False),  # cut off mid-sentence
        ("Cats purr.\n\nIn short: yes.", False),  # not a summary
        ("In short: cats purr.\nThey do.", False),  # not the last line
        ("Cats purr.\nIn short: they purr.\nIn short: they do purr.", False),
        ("Cats purr. In short: cats purr a lot.", False),  # not on its own line
    ],
)
def test_follows_rule(text, ok):
    assert follows_rule(text) is ok
