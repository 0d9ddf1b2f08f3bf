"""Benchmark: what each quantization type costs - file size, bits/weight, perplexity, KL, speed.

The float reference is SmolLM2-135M-Instruct written as an F32 GGUF by giraffe. The only
copy of SmolLM2 that exists offline is Q4_1, so this "float" model is its Q4_1 weights
dequantized: re-quantizing it to Q4_1 (or Q5_1/Q8_0, whose grids contain Q4_1's) is
nearly lossless for that reason alone. Read the K-quant and Q4_0 rows as the honest ones.
Every type is written by `giraffe quantize` (int8/int4 as folders: symmetric, groups of
32, embeddings kept float32, which their size includes); when llama-cpp-python is installed, its own
Q4_K_M of the same F32 file is measured too (quality by giraffe's evaluation, speed by
giraffe running that file). Speed runs in a subprocess per file (own peak RSS).

    python bench/quant_table.py [--types f16,q8_0,...] [--chars 24000] [--no-speed]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine_facts  # noqa: E402
from perplexity import fixed_text  # noqa: E402

TYPES = "f16,q8_0,q6_k,q5_k,q5_1,q5_0,q4_k,q4_1,q4_0,int8,int4"  # int*: folders, groups of 32


def quality(path: Path, reference, ids: list[int], ctx: int) -> dict:
    import giraffe
    from giraffe.eval.divergence import divergence
    from giraffe.explain.sizes import total_parameters

    lm = giraffe.load(path)
    r = divergence(lm.model, reference.model, ids, ctx)
    files = [path] if path.is_file() else list(path.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files)
    return {
        "file_mib": round(size / 2**20, 1),
        "bits_per_weight": round(8 * size / total_parameters(lm.config), 2),
        "perplexity": round(r.perplexity, 4),
        "kl_mean": round(r.kl_mean, 5),
        "kl_p99": round(r.kl_p99, 4),
        "top1_agreement": round(r.top1_agreement, 4),
    }


def speed(path: Path, threads: int) -> dict:
    cmd = [sys.executable, "-m", "giraffe.cli", "bench", str(path), "--json"]
    out = subprocess.run([*cmd, "--threads", str(threads)], capture_output=True, text=True)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1]}
    r = json.loads(out.stdout)
    return {k: r[k] for k in ("prefill_tok_s", "decode_tok_s", "peak_rss_mib")}


def _ignore_log(level, text, user_data) -> None:
    return None


_QUIET = None


def llama_cpp_q4_k_m(source: Path, out: Path) -> Path | None:
    try:
        import ctypes

        import llama_cpp
    except ImportError:
        return None
    global _QUIET
    _QUIET = llama_cpp.llama_log_callback(_ignore_log)  # kept alive: C holds the pointer
    llama_cpp.llama_log_set(_QUIET, None)  # its per-tensor log would drown the table
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    rc = llama_cpp.llama_model_quantize(
        str(source).encode(), str(out).encode(), ctypes.byref(params)
    )
    return out if rc == 0 else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--types", default=TYPES)
    p.add_argument("--chars", type=int, default=24000, help="characters of pydoc text scored")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-speed", action="store_true")
    args = p.parse_args()

    import torch

    import giraffe

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="giraffe-quant-"))
    reference = giraffe.load(args.model, packed=False)
    source = reference.save_gguf(work / "f32.gguf", dtype="f32")
    ids = reference.tokenizer.encode(fixed_text(args.chars))
    files = {"f32": source}
    for kind in args.types.split(","):
        cmd = [sys.executable, "-m", "giraffe.cli", "quantize", str(source), "--to", kind]
        out = work / (kind if kind.startswith("int") else f"{kind}.gguf")
        subprocess.run([*cmd, "--out", str(out)], check=True, capture_output=True)
        files[kind] = out
    theirs = llama_cpp_q4_k_m(source, work / "llama.cpp-q4_k_m.gguf")
    if theirs:
        files["q4_k_m (llama.cpp)"] = theirs
    rows = {}
    for name, path in files.items():
        rows[name] = quality(path, reference, ids, args.ctx)
        if not args.no_speed:
            rows[name].update(speed(path, args.threads))
        print(name, rows[name], file=sys.stderr)
    print(
        json.dumps(
            {"machine": machine_facts(), "model": args.model, "tokens": len(ids), "rows": rows},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
