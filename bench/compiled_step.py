"""Decode speed of one packed GGUF model on the compiled whole-layer step against its own
module path (the same loaded model, its runtime's `step` set or None), alternating rounds in one
process so a shared machine's load hits both alike; prints tok/s per round and the ratio
of the medians. Greedy decoding from a fixed prompt through the model's KV cache.

    PYTHONPATH=src python bench/compiled_step.py gemma-3-270m --prompt 32 --tokens 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from giraffe.formats.gguf import load_gguf
from giraffe.formats.registry import resolve


@torch.inference_mode()
def decode(model, prompt: int, tokens: int) -> tuple[float, float, list[int]]:
    """(tok/s of the one-token steps, the share of their time in the layers (the rest is
    the output head, the same on both paths), the greedy tokens)."""
    ids = (torch.arange(prompt) * 7919 % 1000 + 10)[None]  # (1, prompt), fixed
    cache = model.new_cache(1, prompt + tokens)
    nxt = model.head(model.hidden(ids, cache=cache)[:, -1]).argmax(-1)  # (1,)
    out, layers = [int(nxt)], 0.0
    start = time.perf_counter()
    for _ in range(tokens - 1):
        t0 = time.perf_counter()
        h = model.hidden(nxt[:, None], cache=cache)[:, -1]
        layers += time.perf_counter() - t0
        nxt = model.head(h).argmax(-1)
        out.append(int(nxt))
    total = time.perf_counter() - start
    return (tokens - 1) / total, layers / total, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="registry alias or .gguf path")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch and kernel threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_gguf(resolve(args.model), packed=True)
    fast = model.runtime.step
    if fast is None:
        raise SystemExit(f"{args.model}: no compiled step for this model (compiled_block false)")
    speeds, layer_tps = {"compiled": [], "module": []}, {"compiled": [], "module": []}
    texts = {}
    decode(model, 4, 4)  # warm-up: kernels, int8 tiles
    for r in range(args.rounds):
        for name, step in (("compiled", fast), ("module", None)):
            model.runtime.step = step
            tps, share, texts[name] = decode(model, args.prompt, args.tokens)
            speeds[name].append(tps)
            layer_tps[name].append(tps / share)
            print(
                f"round {r} {name:8s} {tps:7.1f} tok/s (layers alone {tps / share:7.1f} tok/s, "
                f"{share:.0%} of the time)",
                flush=True,
            )
    model.runtime.step = fast
    med = {k: statistics.median(v) for k, v in speeds.items()}
    lmed = {k: statistics.median(v) for k, v in layer_tps.items()}
    same = sum(a == b for a, b in zip(texts["compiled"], texts["module"], strict=True))
    print(
        f"median compiled {med['compiled']:.1f} tok/s, module {med['module']:.1f} tok/s, "
        f"ratio {med['compiled'] / med['module']:.2f}x; layers alone "
        f"{lmed['compiled']:.1f} vs {lmed['module']:.1f} tok/s, ratio "
        f"{lmed['compiled'] / lmed['module']:.2f}x; greedy tokens equal: "
        f"{same}/{args.tokens}, threads {torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
