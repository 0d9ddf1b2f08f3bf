"""Cost of constrained decoding: decode tokens/s with and without a JSON-Schema mask, same run.

Batch 1 through `LanguageModel.complete`, and 16 concurrent streams through the
server's scheduler (continuous batching, one matcher per row). The schema asks for a
long string (minLength), so constrained rows cannot stop before the token budget and
both sides generate exactly the same number of tokens; unconstrained rows use
ignore_eos. Runs alternate (plain, constrained, plain, constrained); the ratio of
the medians is the figure to quote (the ratio of the best runs is kept beside it).
Then, steadier on a busy machine, the median time of one decode step and of its rows'
masks measured back to back (`step_share`).
Prints JSON with the ratios.

    PYTHONPATH=src python bench/constrained.py [--model smollm2-135m-instruct] [--tokens 64] [--out F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

from giraffe.lm import load
from giraffe.serve.scheduler import Job, Scheduler

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine_facts  # noqa: E402

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


def step_share(lm, k: int, repeats: int = 7) -> dict:
    """Median time of one decode step of k rows (forward + head) and of the k rows' masks,
    measured back to back: the share of a step constrained decoding adds."""
    import torch

    from giraffe.generate.constraint import Constraint, mask_rows

    cfg = lm.decoding(json_schema=SCHEMA)
    masks = [Constraint.for_config(cfg, lm.token_table) for _ in range(k)]
    for c in masks:
        for t in lm.tokenizer.encode('{"story": "Once upon a time'):
            c.advance(t)
    model, ids = lm.model, torch.randint(0, 1000, (k, 64))
    forward, masking = [], []
    with torch.inference_mode():
        for _ in range(repeats):
            cache = model.new_cache(k, 80)
            model.hidden(ids, cache=cache)
            start = time.perf_counter()
            h = model.hidden(ids[:, :1], cache=cache, positions=torch.full((k, 1), 64))
            logits = model.head(h[:, -1]).float().numpy()  # (B, V): the core speaks numpy
            forward.append(time.perf_counter() - start)
            start = time.perf_counter()
            mask_rows(logits, masks)
            masking.append(time.perf_counter() - start)
    f, m = statistics.median(forward), statistics.median(masking)
    return {"step_ms": round(1e3 * f, 2), "masks_ms": round(1e3 * m, 3), "share": round(m / f, 4)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the JSON here")
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
            "plain_tok_s": [round(x, 1) for x in plain],
            "constrained_tok_s": [round(x, 1) for x in constrained],
            "ratio_of_medians": round(statistics.median(constrained) / statistics.median(plain), 3),
            "ratio_of_best": round(max(constrained) / max(plain), 3),
        }
        print(name, json.dumps(out[name]), flush=True)
    for k in (1, args.streams):
        out[f"step_share_{k}"] = step_share(lm, k)
        print(f"step_share_{k}", json.dumps(out[f"step_share_{k}"]), flush=True)
    out["machine"] = machine_facts()
    print(json.dumps(out))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
