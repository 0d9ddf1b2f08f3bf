"""Benchmark suite: giraffe against llama.cpp on the models people run, in the same run.

Per row (a model file), each engine runs in its own fresh process, the engines
alternating, `--rounds` times (medians): prefill tok/s (a 512-token prompt), decode tok/s
(128 greedy tokens), peak RSS, and model ready from process start. llama.cpp
(`llama-cpp-python`) runs with flash attention off and on; its faster figure counts.
The measurements themselves are bench/decode.py's workers (the same code `giraffe bench`
uses), not a second copy.

It also measures this machine's read bandwidth (summing a 1 GiB tensor) and reports
decode as a share of it: bytes a decode step must read (every weight but an untied
token table's unread rows) x tokens/s / bandwidth - for the file's blocks (what
llama.cpp reads) and for giraffe's resident int8 tiles (`giraffe_bytes_per_token`).

Suite: SmolLM2-135M as Q4_0, Q4_1 (the shipped file), Q8_0 and Q4_K_M (quantized by
llama.cpp's own `llama_model_quantize` from the shipped weights written out as F32),
Qwen2.5-Coder-0.5B-Instruct Q4_K_M, Gemma 3 270M Q4_K_M, and a giraffe int4 folder (giraffe
only; llama.cpp cannot read it). A row that fails (a model not installed, an architecture
not supported yet) is reported as an error and the suite goes on. `BEYOND` rows (SmolLM2 as
BF16, F16, IQ4_NL, IQ4_XS and Q2_K) run only when named in --rows. Derived files are
cached in ~/.cache/giraffe/bench-models. Ratios are giraffe / llama.cpp from the same run;
absolute numbers on a shared machine are noise.

    python bench/models.py [--quick] [--rounds 3] [--threads 2] [--baseline-src DIR]

--quick: two rows (SmolLM2 Q4_1, Qwen 0.5B), 128-token prompt, 32 decode tokens, 1 round.
--baseline-src: also run giraffe from another source tree (e.g. an older checkout's
src/) as the engine "giraffe-baseline", to compare before/after in the same run.
Writes bench/results/models[-quick].json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "giraffe" / "bench-models"
)
SMOLLM2 = "smollm2-135m-instruct"
# row -> how to get its file: an alias, or (a llama.cpp ftype name | "int4") from SmolLM2
SUITE = {
    "smollm2-135m-q4_0": ("llama.cpp", "LLAMA_FTYPE_MOSTLY_Q4_0"),
    "smollm2-135m-q4_1": ("alias", SMOLLM2),
    "smollm2-135m-q8_0": ("llama.cpp", "LLAMA_FTYPE_MOSTLY_Q8_0"),
    "smollm2-135m-q4_k_m": ("llama.cpp", "LLAMA_FTYPE_MOSTLY_Q4_K_M"),
    "qwen2.5-coder-0.5b-q4_k_m": ("alias", "qwen2.5-coder-0.5b-instruct"),
    "gemma-3-270m-q4_k_m": ("alias", "gemma-3-270m"),
    "smollm2-135m-int4-folder": ("giraffe", "int4"),
}
# Beyond the suite (run them by name with --rows): 2-byte float files, which the int8 GEMM
# cannot take (their weights are not integers) and which decode at the read rate on both
# engines, so no ratio goal applies; they show the float kernel holds its own.
# The other rows are llama.cpp's lower-bit types beyond the suite: IQ4_NL, IQ4_XS (an
# importance-matrix family; llama.cpp quantizes them here without one) and Q2_K (whose
# SmolLM2 file holds Q3_K and Q4_0 matrices, 576-wide rows not taking 256-weight blocks).
BEYOND = {
    "smollm2-135m-bf16": ("llama.cpp", "LLAMA_FTYPE_MOSTLY_BF16"),
    "smollm2-135m-f16": ("llama.cpp", "LLAMA_FTYPE_MOSTLY_F16"),
    "smollm2-135m-iq4_nl": ("llama.cpp", "LLAMA_FTYPE_MOSTLY_IQ4_NL"),
    "smollm2-135m-iq4_xs": ("llama.cpp", "LLAMA_FTYPE_MOSTLY_IQ4_XS"),
    "smollm2-135m-q2_k": ("llama.cpp", "LLAMA_FTYPE_MOSTLY_Q2_K"),
}
ROWS = {**SUITE, **BEYOND}
QUICK = ("smollm2-135m-q4_1", "qwen2.5-coder-0.5b-q4_k_m")
# Files of the aliases, looked for in $GIRAFFE_TEST_MODELS_DIR while an alias is not registered.
FILE_NAMES = {
    "qwen2.5-coder-0.5b-instruct": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "gemma-3-270m": "gemma-3-270m-q4_k_m.gguf",
}
ENGINES = ("giraffe", "llama.cpp", "llama.cpp-flash-attn")


# ---- the files --------------------------------------------------------------------------


def model_file(row: str) -> Path:
    """The row's model file or folder (made once and cached); raises with a reason."""
    how, what = ROWS[row]
    if how == "alias":
        return _alias(what)
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / (row if how == "giraffe" else f"{row}.gguf")
    if out.exists():
        return out
    source = _smollm2_f32()
    if how == "giraffe":
        cmd = [sys.executable, "-m", "giraffe.cli", "quantize", str(source), "--to", what]
        subprocess.run([*cmd, "--out", str(out)], check=True, capture_output=True)
        return out
    _llama_quantize(source, out, what)
    return out


