"""Constrained decoding: the grammar, not the model, makes the output valid.

A tiny random model (it knows nothing) must still produce JSON that matches the
schema, through all three doors: `LanguageModel`, the scheduler's continuous batch
(rows with and without constraints side by side, each equal to its run alone) and
the command line. Tool-call parsing is checked on each family's syntax.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from giraffe.generate.constraint import ConstraintError
from giraffe.generate.params import DecodingError
from giraffe.lm import load
from giraffe.serve import tools as T
from giraffe.serve.scheduler import Job, Scheduler

SCHEMA = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["cat", "dog"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 30},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
    },
    "required": ["kind", "age", "tags"],
    "additionalProperties": False,
}


def valid(text: str) -> bool:
    value = json.loads(text)
    return (
        set(value) == {"kind", "age", "tags"}
        and value["kind"] in ("cat", "dog")
        and isinstance(value["age"], int)
        and 0 <= value["age"] <= 30
        and all(t in ("a", "b") for t in value["tags"])
        and len(value["tags"]) <= 2
    )


@pytest.fixture(scope="module")
def lm(tiny_folder):
    return load(tiny_folder)


def test_random_model_writes_valid_json_when_constrained(lm):
    for seed in range(4):
        c = lm.complete("The giraffe", json_schema=SCHEMA, max_new_tokens=120, seed=seed)
        assert c.finish_reason == "stop", c.text
        assert valid(c.text), c.text
    free = lm.complete("The giraffe", max_new_tokens=30, seed=0).text
    with pytest.raises(ValueError):
        json.loads(free)  # the same model unconstrained writes no JSON: the mask did it


def test_response_format_and_pydantic_models_reach_the_same_constraint(lm):
    from typing import Literal

    from pydantic import BaseModel, Field

    class Pet(BaseModel):
        kind: Literal["cat", "dog"]
        name: str = Field(max_length=6)
        legs: int = Field(ge=0, le=8)

    text = lm.complete("x", response_format=Pet, max_new_tokens=240, seed=1).text
    assert Pet.model_validate_json(text)
    obj = lm.complete("x", response_format={"type": "json_object"}, max_new_tokens=200, seed=2)
    if obj.finish_reason == "stop":
        assert isinstance(json.loads(obj.text), dict)
    else:
        assert obj.text.lstrip().startswith("{")


def test_bad_schemas_name_the_keyword(lm):
    with pytest.raises(ConstraintError, match="uniqueItems") as e:
        lm.decoding(json_schema={"type": "array", "uniqueItems": True})
    assert e.value.keyword == "uniqueItems"
    with pytest.raises(ConstraintError, match="nsatisfiable"):
        lm.decoding(json_schema={"type": "integer", "minimum": 5, "maximum": 2})
    with pytest.raises(DecodingError, match="num_beams"):
        lm.decoding(json_schema=SCHEMA, num_beams=2)
    with pytest.raises(ConstraintError, match="response_format type"):
        lm.decoding(response_format={"type": "xml"})


def test_batched_rows_with_and_without_constraints_equal_their_runs_alone(lm):
    configs = [
        dict(json_schema=SCHEMA, max_new_tokens=200, temperature=0),
        dict(max_new_tokens=12, temperature=0),
        dict(json_schema=SCHEMA, max_new_tokens=200, seed=5, temperature=1.0),
    ]
    prompts = ["The giraffe", "Giraffes eat", "No, I am"]
    alone = [lm.complete(p, **kw).text for p, kw in zip(prompts, configs, strict=True)]
    sched = Scheduler(lm, max_batch=4, max_queue=8, max_context=256)
    texts = ["", "", ""]
    done = [threading.Event() for _ in prompts]

    def deliver(i):
        def take(update):
            texts[i] += update.text
            assert update.error is None, update.error
            if update.done:
                done[i].set()

        return take

    try:
        for i, (p, kw) in enumerate(zip(prompts, configs, strict=True)):
            cfg = lm.decoding(**kw)
            sched.submit(Job(lm.encode_prompt(p), cfg, deliver(i)))
        assert all(d.wait(120) for d in done)
    finally:
        sched.close()
    assert texts == alone
    assert valid(texts[0]) and valid(texts[2])


def test_logit_bias_bans_and_boosts(lm):
    plain = lm.complete("The giraffe", max_new_tokens=1, temperature=0).token_ids[0]
    banned = lm.complete("The giraffe", max_new_tokens=5, temperature=0, logit_bias={plain: -100})
    assert plain not in banned.token_ids
    boosted = lm.complete("The giraffe", max_new_tokens=3, temperature=0, logit_bias={"7": 100})
    assert boosted.token_ids == [7, 7, 7]


def test_command_line_json_schema_file(tiny_folder, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    cmd = [sys.executable, "-m", "giraffe.cli", "generate", str(tiny_folder), "The giraffe",
           "--json-schema", str(schema), "--max-new-tokens", "120", "--seed", "3", "--no-stream"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert valid(r.stdout.strip())
    missing = subprocess.run(cmd[:-7] + ["--json-schema", str(tmp_path / "nope.json")],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert missing.returncode == 2 and "nope.json" in missing.stderr


NAMES = frozenset({"get_weather", "get_time"})


@pytest.mark.parametrize(
    "fmt,text,expected",
    [
        (T.HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
         '\n<tool_call>\n{"name": "get_time", "arguments": {"city": "Rome"}}\n</tool_call>',
         [("get_weather", {"city": "Oslo"}), ("get_time", {"city": "Rome"})]),
        (T.HERMES, '{"name": "get_weather", "arguments": {"city": "Oslo"}}',
         [("get_weather", {"city": "Oslo"})]),
        (T.LLAMA3, '<|python_tag|>{"name": "get_time", "parameters": {"city": "Lima"}}',
         [("get_time", {"city": "Lima"})]),
        (T.MISTRAL, '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Oslo"}}, '
         '{"name": "get_time", "arguments": {"city": "Oslo"}}]',
         [("get_weather", {"city": "Oslo"}), ("get_time", {"city": "Oslo"})]),
        (T.GENERIC, '[{"name": "get_time", "arguments": {}}]', [("get_time", {})]),
        (T.GENERIC, "It is sunny.", []),
        (T.GENERIC, '{"name": "unknown_tool", "arguments": {}}', []),
    ],
)  # fmt: skip
def test_tool_calls_parse_in_each_family(fmt, text, expected):
    _, calls = T.parse_calls(text, fmt, NAMES)
    got = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]
    assert got == expected


def test_required_tool_grammar_makes_a_random_model_call_validly(lm):
    tools = [{"name": "get_weather", "parameters": {
        "type": "object", "properties": {"unit": {"enum": ["celsius", "fahrenheit"]},
                                         "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["unit", "days"]}}]  # fmt: skip
    for fmt in (T.HERMES, T.GENERIC_LIST, T.MISTRAL):
        grammar = T.call_grammar(fmt, tools, parallel=True)
        # a seed whose three calls end within 200 tokens: a random model spends about half
        # its seeds' budgets on the whitespace the grammar allows (then "length", no call)
        text = lm.complete("x", grammar=grammar, max_new_tokens=200, seed=3).text
        _, calls = T.parse_calls(text, fmt, frozenset({"get_weather"}))
        assert calls, (fmt.name, text)
        for c in calls:
            args = json.loads(c["function"]["arguments"])
            assert args["unit"] in ("celsius", "fahrenheit") and 1 <= args["days"] <= 7


def test_masking_a_batch_equals_masking_each_row_alone(lm):
    """Rows with and without constraints, in different grammar states, masked in one pass."""
    import numpy as np

    from giraffe.generate.constraint import Constraint, mask_rows

    cfg = lm.decoding(json_schema=SCHEMA)
    first, later = (Constraint.for_config(cfg, lm.token_table) for _ in range(2))
    for t in lm.tokenizer.encode('{"kind": "'):
        later.advance(t)
    V = lm.model.config.vocab_size
    logits = np.random.default_rng(0).standard_normal((4, V)).astype(np.float32)
    for rows in ([first, None, later, None], [first, later, first, later]):
        masked = mask_rows(logits, rows)
        assert masked.dtype == np.float32
        for i, c in enumerate(rows):
            want = logits[i].copy()
            if c is not None:
                allowed = np.zeros(V, dtype=bool)
                allowed[: c.table.n_vocab] = c.allowed()
                want[~allowed] = float("-inf")
            assert np.array_equal(masked[i], want), (rows, i)
    assert mask_rows(logits, [None] * 4) is logits  # nothing to mask: no copy
    assert not np.array_equal(mask_rows(logits, [first] * 4)[0], mask_rows(logits, [later] * 4)[0])
