"""Cost of constrained decoding: decode tokens/s with and without a JSON-Schema mask, same run.

Batch 1 through `LanguageModel.complete`, and 16 concurrent streams through the
server's scheduler (continuous batching, one matcher per row). The schema asks for a
long string (minLength), so constrained rows cannot stop before the token budget and
both sides generate exactly the same number of tokens; unconstrained rows use
ignore_eos. Runs alternate (plain, constrained, plain, constrained) and the best of
each is kept, since the machine is shared. Prints JSON with the ratio.

    PYTHONPATH=src python bench/constrained.py [--model smollm2-135m-instruct] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from giraffe.lm import load
from giraffe.serve.scheduler import Job, Scheduler

SCHEMA = {
    "type": "object",
    "properties": {"story": {"type": "string", "minLength": 4000}},
    "required": ["story"],
}


def batch1(lm, prompt, n, constrained) -> float:
    kw = {"json_schema": SCHEMA} if constrained else {"ignore_eos": True}
    lm.complete(prompt, max_new_tokens=2, temperature=0, **kw)  # warm
    start = time.perf_counter()
    c = lm.complete(prompt, max_new_tokens=n, temperature=0, **kw)
    assert len(c.token_ids) == n, (len(c.token_ids), c.finish_reason)
    return n / (time.perf_counter() - start)


def streams(lm, prompt, n, k, constrained) -> float:
    kw = {"json_schema": SCHEMA} if constrained else {"ignore_eos": True}
    cfg = lm.decoding(max_new_tokens=n, temperature=0.8, **kw)
    ids = lm.encode_prompt(prompt)
    sched = Scheduler(lm, max_batch=k, max_queue=k, max_context=512)
    counts = [0] * k
    done = [threading.Event() for _ in range(k)]

    def deliver(i):
        def take(update):
            counts[i] += update.event is not None
            if update.done:
                done[i].set()

        return take

    try:
        start = time.perf_counter()
        for i in range(k):
            sched.submit(Job(ids, cfg, deliver(i), seed=i))
        for d in done:
            d.wait()
        elapsed = time.perf_counter() - start
    finally:
        sched.close()
    assert counts == [n] * k, counts
    return sum(counts) / elapsed


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    lm = load(args.model)
    prompt = lm.chat_ids([{"role": "user", "content": "Write a long story about a giraffe."}])
    lm.token_table  # noqa: B018 - built once per model, not part of decoding
    out = {"model": args.model, "tokens": args.tokens, "streams": args.streams}
    for name, fn in (
        ("batch1", lambda c: batch1(lm, prompt, args.tokens, c)),
        (f"streams{args.streams}", lambda c: streams(lm, prompt, args.tokens, args.streams, c)),
    ):
        plain, constrained = [], []
        for _ in range(args.repeats):
            plain.append(fn(False))
            constrained.append(fn(True))
        out[name] = {
            "plain_tok_s": round(max(plain), 2),
            "constrained_tok_s": round(max(constrained), 2),
            "ratio": round(max(constrained) / max(plain), 3),
        }
        print(name, json.dumps(out[name]), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
