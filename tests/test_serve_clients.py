"""What agents and evaluation harnesses ask of the server, with the real `openai` client and SmolLM2.

Structured output (`parse` with a pydantic model, json mode under concurrency), tool
calls constrained to the function's schema, logit_bias, and prompt log-probabilities
(`echo` + `logprobs` on token-id prompts) against giraffe's own scoring
(`giraffe.eval.choices.option_logprobs`, the oracle for log-likelihoods).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field
from serve_process import running_server

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
PLACES = [
    "Paris", "Tokyo", "Lima", "Cairo", "Oslo", "Nairobi", "Toronto", "Sydney", "Madrid",
    "Seoul", "Bogota", "Dublin", "Hanoi", "Accra", "Quito", "Vienna", "Manila", "Perth",
    "Dakar", "Lisbon",
]  # fmt: skip


class City(BaseModel):
    name: str = Field(max_length=30)
    country: str = Field(max_length=30)
    continent: Literal["Africa", "Asia", "Europe", "North America", "South America", "Oceania"]
    population_millions: int = Field(ge=0, le=100000)


class WeatherArgs(BaseModel):
    city: str = Field(max_length=40)
    unit: Literal["celsius", "fahrenheit"]


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": WeatherArgs.model_json_schema(),
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def url(smollm2_gguf):
    with running_server(MODEL, "--ctx", "1024", "--max-tokens-limit", "512") as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def lm():
    from giraffe.lm import load

    return load(MODEL)


def test_parse_returns_a_valid_object_for_twenty_prompts(client):
    def ask(place: str):
        return client.chat.completions.parse(
            model=MODEL,
            messages=[{"role": "user", "content": f"Describe the city of {place}."}],
            response_format=City,
            max_tokens=400,
        )

    with ThreadPoolExecutor(10) as pool:  # concurrent: the rows of one batch, each its own matcher
        answers = list(pool.map(ask, PLACES))
    for answer in answers:
        choice = answer.choices[0]
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, City)  # parse() validated it with pydantic


def test_json_mode_in_a_batch_of_eight_concurrent_requests(client, url):
    def ask(i: int) -> str:
        r = client.chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": f"Give a JSON object with the name and age "
                    f"of a person called {PLACES[i]} who is {20 + i}.",
                }
            ],
            response_format={"type": "json_object"},
            max_tokens=300,
            seed=i,
        )
        return r.choices[0]

    with ThreadPoolExecutor(8) as pool:
        choices = list(pool.map(ask, range(8)))
    for choice in choices:
        assert choice.finish_reason == "stop"
        assert isinstance(json.loads(choice.message.content), dict)
    health = httpx.get(url + "/health").json()
    assert max(int(k) for k in health["batch_sizes"]) > 1  # they really shared decode steps


def test_streamed_json_schema_is_valid_when_joined(client):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe Rome."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": City.model_json_schema(), "strict": True},
        },
        max_tokens=400,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    City.model_validate_json(text)


def test_an_unsupported_keyword_is_a_400_naming_it(client):
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Numbers?"}],
            response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
        )
    assert "uniqueItems" in str(e.value) and e.value.body["param"] == "response_format"


def test_required_tool_choice_gives_schema_valid_arguments(client):
    for place in ("Paris", "Lima", "Oslo"):
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"How warm is it in {place}?"}],
            tools=[WEATHER, TIME],
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=200,
        )
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls
        assert call.function.name in ("get_weather", "get_time")
        if call.function.name == "get_weather":
            WeatherArgs.model_validate_json(call.function.arguments)
        else:
            assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_named_tool_choice_calls_that_function_streamed(client):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What time is it in Tokyo?"}],
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=200,
        stream=True,
    )
    names, arguments, reasons = [], "", []
    for chunk in stream:
        for c in chunk.choices:
            for d in c.delta.tool_calls or []:
                if d.function.name:
                    names.append(d.function.name)
                arguments += d.function.arguments or ""
            reasons.append(c.finish_reason)
    assert names == ["get_weather"] and "tool_calls" in reasons
    WeatherArgs.model_validate_json(arguments)


def test_parallel_required_calls_parse_into_several(client):
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Paris and in Rome, please."}],
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=300,
    )
    calls = r.choices[0].message.tool_calls
    assert calls and all(c.function.name == "get_weather" for c in calls)
    for c in calls:
        WeatherArgs.model_validate_json(c.function.arguments)
    assert len({c.id for c in calls}) == len(calls)


def test_logit_bias_of_minus_100_bans_a_token(client, lm):
    prompt = "The capital of France is"
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1, temperature=0)
    first = lm.tokenizer.encode(plain.choices[0].text)[0]
    bias = {str(first): -100}
    banned = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=8, temperature=0, logit_bias=bias
    )
    ids = lm.tokenizer.encode(banned.choices[0].text)
    assert first not in ids and banned.choices[0].text


def test_echo_logprobs_on_token_ids_equal_giraffe_log_likelihoods(client, lm):
    from giraffe.eval.choices import option_logprobs

    tok = lm.tokenizer
    contexts = ["The giraffe is the tallest", "Two plus two is"]
    conts = [" animal on earth.", " four."]
    prompts = [tok.encode(c) + tok.encode(x) for c, x in zip(contexts, conts, strict=True)]
    r = client.completions.create(model=MODEL, prompt=prompts, max_tokens=0, echo=True, logprobs=2)
    for ctx, ids, choice in zip(contexts, prompts, r.choices, strict=True):
        lp = choice.logprobs
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        assert len(lp.tokens) == len(ids) and lp.text_offset[0] == 0
        assert all(len(t) == 2 for t in lp.top_logprobs[1:])
        n = len(tok.encode(ctx))
        expected = option_logprobs(lm.model, ids[:n], [ids[n:]])[0]
        assert sum(lp.token_logprobs[n:]) == pytest.approx(expected, abs=1e-3)
        assert choice.text == tok.decode(ids)


def test_echo_with_generation_appends_the_new_tokens(client):
    r = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=4, echo=True, logprobs=0,
        temperature=0,
    )  # fmt: skip
    choice = r.choices[0]
    assert choice.text.startswith("Once upon a time") and len(choice.text) > 16
    assert len(choice.logprobs.tokens) == len(choice.logprobs.token_logprobs)
    assert choice.logprobs.token_logprobs[-1] is not None


def test_tokenizer_info_describes_the_vocabulary(url, lm):
    info = httpx.get(url + "/tokenizer_info").json()
    assert info["vocab_size"] == lm.tokenizer.vocab_size
    assert info["eos_token_id"] == lm.tokenizer.eos_id and info["max_context"] == 1024
    assert info["special_tokens"]["<|im_end|>"] == 2 and info["fill_in_middle"] is None
