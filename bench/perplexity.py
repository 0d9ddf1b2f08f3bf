"""Benchmark: perplexity of the same GGUF under giraffe and llama.cpp on the same text.

The text is Python's own documentation (`pydoc_data.topics`, shipped with every
CPython), so the number is reproducible offline. Both sides score llama.cpp-style
windows (second half of each `--ctx` window). Prints JSON with the relative difference.

    python bench/perplexity.py [--model smollm2-135m-instruct] [--chars 40000] [--ctx 512]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time


def fixed_text(chars: int) -> str:
    import pydoc_data.topics as topics

    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))[:chars]


def giraffe_ppl(model: str, text: str, ctx: int, packed: bool) -> dict:
    import giraffe
    from giraffe.eval.perplexity import perplexity

    lm = giraffe.load(model, packed=packed)
    start = time.perf_counter()
    r = perplexity(lm.model, lm.tokenizer.encode(text), ctx, lm.tokenizer.decode)
    return {
        "perplexity": round(r.perplexity, 4),
        "bits_per_byte": round(r.bits_per_byte, 4),
        "tokens_scored": r.tokens_scored,
        "seconds": round(time.perf_counter() - start, 1),
    }


def llama_cpp_ppl(model: str, text: str, ctx: int, threads: int) -> dict:
    import llama_cpp
    import numpy as np

    from giraffe.formats.registry import resolve

    llm = llama_cpp.Llama(
        model_path=str(resolve(model)),
        n_ctx=ctx,
        n_batch=ctx,
        logits_all=True,
        n_threads=threads,
        verbose=False,
    )
    ids = llm.tokenize(text.encode(), add_bos=False, special=False)
    start, nll, count = time.perf_counter(), 0.0, 0
    for w in range(len(ids) // ctx):
        chunk = ids[w * ctx : (w + 1) * ctx]
        llm.reset()
        llm.eval(chunk)
        logits = np.array(llm.scores[:ctx], dtype=np.float64)
        for t in range(ctx // 2, ctx):
            row = logits[t - 1]
            nll += np.log(np.exp(row - row.max()).sum()) + row.max() - row[chunk[t]]
            count += 1
    return {
        "perplexity": round(math.exp(nll / count), 4),
        "tokens_scored": count,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--chars", type=int, default=40000)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    text = fixed_text(args.chars)
    out = {
        "model": args.model,
        "text": f"pydoc_data.topics, first {args.chars} characters",
        "ctx": args.ctx,
    }
    out["giraffe"] = giraffe_ppl(args.model, text, args.ctx, packed=True)
    out["giraffe-float"] = giraffe_ppl(args.model, text, args.ctx, packed=False)
    if importlib.util.find_spec("llama_cpp"):
        peer = out["llama.cpp"] = llama_cpp_ppl(args.model, text, args.ctx, args.threads)
        out["relative_difference_vs_llama.cpp"] = round(
            out["giraffe"]["perplexity"] / peer["perplexity"] - 1, 5
        )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