def _alias(alias: str) -> Path:
    from giraffe.formats.registry import ModelNotFound, resolve

    try:
        return resolve(alias)
    except ModelNotFound as e:
        folder = os.environ.get("GIRAFFE_TEST_MODELS_DIR")
        if folder and alias in FILE_NAMES and (Path(folder) / FILE_NAMES[alias]).exists():
            return Path(folder) / FILE_NAMES[alias]
        raise RuntimeError(str(e)) from None


def _smollm2_f32() -> Path:
    """The shipped SmolLM2 weights written out as F32 GGUF: the source every quantizer reads."""
    out = CACHE / "smollm2-135m-f32.gguf"
    if not out.exists():
        code = (
            "import sys, giraffe; "
            f"giraffe.load({SMOLLM2!r}, packed=False).save_gguf(sys.argv[1], dtype='f32')"
        )
        subprocess.run([sys.executable, "-c", code, str(out)], check=True)
    return out


def _llama_quantize(source: Path, out: Path, ftype: str) -> None:
    """llama.cpp's own quantizer (llama_model_quantize), in a child process (it logs a lot)."""
    code = (
        "import ctypes, sys, llama_cpp; "
        "p = llama_cpp.llama_model_quantize_default_params(); "
        f"p.ftype = llama_cpp.{ftype}; "
        "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), "
        "ctypes.byref(p)))"
    )
    tmp = out.with_suffix(".tmp")
    done = subprocess.run([sys.executable, "-c", code, str(source), str(tmp)], capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"llama_model_quantize to {ftype} failed (status {done.returncode})")
    tmp.rename(out)


