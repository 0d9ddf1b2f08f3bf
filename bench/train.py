"""Benchmark: training tokens/s and model FLOP utilisation of giraffe's trainer and of a
minimal nanoGPT-style loop (`bench/ref_train.py`) on the same config, in one run.

Both train the same GPT-2 shape (the `gpt2-{preset}` preset, vocabulary from a BPE
tokenizer trained on the demo corpus) on the same prepared shards, with the same batch,
sequence length and thread count, alternating runs; the medians and the giraffe/reference
ratio are printed as JSON. Model FLOPs per token follow Chinchilla/PaLM: 6 x parameters
(forward + backward) + 12 x layers x width x sequence (attention); utilisation divides
the achieved FLOP/s by the float32 matmul FLOP/s measured on this machine in the same
run (not a datasheet peak). Giraffe's rate comes from its own JSONL log (steps after
the first two; evaluation and checkpoint time excluded), the reference's from its loop.

    python bench/train.py [--preset small] [--steps 30] [--repeats 3] [--threads 2]
    python bench/train.py --preset tiny --steps 4 --repeats 1   # does it run?
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from machine import machine_facts  # noqa: E402
from ref_train import train as ref_train  # noqa: E402

from giraffe.config import PRESETS  # noqa: E402
from giraffe.models import build_model  # noqa: E402
from giraffe.tokenizer.train import train_tokenizer  # noqa: E402
from giraffe.train.corpus import demo_documents  # noqa: E402
from giraffe.train.data import prepare  # noqa: E402
from giraffe.train.loop import TrainConfig, model_config, pretrain  # noqa: E402


def matmul_peak(n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def giraffe_rate(data: Path, cfg: TrainConfig, work: Path) -> float:
    out = work / f"giraffe-{time.monotonic_ns()}"
    pretrain(TrainConfig(**{**cfg.__dict__, "out": str(out)}))
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in log if "loss" in r and r["step"] > 2]
    return len(rates) / sum(1 / r for r in rates)  # harmonic mean = total tokens / total time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--vocab", type=int, default=8192)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="giraffe-bench-train-"))
    tok = train_tokenizer((t for _, t in demo_documents()), "bpe", a.vocab)
    prepare(["demo"], tok, work / "data", val_fraction=0.05)
    cfg = TrainConfig(
        arch="gpt2",
        preset=a.preset,
        data=str(work / "data"),
        max_steps=a.steps,
        batch_size=a.batch,
        seq_len=a.seq_len,
        eval_every=10**6,
        save_every=10**6,
        eval_batches=1,
        progress=False,
    )
    mcfg = model_config(cfg, tok.vocab_size, 0)
    base = PRESETS[f"gpt2-{a.preset}"]
    shape = dict(
        vocab=mcfg.vocab_size,
        width=base.hidden_size,
        layers=base.n_layers,
        heads=base.n_heads,
        hidden=base.intermediate_size,
        ctx=mcfg.max_position_embeddings,
    )
    params = build_model(mcfg).num_parameters()
    flops_per_token = 6 * params + 12 * base.n_layers * base.hidden_size * a.seq_len
    ours, ref = [], []
    for _ in range(a.repeats):
        ref.append(ref_train(str(work / "data"), shape, a.steps, a.batch, a.seq_len))
        ours.append(giraffe_rate(work / "data", cfg, work))
    peak = matmul_peak()
    result = {
        "config": {
            "preset": f"gpt2-{a.preset}",
            "parameters": params,
            "batch": a.batch,
            "seq_len": a.seq_len,
            "steps": a.steps,
            "threads": a.threads,
        },
        "matmul_peak_gflops": round(peak / 1e9, 2),
        "giraffe": {
            "tokens_per_s": round(statistics.median(ours), 1),
            "mfu": round(statistics.median(ours) * flops_per_token / peak, 4),
            "runs": [round(r, 1) for r in ours],
        },
        "reference": {
            "tokens_per_s": round(statistics.median(ref), 1),
            "mfu": round(statistics.median(ref) * flops_per_token / peak, 4),
            "runs": [round(r, 1) for r in ref],
        },
        "giraffe_over_reference": round(statistics.median(ours) / statistics.median(ref), 3),
        "machine": machine_facts(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
