"""Benchmark: time to first token of a long chat's later turns, with and without prefix caching.

Starts two `giraffe serve` processes on the same model, one with the prefix cache
(`--prefix-cache-mb`, default 512) and one without (`--prefix-cache-mb 0`), and plays
the same 5-turn conversation against each, alternating, --repeats times. The first user
message carries a long document (~1,300 tokens of docs/serving.md), so the
5th turn's prompt holds ~1,500 tokens of history. Each repeat starts with its own first
line, so no repeat reuses another's blocks: only a conversation's own earlier turns
can be reused. Answers are greedy and short (--answer-tokens), so both servers see the
same history. Reports per-turn time to first streamed token (median over repeats),
the cached server's /health prefix-cache counters, its memory bound, and whether both
servers gave the same answers.

    python bench/prefix_cache.py [--model smollm2-135m-instruct] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from machine import machine_facts  # noqa: E402
from serve import free_port, start  # noqa: E402

FOLLOW_UPS = [
    "Which part of that is about errors?",
    "And what does it say about streaming?",
    "Summarise that in one sentence.",
    "What would you change first?",
]


def document(words: int) -> str:
    text = (ROOT.parent / "docs" / "serving.md").read_text(encoding="utf-8")
    return " ".join(text.split()[:words])


def first_token(url: str, model: str, messages: list[dict], max_tokens: int) -> tuple[float, str]:
    """Seconds to the first streamed content token, and the whole answer."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens,
            "temperature": 0, "stream": True}  # fmt: skip
    t0, first, parts = time.perf_counter(), None, []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            for choice in json.loads(line[5:]).get("choices", []):
                piece = choice["delta"].get("content") or ""
                if piece and first is None:
                    first = time.perf_counter()
                parts.append(piece)
    return (first or time.perf_counter()) - t0, "".join(parts)


def conversation(url: str, model: str, opening: str, turns: int, max_tokens: int):
    """TTFT per turn, the answers, and the last turn's messages: one growing conversation."""
    messages, ttft, answers = [{"role": "user", "content": opening}], [], []
    for turn in range(turns):
        if turn:
            messages.append({"role": "user", "content": FOLLOW_UPS[(turn - 1) % len(FOLLOW_UPS)]})
        seconds, answer = first_token(url, model, messages, max_tokens)
        ttft.append(seconds)
        answers.append(answer)
        last_prompt = list(messages)
        messages.append({"role": "assistant", "content": answer})
    return ttft, answers, last_prompt


def prompt_tokens(url: str, model: str, messages: list[dict]) -> int:
    r = httpx.post(url + "/tokenize", json={"model": model, "messages": messages}, timeout=60)
    r.raise_for_status()
    return r.json()["count"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--words", type=int, default=620, help="words of the document (~2 tokens each)")
    p.add_argument("--answer-tokens", type=int, default=24)
    p.add_argument("--prefix-cache-mb", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    servers = {}
    try:
        for name, mb in (("cached", args.prefix_cache_mb), ("uncached", 0)):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            cmd = [sys.executable, "-m", "giraffe.cli", "serve", args.model, "--port", str(port),
                   "--max-batch", "1", "--ctx", "4096", "--prefix-cache-mb", str(mb)]  # fmt: skip
            servers[name] = (start(cmd, url, env), url)
        text = document(args.words)
        ttft = {name: [] for name in servers}
        same_answers = True
        for r in range(-1, args.repeats):  # repeat -1 warms both servers up, not counted
            opening = f"Conversation {r}. Read these notes, then answer my questions.\n\n{text}"
            answers = {}
            for name, (_, url) in servers.items():  # alternate: one conversation each
                seconds, answers[name], last_messages = conversation(
                    url, args.model, opening, args.turns, args.answer_tokens
                )
                if r >= 0:
                    ttft[name].append(seconds)
            same_answers &= answers["cached"] == answers["uncached"]
        cached_url = servers["cached"][1]
        health = httpx.get(cached_url + "/health", timeout=30).json()
        last_prompt = prompt_tokens(cached_url, args.model, last_messages)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    per_turn = {
        name: [round(statistics.median(rep[t] for rep in runs), 4) for t in range(args.turns)]
        for name, runs in ttft.items()
    }
    last = args.turns - 1
    results = {
        "machine": machine_facts(),
        "settings": vars(args),
        "last_turn_prompt_tokens": last_prompt,
        "ttft_median_s": per_turn,
        "last_turn_speedup": round(per_turn["uncached"][last] / per_turn["cached"][last], 1),
        "same_answers": same_answers,
        "prefix_cache": health.get("prefix_cache"),
    }
    out = json.dumps(results, indent=2)
    print(out)
    if args.out:
        Path(args.out).write_text(out + "\n")


if __name__ == "__main__":
    main()