def bytes_per_token(path: Path) -> dict:
    """Bytes a decode step reads: as the file's blocks, and as giraffe's int8 tiles (F16
    and BF16 matrices: their own bytes, which the float kernel reads in place)."""
    if path.is_dir():  # a giraffe folder: its weight files, read whole (a tied head)
        size = sum(p.stat().st_size for p in path.glob("*.safetensors"))
        return {"file_bytes_per_token": size, "giraffe_bytes_per_token": None}
    from giraffe.files.gguf_reader import FastGGUFReader
    from giraffe.quant.kernels import int8_bytes
    from giraffe.quant.types import BLOCK_TYPES, FLOAT_KINDS

    reader = FastGGUFReader(path)
    names = {t.name for t in reader.tensors}
    file_bytes = giraffe_bytes = 0
    for t in reader.tensors:
        if t.name == "token_embd.weight" and "output.weight" in names:
            continue  # an untied table: one row read per token
        file_bytes += t.data.nbytes
        if t.tensor_type.name not in BLOCK_TYPES or t.tensor_type.name in FLOAT_KINDS:
            giraffe_bytes += t.data.nbytes  # F16/BF16 are read in place, not as tiles
            continue
        n_in, n_out = (int(d) for d in t.shape[:2])  # GGUF lists the row length first
        giraffe_bytes += int8_bytes(t.tensor_type.name, n_out, n_in)  # the int8 tiles
    return {"file_bytes_per_token": file_bytes, "giraffe_bytes_per_token": int(giraffe_bytes)}


# ---- the machine ------------------------------------------------------------------------


def read_bandwidth(threads: int) -> float:
    """GB/s summing a 1 GiB float32 tensor with `threads` threads (best of 5), in a child."""
    code = (
        "import time, torch; torch.set_num_threads(int(__import__('sys').argv[1])); "
        "x = torch.ones(2**28); x.sum(); best = 1e9\n"
        "for _ in range(5):\n"
        "    t = time.perf_counter(); x.sum(); best = min(best, time.perf_counter() - t)\n"
        "print(2**30 / best / 1e9)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(threads)], capture_output=True, text=True, check=True
    )
    return round(float(out.stdout.strip()), 1)


# ---- one engine, one process ------------------------------------------------------------


