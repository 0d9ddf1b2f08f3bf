"""The ready-made verifiable rewards and the flags generated from tuning configs."""

from __future__ import annotations

import argparse

import pytest

from giraffe.train import verifiers as v
from giraffe.train.tune_flags import add_config_flags, config_from_args, field_help
from giraffe.train.tune_settings import DPOConfig, FinetuneConfig, RewardConfig, RLConfig


def test_number_answer():
    assert v.number_answer("", " 12.", answer="12") == 1.0
    assert v.number_answer("", "13", answer="12") == v.FORMAT_ONLY
    assert v.number_answer("", "8 + 4 = 12", answer="12") == v.IN_TEXT
    assert v.number_answer("", "8 + 4 = 112", answer="12") == 0.0
    assert v.number_answer("", "twelve", answer=12) == 0.0


def test_equation_answer_pays_only_the_right_equation():
    assert v.equation_answer("", " 4 + 3 = 7.", answer="7", question="4 + 3") == 1.0
    assert v.equation_answer("", "4+3=7", answer=7, question="4 + 3") == 1.0
    assert v.equation_answer("", "4 + 3 = 8", answer="7", question="4 + 3") == 0.0
    assert v.equation_answer("", "3 + 4 = 7", answer="7", question="4 + 3") == 0.0
    assert v.equation_answer("", "7", answer="7", question="4 + 3") == 0.0
    assert v.equation_answer("", "4 + 3 = 7\n\nSo 7.", answer="7", question="4 + 3") == 0.0
    assert v.equation_answer("", "The answer: 4 + 3 = 7", answer="7", question="4 + 3") == 0.0


def test_tagged_and_exact_answers():
    assert v.tagged_answer("", "so <answer> 42 </answer>", answer="42") == 1.0
    assert v.tagged_answer("", "<answer>41</answer>", answer="42") == v.FORMAT_ONLY
    assert v.tagged_answer("", "42", answer="42") == 0.0
    assert v.exact_answer("", " Paris\n", answer="Paris") == 1.0
    assert v.exact_answer("", "It is Paris", answer="Paris") == 0.0


def test_json_and_regex():
    assert v.json_valid("", '```json\n{"a": 1, "b": 2}\n```', keys=["a", "b"]) == 1.0
    assert v.json_valid("", '{"a": 1}', keys=["a", "b"]) == 0.0
    assert v.json_valid("", "{'a': 1}") == 0.0
    assert v.regex_match("", " 2024-01-31 ", pattern=r"\d{4}-\d{2}-\d{2}") == 1.0
    assert v.regex_match("", "on 2024-01-31", pattern=r"\d{4}-\d{2}-\d{2}") == 0.0


def test_unit_tests_run_apart_with_a_time_limit():
    tests = "assert add(2, 3) == 5"
    assert v.unit_tests("", "```python\ndef add(a, b):\n    return a + b\n```", tests) == 1.0
    assert v.unit_tests("", "def add(a, b):\n    return a - b", tests) == 0.0
    assert v.unit_tests("", "def add(a, b):\n    while True: pass", tests, timeout=0.5) == 0.0


@pytest.mark.parametrize("cls", [FinetuneConfig, DPOConfig, RewardConfig, RLConfig])
def test_every_field_has_a_flag_with_help(cls):
    p = argparse.ArgumentParser()
    add_config_flags(p, cls)
    helps = field_help(cls)
    dests = {a.dest: a for a in p._actions}
    from dataclasses import fields

    for f in fields(cls):
        if f.name in ("progress", "stop_step"):
            continue
        assert f.name in dests, f.name
        assert helps.get(f.name), f"{cls.__name__}.{f.name} has no comment to show as help"


def test_flags_keep_defaults_in_the_config():
    p = argparse.ArgumentParser()
    add_config_flags(p, RLConfig, required=("prompts",))
    args = p.parse_args(["m", "--prompts", "p.jsonl", "--lr", "0.001", "--no-scale-rewards"])
    cfg = config_from_args(RLConfig, args)
    assert cfg.lr == 0.001 and cfg.scale_rewards is False and cfg.prompts == "p.jsonl"
    assert cfg.group == RLConfig().group and cfg.progress  # untouched fields keep defaults
    # a re-declared field shows the nearest comment (RL's), not the shared one
    assert "1e-4 with LoRA, 1e-6" in field_help(RLConfig)["lr"]
    assert "2e-4 with LoRA" in field_help(FinetuneConfig)["lr"]
