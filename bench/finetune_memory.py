"""Peak memory and seconds per step: full fine-tuning vs LoRA vs QLoRA, in one run.

    python bench/finetune_memory.py [--steps 6] [--repeats 2]

Each variant runs `giraffe.train.finetune.finetune` on SmolLM2-135M-Instruct and the
persona demo set in its own fresh process (peak RSS is a per-process high-water mark),
the variants alternating over the repeats so that machine noise falls on all of them;
seconds per step are the median over steps after the first (warm-up) of every run.
Writes bench/results/finetune-memory.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "finetune" / "persona_train.jsonl"
VARIANTS = {
    "full": {"lora_r": 0},
    "lora": {"lora_r": 8, "lora_targets": "all-linear"},
    "qlora": {"lora_r": 8, "lora_targets": "all-linear", "qlora": True},
}
CHILD = """
import json, sys, time
sys.path.insert(0, {src!r})
from giraffe.train.finetune import FinetuneConfig, finetune
import giraffe.train.finetune as ft
times = []
original = ft.sft_step
def timed(*a, **k):
    t0 = time.perf_counter()
    out = original(*a, **k)
    times.append(time.perf_counter() - t0)
    return out
ft.sft_step = timed
cfg = FinetuneConfig(**json.loads(sys.argv[1]))
finetune(cfg)
from giraffe.eval.speed import peak_rss_mib
print(json.dumps({{"step_s": times, "peak_rss_mib": peak_rss_mib()}}))
"""


def run(name: str, steps: int, out: Path) -> dict:
    settings = dict(
        model="smollm2-135m-instruct",
        data=str(DATA),
        out=str(out / name),
        max_steps=steps,
        batch_size=4,
        eval_every=10_000,
        eval_examples=8,
        samples=0,
        progress=False,
        **VARIANTS[name],
    )
    code = CHILD.format(src=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(settings)], capture_output=True, text=True
    )
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--variants", default="full,lora,qlora")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "finetune-memory.json"))
    args = p.parse_args()
    names = args.variants.split(",")
    seen = {n: {"step_s": [], "peak_rss_mib": []} for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name in names if r % 2 == 0 else names[::-1]:
                got = run(name, args.steps, Path(tmp))
                seen[name]["step_s"] += got["step_s"][1:]  # the first step warms up
                seen[name]["peak_rss_mib"].append(got["peak_rss_mib"])
                print(name, json.dumps(got), flush=True)
    table = {
        n: {
            "median_step_s": round(statistics.median(v["step_s"]), 3),
            "peak_rss_mib": round(max(v["peak_rss_mib"])),
        }
        for n, v in seen.items()
    }
    base = table.get("full")
    if base:
        for row in table.values():
            row["rss_vs_full"] = round(row["peak_rss_mib"] / base["peak_rss_mib"], 2)
            row["time_vs_full"] = round(row["median_step_s"] / base["median_step_s"], 2)
    result = {
        "machine": f"{platform.machine()}, {resource.getpagesize()} B pages",
        "steps": args.steps,
        "repeats": args.repeats,
        "batch_size": 4,
        "results": table,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
