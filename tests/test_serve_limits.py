"""Server limits with a tiny model: API key, full queue, per-request deadline, CORS."""

from __future__ import annotations

import concurrent.futures

import httpx
import openai
import pytest
from serve_process import running_server


def completion(url, name, max_tokens=20, key=None, **extra):
    headers = {"authorization": f"Bearer {key}"} if key else {}
    body = {"model": name, "prompt": "The giraffe", "max_tokens": max_tokens, **extra}
    return httpx.post(url + "/v1/completions", json=body, headers=headers, timeout=120)


def test_api_key_is_required_and_checked(tiny_folder):
    with running_server(str(tiny_folder), env={"GIRAFFE_API_KEY": "s3cret"}) as url:
        name = tiny_folder.name
        assert completion(url, name).status_code == 401
        wrong = completion(url, name, key="s3cre")
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
        assert completion(url, name, key="s3cret").status_code == 200
        client = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert client.completions.create(model=name, prompt="a", max_tokens=2).choices
        assert httpx.get(url + "/health").status_code == 200  # health needs no key
        assert httpx.get(url + "/").status_code == 200  # nor the page (it asks for the key)


def test_a_full_queue_answers_503_and_the_others_finish(tiny_folder):
    args = [str(tiny_folder), "--max-batch", "1", "--max-queue", "1", "--ctx", "4096"]
    with running_server(*args, "--max-tokens-limit", "4000") as url:
        name = tiny_folder.name
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            replies = list(
                pool.map(lambda _: completion(url, name, 3000, ignore_eos=True), range(6))
            )
        codes = sorted(r.status_code for r in replies)
        assert 200 in codes and 503 in codes, codes
        busy = next(r for r in replies if r.status_code == 503)
        assert busy.json()["error"]["type"] == "server_overloaded" and busy.headers["retry-after"]
        assert completion(url, name, 2).status_code == 200


@pytest.mark.slow
def test_a_request_past_its_deadline_gets_504(smollm2_gguf):
    # SmolLM2 needs seconds for 1000 tokens here (llama.cpp's speed); the limit is 0.5 s
    with running_server("smollm2-135m-instruct", "--timeout", "0.5", "--ctx", "2048") as url:
        r = completion(url, "smollm2-135m-instruct", 1000, ignore_eos=True)
        assert r.status_code == 504, r.text
        assert "time limit" in r.json()["error"]["message"]
        assert httpx.get(url + "/health").json()["running"] == 0


@pytest.mark.parametrize("origin_flag", [False, True])
def test_cors_is_off_unless_an_origin_is_given(tiny_folder, origin_flag):
    args = [str(tiny_folder)] + (["--cors-origin", "http://example.test"] if origin_flag else [])
    with running_server(*args) as url:
        r = httpx.get(url + "/v1/models", headers={"origin": "http://example.test"})
        allowed = r.headers.get("access-control-allow-origin")
        assert allowed == ("http://example.test" if origin_flag else None)
