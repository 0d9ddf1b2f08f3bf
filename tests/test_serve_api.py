"""The OpenAI-compatible API, driven by the official `openai` client against a real server process.

SmolLM2 serves chat and completions; answers are compared with the same model run
in-process (`giraffe.load`), so the server adds no numerical change of its own.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from serve_process import running_server, wait_until

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
EMBED = "minilm-l6"
CTX = 1024
QUESTION = [{"role": "user", "content": "What is the capital of Japan?"}]


@pytest.fixture(scope="module")
def url(smollm2_gguf):
    args = [MODEL, "--embed-model", EMBED, "--ctx", str(CTX), "--max-tokens-limit", "512"]
    with running_server(*args) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def lm():
    from giraffe.lm import load

    return load(MODEL)


def test_models_lists_chat_and_embedding_models(client):
    ids = {m.id for m in client.models.list().data}
    assert ids == {MODEL, EMBED}


def test_chat_equals_the_model_run_in_process(client, lm):
    reply = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=40
    )
    expected = lm.complete(lm.chat_ids(QUESTION), temperature=0, max_new_tokens=40)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.text
    assert "Tokyo" in choice.message.content
    assert choice.finish_reason == expected.finish_reason
    assert reply.usage.prompt_tokens == len(lm.chat_ids(QUESTION))
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_chat_sends_the_same_text_in_pieces(client):
    kw = {"model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 40}
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(
        client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert sum(1 for p in pieces if p) > 3, "the answer should arrive in several chunks"
    assert "".join(pieces) == whole
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_completion_logprobs_match_the_model(client, lm):
    prompt = "The tallest animal in the world is the"
    reply = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=6, temperature=0, logprobs=3
    )
    expected = lm.complete(prompt, temperature=0, max_new_tokens=6, logprobs=True, top_logprobs=3)
    lp = reply.choices[0].logprobs
    assert reply.choices[0].text == expected.text
    assert lp.token_logprobs == pytest.approx(expected.logprobs, abs=1e-3)
    assert all(len(alts) == 3 for alts in lp.top_logprobs)
    assert "".join(lp.tokens) == expected.text


def test_chat_logprobs_in_openai_shape(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.logprob - 1e-6  # greedy: the top one
        assert bytes(entry.bytes).decode() == entry.token


def test_seeded_sampling_repeats_and_n_gives_several_choices(client):
    kw = {"model": MODEL, "messages": QUESTION, "temperature": 1.0, "max_tokens": 20, "seed": 3}
    a = client.chat.completions.create(n=2, **kw)
    b = client.chat.completions.create(n=2, **kw)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1]


def test_stop_strings_and_extra_knobs(client):
    reply = client.completions.create(
        model=MODEL,
        prompt="1, 2, 3, 4,",
        max_tokens=30,
        temperature=0,
        stop=[" 7"],
        extra_body={"top_k": 5, "repetition_penalty": 1.0, "min_p": 0.05},
    )
    assert reply.choices[0].finish_reason == "stop"
    assert " 7" not in reply.choices[0].text and "6" in reply.choices[0].text


def test_embeddings_equal_the_encoder_in_process(client):
    from giraffe.embedder import load

    texts = ["A giraffe is a tall animal.", "Paris is the capital of France."]
    reply = client.embeddings.create(model=EMBED, input=texts)  # the client asks for base64
    got = [d.embedding for d in reply.data]
    expected = load(EMBED).embed(texts)
    assert len(got) == 2 and len(got[0]) == expected.shape[1]
    assert got == [pytest.approx(list(row), abs=1e-6) for row in expected]
    assert reply.usage.prompt_tokens > 0


def test_tokenize_and_detokenize_round_trip(url, lm):
    text = "Giraffes sleep standing up."
    r = httpx.post(url + "/tokenize", json={"text": text}).json()
    assert r["tokens"] == lm.tokenizer.encode(text) and r["count"] == len(r["tokens"])
    assert httpx.post(url + "/detokenize", json={"tokens": r["tokens"]}).json()["text"] == text
    chat = httpx.post(url + "/tokenize", json={"messages": QUESTION}).json()
    assert chat["tokens"] == lm.chat_ids(QUESTION)


BAD_REQUESTS = [
    ("malformed JSON", "/v1/chat/completions", b'{"model": "x", "messages": [', 400, None),
    ("wrong type", "/v1/chat/completions", {"model": MODEL, "messages": QUESTION, "temperature": "hot"}, 400, "temperature"),
    ("messages not a list", "/v1/chat/completions", {"model": MODEL, "messages": "hi"}, 400, "messages"),
    ("unknown model", "/v1/chat/completions", {"model": "gpt-4", "messages": QUESTION}, 404, "model"),
    ("negative max_tokens", "/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": -1}, 400, "max_tokens"),
    ("max_tokens over the limit", "/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": 100000}, 400, "max_tokens"),
    ("logit_bias outside the vocabulary", "/v1/chat/completions", {"model": MODEL, "messages": QUESTION, "logit_bias": {"99999999": 5}}, 400, "logit_bias"),
    ("logit_bias not a token id", "/v1/chat/completions", {"model": MODEL, "messages": QUESTION, "logit_bias": {"x": 5}}, 400, "logit_bias"),
    ("tokenize with empty messages", "/tokenize", {"text": None, "messages": []}, 400, "messages"),
    ("unsupported schema keyword", "/v1/chat/completions", {"model": MODEL, "messages": QUESTION, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}}}, 400, "response_format"),
    ("unsatisfiable schema", "/v1/chat/completions", {"model": MODEL, "messages": QUESTION, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": 5, "maximum": 2}}}}, 400, "response_format"),
    ("tool_choice without tools", "/v1/chat/completions", {"model": MODEL, "messages": QUESTION, "tool_choice": "required"}, 400, "tool_choice"),
    ("suffix without FIM tokens", "/v1/completions", {"model": MODEL, "prompt": "def f(", "suffix": "\n"}, 400, "suffix"),
    ("empty embedding input", "/v1/embeddings", {"model": EMBED, "input": []}, 400, "input"),
    ("token id out of range", "/detokenize", {"tokens": [10**9]}, 400, "tokens"),
    ("no such endpoint", "/v1/engines", {}, 404, None),
]  # fmt: skip


@pytest.mark.parametrize(
    "name,path,body,status,param", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(
    url, name, path, body, status, param
):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(url + path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    assert httpx.get(url + "/health").json()["status"] == "ok"


def test_ten_megabyte_body_is_refused_with_413(url, client):
    big = json.dumps({"model": MODEL, "prompt": "x " * (5 << 20)}).encode()
    r = httpx.post(
        url + "/v1/completions", content=big, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    assert client.models.list().data  # still serving


def test_prompt_over_the_context_is_a_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="giraffe " * 1500, max_tokens=5)
    assert e.value.code == "context_length_exceeded" and "1024" in e.value.message
    assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=2).choices


def test_cancelling_a_stream_frees_its_slot(url):
    def health():
        return httpx.get(url + "/health").json()

    before = health()["decode_steps"]
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 500, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        got = [line for line, _ in zip(lines, range(6), strict=False) if line.startswith("data:")]
        assert got and health()["running"] == 1
    # the client hung up after a few chunks: its row is freed long before 500 tokens
    assert wait_until(lambda: health()["running"] == 0, timeout=30)
    assert health()["decode_steps"] - before < 250