def run_engine(engine: str, path: Path, args) -> dict:
    """One fresh process measuring one engine on one file; {"error": ...} when it fails."""
    env = dict(os.environ)
    # a "second run" finds Python's compiled modules cached, as an installed giraffe does;
    # an environment that forbids writing them would charge every run their compilation
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # giraffe's kernels and (once loaded) torch take their threads from here: a process
    # that never imports torch must not have to import it to be told
    env["OMP_NUM_THREADS"] = str(args.threads)
    if engine == "giraffe-baseline":
        env["PYTHONPATH"] = os.pathsep.join([args.baseline_src, str(HERE)])
    worker = "giraffe" if engine.startswith("giraffe") else engine
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--model", str(path),
        "--threads", str(args.threads), "--prefill-tokens", str(args.prefill_tokens),
        "--decode-tokens", str(args.decode_tokens), "--t0", repr(time.time()),
    ]  # fmt: skip
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {args.timeout} s"}
    if out.returncode != 0:
        lines = [x for x in out.stderr.strip().splitlines() if x.strip()]
        return {"error": lines[-1][:300] if lines else f"exit status {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker(args) -> None:
    """In the child: decode.py's worker for this engine, plus the time to model ready."""
    import decode

    os.environ["BENCH_THREADS"] = str(args.threads)
    before = time.time()
    r = decode.WORKERS[args.worker](str(args.model), 1, args.prefill_tokens, args.decode_tokens)
    r["ready_s"] = round(before - args.t0 + r["load_s"], 3)  # interpreter start + imports + load
    print(json.dumps(r))


# ---- the suite --------------------------------------------------------------------------

KEYS = ("prefill_tok_s", "decode_tok_s", "peak_rss_mib", "ready_s", "load_s")


def measure_row(row: str, engines: list[str], args, bandwidth: float) -> dict:
    try:
        path = model_file(row)
    except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
        return {"error": f"no model file: {e}"}
    if path.is_dir():  # llama.cpp cannot read a giraffe folder
        engines = [e for e in engines if e.startswith("giraffe")]
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    warm = argparse.Namespace(**{**vars(args), "prefill_tokens": 8, "decode_tokens": 2})
    for engine in engines:  # the goals are for a second run: kernels, tiles, step image cached
        if engine.startswith("giraffe"):
            run_engine(engine, path, warm)
    for _ in range(args.rounds):  # engines alternate, so slow spells hit all of them
        for engine in engines:
            runs[engine].append(run_engine(engine, path, args))
            print(f"{row} {engine}: {runs[engine][-1]}", file=sys.stderr)
    result = {"file": str(path), **bytes_per_token(path)}
    for engine, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        result[engine] = (
            {k: round(statistics.median(r[k] for r in ok), 3) for k in KEYS} | {"runs": len(ok)}
            if ok
            else {"error": rs[0]["error"]}
        )
    _ratios(result, bandwidth)
    return result


def _ratios(result: dict, bandwidth: float) -> None:
    """giraffe / llama.cpp's best (prefill, decode), RSS and ready vs that same flavour."""
    flavours = [
        result[e]
        for e in ("llama.cpp", "llama.cpp-flash-attn")
        if "error" not in result.get(e, {"error": 1})
    ]
    for engine in [e for e in result if e.startswith("giraffe")]:
        ours = result[engine]
        if not isinstance(ours, dict) or "error" in ours:
            continue
        for key, size in (
            ("file", result["file_bytes_per_token"]),
            ("giraffe", result["giraffe_bytes_per_token"]),
        ):
            if size:
                ours[f"bandwidth_share_{key}_bytes"] = round(
                    size * ours["decode_tok_s"] / (bandwidth * 1e9), 3
                )
        if not flavours:
            continue
        best_decode = max(flavours, key=lambda f: f["decode_tok_s"])
        ours["vs_llama_cpp_best"] = {
            "prefill": round(ours["prefill_tok_s"] / max(f["prefill_tok_s"] for f in flavours), 2),
            "decode": round(ours["decode_tok_s"] / best_decode["decode_tok_s"], 2),
            "peak_rss": round(ours["peak_rss_mib"] / best_decode["peak_rss_mib"], 2),
            "ready": round(ours["ready_s"] / min(f["ready_s"] for f in flavours), 2),
        }
    for flavour in ("llama.cpp", "llama.cpp-flash-attn"):
        theirs = result.get(flavour)
        if isinstance(theirs, dict) and "error" not in theirs and result["file_bytes_per_token"]:
            share = result["file_bytes_per_token"] * theirs["decode_tok_s"] / (bandwidth * 1e9)
            theirs["bandwidth_share_file_bytes"] = round(share, 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="two rows, short prompt, one round")
    p.add_argument("--rows", help=f"comma-separated rows of: {', '.join(ROWS)}")
    p.add_argument("--rounds", type=int, help="processes per engine and row (default 3, quick 1)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--timeout", type=int, default=900, help="seconds per engine process")
    p.add_argument("--baseline-src", help="another giraffe src/ to run as giraffe-baseline")
    p.add_argument("--out", type=Path)
    p.add_argument("--worker", choices=("giraffe", "llama.cpp", "llama.cpp-flash-attn"))
    p.add_argument("--model")
    p.add_argument("--t0", type=float)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.prefill_tokens, args.decode_tokens = 128, 32
    args.rounds = args.rounds or (1 if args.quick else 3)
    rows = args.rows.split(",") if args.rows else list(QUICK if args.quick else SUITE)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    import importlib.util

    from machine import machine_facts

    engines = ["giraffe", *(["giraffe-baseline"] if args.baseline_src else [])]
    if importlib.util.find_spec("llama_cpp"):
        engines += ["llama.cpp", "llama.cpp-flash-attn"]
    bandwidth = read_bandwidth(args.threads)
    result = {
        "machine": machine_facts() | {"read_bandwidth_gb_s": bandwidth, "threads": args.threads},
        "settings": {k: getattr(args, k) for k in ("rounds", "prefill_tokens", "decode_tokens")},
        "rows": {},
    }
    for row in rows:
        result["rows"][row] = measure_row(row, engines, args, bandwidth)
    out = args.out or HERE / "results" / ("models-quick.json" if args.quick else "models.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
