"""The routes in process (FastAPI's test client) over a tiny random model: fast checks of the
request/response contract that do not need a real model or a server process."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from giraffe.lm import load
from giraffe.serve.app import create_app
from giraffe.serve.state import Server


@pytest.fixture(scope="module")
def app(tiny_folder):
    lm = load(tiny_folder)
    server = Server(lm, "tiny")
    with TestClient(create_app(server), raise_server_exceptions=False) as client:
        yield client, lm


def test_tokenize_with_null_text_and_empty_messages_is_a_400(app):
    client, _ = app
    r = client.post("/tokenize", json={"text": None, "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_max_tokens_zero_echo_scores_the_prompt_streamed_or_not(app):
    client, lm = app
    ids = lm.tokenizer.encode("The giraffe is tall")
    body = {"model": "tiny", "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 1}
    plain = client.post("/v1/completions", json=body).json()
    lp = plain["choices"][0]["logprobs"]
    assert lp["token_logprobs"][0] is None and len(lp["tokens"]) == len(ids)
    expected = lm.prompt_logprobs(ids)
    assert lp["token_logprobs"][1:] == pytest.approx([e for e, _ in expected[1:]], abs=1e-5)
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        lines = [x for x in r.iter_lines() if x.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunk = json.loads(lines[0][6:])
    assert chunk["choices"][0]["text"] == plain["choices"][0]["text"]


def test_a_value_error_inside_is_a_500_not_a_400(app, monkeypatch):
    client, lm = app

    def broken(*a, **k):
        raise ValueError("an internal bug")

    monkeypatch.setattr(lm, "chat_ids", broken)
    r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": [
        {"role": "user", "content": "hi"}]})  # fmt: skip
    assert r.status_code == 500 and "internal" in r.json()["error"]["message"]


def test_tokenize_takes_vllm_prompt_and_detokenize_answers_with_it(app):
    # lm-eval's remote tokenizer speaks vLLM's names: {"prompt": ...} in, "prompt" out
    client, lm = app
    ids = client.post("/tokenize", json={"prompt": "The giraffe"}).json()["tokens"]
    assert ids == lm.tokenizer.encode("The giraffe", add_special_tokens=False)
    back = client.post("/detokenize", json={"tokens": ids}).json()
    assert back["prompt"] == back["text"] == "The giraffe"
    both = client.post("/tokenize", json={"prompt": "a", "text": "a"})
    assert both.status_code == 400


def test_an_explainers_input_error_is_a_400_and_its_fault_a_500(tiny_folder):
    """/inside answers the explainers' own input error (giraffe.config.InputError's kind)
    with a 400 naming the text, and anything else they raise - a plain ValueError
    included - with a 500."""
    from giraffe.explain.inputs import ExplainInputError

    def refuses(text):
        raise ExplainInputError("the text cannot be shown: shorten it")

    def breaks(text):
        raise ValueError("an internal bug")

    server = Server(load(tiny_folder), "tiny", views={"refuses": refuses, "breaks": breaks})
    with TestClient(create_app(server), raise_server_exceptions=False) as client:
        refused = client.post("/inside/refuses", json={"text": "hello"})
        broken = client.post("/inside/breaks", json={"text": "hello"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "text"
    assert "shorten it" in refused.json()["error"]["message"]
    assert broken.status_code == 500 and "internal" in broken.json()["error"]["message"]
