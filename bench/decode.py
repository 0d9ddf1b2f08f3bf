"""Benchmark: load time, prefill tok/s (512-token prompt), decode tok/s (128 tokens), peak RSS.

Runs giraffe (packed blocks, and dequantized float32) and, when installed, `transformers`
and llama.cpp (`llama-cpp-python`) on the same GGUF file, each in its own
process (so peak RSS is its own), with the same thread count, in the same run, and
prints one JSON object with medians and giraffe/peer ratios. Timings on shared
machines are noisy: compare the ratio, not the absolute numbers.

    python bench/decode.py [--model smollm2-135m-instruct] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

from giraffe.eval.speed import peak_rss_mib, prompt_ids


def worker_giraffe(model, repeats, prefill_n, decode_n, packed=True) -> dict:
    """The same measurement as `giraffe bench` (giraffe.eval.speed)."""
    from giraffe.eval.speed import measure_speed

    r = measure_speed(model, prefill_n, decode_n, repeats, packed=packed)
    return {k: v for k, v in r.__dict__.items() if k != "ttft_s"}


def worker_transformers(model: str, repeats: int, prefill_n: int, decode_n: int) -> dict:
    from pathlib import Path

    t0 = time.perf_counter()
    import torch
    import transformers

    from giraffe.formats.registry import resolve

    path = Path(resolve(model))
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, torch_dtype=torch.float32
    ).eval()
    load_s = time.perf_counter() - t0
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    long_ids = torch.tensor([prompt_ids(lambda t: tok(t)["input_ids"], prefill_n)])
    short_ids = long_ids[:, :8]

    def timed(ids, n):
        start = time.perf_counter()
        with torch.inference_mode():
            hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
            )
        return time.perf_counter() - start

    prefill, decode = [], []
    timed(short_ids, 4)
    for _ in range(repeats):
        prefill.append(prefill_n / timed(long_ids, 1))
        first = timed(short_ids, 1)
        decode.append((decode_n - 1) / (timed(short_ids, decode_n) - first))
    return _summary(load_s, prefill, decode)


def measure(run, long_ids, short_ids, repeats, prefill_n, decode_n, load_s) -> dict:
    """run(ids, n) -> timestamps: the start, then one per generated token."""
    prefill, decode = [], []
    run(short_ids, 4)  # warm-up
    for _ in range(repeats):
        s = run(long_ids, 1)
        prefill.append(prefill_n / (s[1] - s[0]))
        s = run(short_ids, decode_n)
        decode.append((decode_n - 1) / (s[-1] - s[1]))
    return _summary(load_s, prefill, decode)


def _summary(load_s, prefill, decode) -> dict:
    return {
        "load_s": round(load_s, 2),
        "prefill_tok_s": round(statistics.median(prefill), 1),
        "decode_tok_s": round(statistics.median(decode), 1),
        "prefill_runs": [round(x, 1) for x in prefill],
        "decode_runs": [round(x, 1) for x in decode],
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def worker_llama_cpp(
    model: str, repeats: int, prefill_n: int, decode_n: int, flash_attn: bool = False
) -> dict:
    t0 = time.perf_counter()
    import llama_cpp

    if not os.path.exists(model):  # an alias: giraffe's registry (which imports torch) finds it
        from giraffe.formats.registry import resolve

        model = str(resolve(model))
    threads = int(os.environ.get("BENCH_THREADS", "2"))
    llm = llama_cpp.Llama(
        model_path=model,
        n_ctx=1024,
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=512,
        flash_attn=flash_attn,
        verbose=False,
    )
    load_s = time.perf_counter() - t0
    long_ids = prompt_ids(lambda t: llm.tokenize(t.encode(), add_bos=False), prefill_n)
    short_ids = long_ids[:8]

    def run(ids, n):
        llm.reset()
        stamps = [time.perf_counter()]
        for k, _ in enumerate(llm.generate(ids, temp=0.0, reset=True)):
            stamps.append(time.perf_counter())
            if k + 1 == n:
                break
        return stamps

    return measure(run, long_ids, short_ids, repeats, prefill_n, decode_n, load_s)


def worker_llama_cpp_flash(model, repeats, prefill_n, decode_n) -> dict:
    return worker_llama_cpp(model, repeats, prefill_n, decode_n, flash_attn=True)


def worker_giraffe_float(model, repeats, prefill_n, decode_n) -> dict:
    return worker_giraffe(model, repeats, prefill_n, decode_n, packed=False)


WORKERS = {
    "giraffe": worker_giraffe,  # GGUF blocks kept packed, compiled kernel
    "giraffe-float": worker_giraffe_float,  # everything dequantized to float32
    "transformers": worker_transformers,
    "llama.cpp": worker_llama_cpp,
    "llama.cpp-flash-attn": worker_llama_cpp_flash,  # its faster prompt path, same file
}
# peer -> module that must exist
PEERS = {
    "transformers": "transformers",
    "llama.cpp": "llama_cpp",
    "llama.cpp-flash-attn": "llama_cpp",
}


def run_worker(name: str, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--model",
        args.model,
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
        "--prefill-tokens",
        str(args.prefill_tokens),
        "--decode-tokens",
        str(args.decode_tokens),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--worker", choices=sorted(WORKERS))
    args = p.parse_args()
    if args.worker:
        os.environ["BENCH_THREADS"] = str(args.threads)
        if not args.worker.startswith("llama.cpp"):  # llama.cpp's peak RSS is its own
            import torch

            torch.set_num_threads(args.threads)
        fn = WORKERS[args.worker]
        print(json.dumps(fn(args.model, args.repeats, args.prefill_tokens, args.decode_tokens)))
        return
    from machine import machine_facts

    from giraffe.formats.registry import resolve

    result = {"machine": machine_facts(), "model": args.model, "threads": args.threads}
    args.model = str(resolve(args.model))  # a path: no worker needs giraffe's registry
    for name in ("giraffe", "giraffe-float"):
        result[name] = run_worker(name, args)
    for peer, module in PEERS.items():
        if not importlib.util.find_spec(module):
            continue
        result[peer] = run_worker(peer, args)
        for ours in ("giraffe", "giraffe-float"):
            a, b = result[ours], result[peer]
            if "error" not in a and "error" not in b:
                keys = ("prefill_tok_s", "decode_tok_s", "load_s", "peak_rss_mib")
                result[f"ratio_{ours}_vs_{peer}"] = {k: round(a[k] / b[k], 2) for k in keys}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
