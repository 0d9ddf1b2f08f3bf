"""Benchmark: sentence embeddings per second, giraffe's MiniLM vs sentence-transformers.

Both embed the same sentences (a fixed mix of lengths, like chunks of documents) with
the same batch size and thread count, in the same run, alternating, and the JSON gives
medians and the giraffe/sentence-transformers ratio (the goal is >= 1). Results must
agree (cosine >= 0.9999 per row, checked here too). Compare ratios, not absolute
numbers, on a shared machine.

    python bench/embed.py [--n 2000] [--batch 32] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

WORDS = (
    "the giraffe kettle train library island tomato bank backup festival lantern ferry "
    "puffin warranty descale cabin bicycle compaction segment harvest interest deposit "
    "village harbour soup procession opening hours borrow microfilm lighthouse museum"
).split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.choice([6, 12, 25, 50, 120])  # words; chunks are often 100-200 tokens
        out.append(" ".join(rng.choice(WORDS) for _ in range(length)).capitalize() + ".")
    return out


def timed(fn, texts, repeats: int) -> tuple[float, object]:
    fn(texts[:64])  # warm-up: first-call allocations and thread pools are not the steady state
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn(texts)
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import giraffe
    from giraffe.formats import resolve

    texts = sentences(args.n)
    ours = giraffe.load("minilm-l6")
    t_ours, v_ours = timed(lambda t: ours.embed(t, batch_size=args.batch), texts, args.repeats)
    result = {"sentences": args.n, "batch": args.batch, "threads": args.threads}
    result["giraffe_sentences_per_s"] = args.n / t_ours
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        result["sentence_transformers"] = "not installed"
    else:
        st = SentenceTransformer(str(resolve("minilm-l6")), device="cpu")

        def theirs(t):
            return st.encode(t, batch_size=args.batch, normalize_embeddings=True)

        t_st, v_st = timed(theirs, texts, args.repeats)
        result["sentence_transformers_sentences_per_s"] = args.n / t_st
        result["ratio_giraffe_over_st"] = t_st / t_ours
        result["min_cosine"] = float(np.min(np.sum(v_ours * v_st, axis=1)))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
