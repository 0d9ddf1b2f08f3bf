"""Benchmark: the HTTP server under load - one streaming client, then many at once.

Starts `giraffe serve` (and, when `llama-cpp-python[server]` is installed, llama.cpp's
OpenAI server on the same GGUF file with the same thread count) as a subprocess, then
for each server: one client streaming chat completions back to back for --single-s
seconds, then --clients concurrent clients for --seconds. Reports generated tokens/s
(from each stream's usage, or its content chunks when a server sends no usage), time
to first token p50/p95, errors, and the concurrent/single ratio that batching buys.
Prints one JSON object. Timings on shared machines are noisy: compare ratios measured
in the same run.

`--mix plain,json,tool` makes the load mixed: requests take the kinds in turn - plain
chat, structured output (`response_format` json_schema, constrained per row) and tool
calls (`tool_choice: required`, arguments constrained to the function's schema); each
kind's requests, tokens and errors are counted apart. A mixed load runs on giraffe only
(llama.cpp's server keeps its plain run for the comparison).

    python bench/serve.py [--model smollm2-135m-instruct] [--clients 16] [--seconds 60]
    python bench/serve.py --mix plain,json,tool --clients 16
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))  # the tool the tests check
from machine import machine_facts  # noqa: E402
from weather_tool import WEATHER  # noqa: E402

QUESTIONS = [
    "Tell me about giraffes.",
    "Why is the sky blue?",
    "Write a short poem about the sea.",
    "How do plants make food?",
    "Explain what a computer does.",
    "What should I pack for a trip to the mountains?",
    "Describe a busy market in the morning.",
    "What is the difference between weather and climate?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], url: str, env: dict) -> subprocess.Popen:
    # a file, not a pipe: nobody reads a pipe while the server logs, and a full one blocks it
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"{cmd[:4]} exited: {log.read()[-2000:]}")
        try:
            if httpx.get(url + "/v1/models", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"{cmd[:4]} did not start")


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "hobbies": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "hobbies"],
}
KINDS = {  # what each kind of request adds to a plain chat request
    "plain": {},
    "json": {"response_format": {"type": "json_schema",
                                 "json_schema": {"name": "person", "schema": PERSON}}},
    "tool": {"tools": [WEATHER], "tool_choice": "required"},
}  # fmt: skip


def request_body(kind: str, model: str, i: int, max_tokens: int) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "seed": i,
        "stream": True,
        "stream_options": {"include_usage": True},
        **KINDS[kind],
    }


def first_output(line: str) -> bool:
    """Whether a stream line carries text or tool-call arguments (not an empty delta)."""
    compact = line.replace(": ", ":")
    return any(
        f'"{field}":"' in compact and f'"{field}":""' not in compact
        for field in ("content", "arguments")
    )


async def one_request(client, url: str, model: str, i: int, max_tokens: int, kind="plain"):
    body = request_body(kind, model, i, max_tokens)
    t0 = time.perf_counter()
    first, chunks, usage = None, 0, None
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            # parse only what is needed: the load generator shares the CPU with the server
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            if first_output(line):
                chunks += 1
                first = first or time.perf_counter()
            if '"usage"' in line or '"error"' in line:
                data = json.loads(line[5:])
                if "error" in data:
                    raise RuntimeError(data["error"])
                if data.get("usage"):
                    usage = data["usage"]["completion_tokens"]
    return (first or time.perf_counter()) - t0, usage if usage is not None else chunks


async def load(url, model, clients, seconds, max_tokens, mix=("plain",)) -> dict:
    ttft, tokens, errors = [], 0, []
    per_kind = {k: {"requests": 0, "tokens": 0, "errors": 0} for k in mix}
    end = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def client_loop(client):
        nonlocal tokens
        while time.perf_counter() < end:
            i = next(counter)
            kind = mix[i % len(mix)]
            try:
                t, n = await one_request(client, url, model, i, max_tokens, kind)
                ttft.append(t)
                tokens += n
                per_kind[kind]["requests"] += 1
                per_kind[kind]["tokens"] += n
            except Exception as e:  # noqa: BLE001 - counted and reported
                errors.append(f"{kind}: {str(e)[:200]}")
                per_kind[kind]["errors"] += 1

    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    q = statistics.quantiles(ttft, n=20) if len(ttft) >= 2 else [float("nan")] * 19
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": len(ttft),
        "errors": len(errors),
        "error_examples": errors[:3],
        "generated_tokens": tokens,
        "tokens_per_s": round(tokens / elapsed, 1),
        "ttft_p50_s": round(statistics.median(ttft), 3) if ttft else None,
        "ttft_p95_s": round(q[18], 3),
        **({"per_kind": per_kind} if len(mix) > 1 else {}),
    }


def bench_server(name, cmd, url, model, args, env) -> dict:
    proc = start(cmd, url, env)
    try:
        mix = tuple(args.mix.split(",")) if name == "giraffe" else ("plain",)
        asyncio.run(load(url, model, 1, 5, args.max_tokens, mix))  # warm-up
        single = asyncio.run(load(url, model, 1, args.single_s, args.max_tokens, mix))
        many = asyncio.run(load(url, model, args.clients, args.seconds, args.max_tokens, mix))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    ratio = many["tokens_per_s"] / single["tokens_per_s"] if single["tokens_per_s"] else None
    return {"single": single, "concurrent": many, "concurrent_over_single": round(ratio, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--single-s", type=float, default=20)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mix", default="plain", help="request kinds in turn: plain,json,tool")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    if unknown := set(args.mix.split(",")) - set(KINDS):
        p.error(f"--mix: unknown kinds {sorted(unknown)}; choose from {sorted(KINDS)}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    results = {"machine": machine_facts(), "settings": vars(args)}

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "giraffe.cli", "serve", args.model, "--port", str(port),
           "--max-batch", str(args.clients), "--ctx", "1024"]  # fmt: skip
    results["giraffe"] = bench_server("giraffe", cmd, url, args.model, args, env)

    if args.mix != "plain":
        results["llama.cpp"] = "not run: the mixed load is giraffe's own (json_schema, tools)"
    elif importlib.util.find_spec("llama_cpp") and importlib.util.find_spec("sse_starlette"):
        from giraffe.formats import resolve

        gguf = str(resolve(args.model))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--port", str(port),
               "--host", "127.0.0.1", "--n_threads", str(args.threads), "--n_ctx", "2048",
               "--model_alias", args.model]  # fmt: skip
        results["llama.cpp"] = bench_server("llama.cpp", cmd, url, args.model, args, env)
        ours, theirs = results["giraffe"], results["llama.cpp"]
        results["giraffe_over_llama_cpp"] = {
            k: round(ours[k]["tokens_per_s"] / theirs[k]["tokens_per_s"], 2)
            for k in ("single", "concurrent")
            if theirs[k]["tokens_per_s"]
        }
    else:
        results["llama.cpp"] = "not installed (make peers)"
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
