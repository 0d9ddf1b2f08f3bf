"""Benchmark: which registered chat model should `make chat` start? Quality, set-up, speed.

Asks each model the same 20 plain questions (greedy, a short answer each, through
giraffe's Python API: `giraffe.lm.load(alias).chat(...)`) and scores an answer right when
it contains one of the expected keywords (whole words, case-insensitive). Also reports
what the model costs to set up (its download size from the registry, its load time) and
its decode speed over the answers. Each model runs in its own process. Speeds on a
shared machine are noisy; the quality share is what the choice rests on.

    python bench/chat_quality.py [--models smollm2-135m-instruct qwen2.5-coder-0.5b-instruct]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time

SYSTEM = "Answer the question in one short sentence."
MAX_NEW_TOKENS = 40
# (question, expected keywords: any one of them, as a whole word, makes the answer right)
QUESTIONS = [
    ("What is the capital of France?", ["paris"]),
    ("How many days are there in a week?", ["7", "seven"]),
    ("What is 12 plus 7?", ["19", "nineteen"]),
    ("What colour is the sky on a clear day?", ["blue"]),
    ("Which planet is known as the Red Planet?", ["mars"]),
    ("What is the largest ocean on Earth?", ["pacific"]),
    ("Who wrote the play Romeo and Juliet?", ["shakespeare"]),
    ("What is the chemical formula of water?", ["h2o", "h₂o"]),
    ("How many legs does a spider have?", ["8", "eight"]),
    ("At how many degrees Celsius does water freeze?", ["0", "zero"]),
    ("What is the tallest animal in the world?", ["giraffe", "giraffes"]),
    ("On which continent is Egypt?", ["africa"]),
    ("What is the opposite of hot?", ["cold"]),
    ("Which gas do plants take in from the air to make food?", ["carbon dioxide", "co2"]),
    ("How many minutes are there in an hour?", ["60", "sixty"]),
    ("What is the square root of 81?", ["9", "nine"]),
    ("Which language is mainly spoken in Brazil?", ["portuguese"]),
    ("What do bees make from nectar?", ["honey"]),
    ("What is the capital of Japan?", ["tokyo"]),
    ("Who painted the Mona Lisa?", ["leonardo", "da vinci"]),
]


def correct(answer: str, keywords: list[str]) -> bool:
    return any(re.search(rf"(?<!\w){re.escape(k)}(?!\w)", answer.lower()) for k in keywords)


def worker(alias: str) -> dict:
    """Load one model, answer every question; runs in its own process."""
    import torch

    from giraffe.formats.registry import REGISTRY
    from giraffe.lm import load

    t0 = time.perf_counter()
    lm = load(alias)
    load_s = time.perf_counter() - t0
    rows, tokens, gen_s = [], 0, 0.0
    for question, keywords in QUESTIONS:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        t = time.perf_counter()
        done = lm.complete(lm.chat_ids(messages), temperature=0.0, max_new_tokens=MAX_NEW_TOKENS)
        gen_s += time.perf_counter() - t
        tokens += len(done.token_ids)
        rows.append(
            {"question": question, "answer": done.text, "correct": correct(done.text, keywords)}
        )
    right = sum(r["correct"] for r in rows)
    return {
        "alias": alias,
        "correct": right,
        "questions": len(rows),
        "quality": right / len(rows),
        "download_mb": round(REGISTRY[alias].size / 1e6, 1),
        "load_s": round(load_s, 2),
        "answer_tokens": tokens,
        "decode_tok_s": round(tokens / gen_s, 1),
        "threads": torch.get_num_threads(),
        "answers": rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models", nargs="+", default=["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    results = []
    for alias in args.models:
        out = subprocess.run(
            [sys.executable, __file__, "--worker", alias], capture_output=True, text=True
        )
        if out.returncode != 0:
            sys.exit(f"{alias} failed:\n{out.stderr[-2000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = {
        r["alias"]: {k: r[k] for k in ("quality", "download_mb", "load_s", "decode_tok_s")}
        for r in results
    }
    print(
        json.dumps(
            {
                "benchmark": "chat_quality",
                "system_prompt": SYSTEM,
                "max_new_tokens": MAX_NEW_TOKENS,
                "decoding": "greedy",
                "note": "shared machine: speeds are noisy; quality is deterministic",
                "summary": summary,
                "models": results,
            },
            indent=1,
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
