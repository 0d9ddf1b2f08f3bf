"""Real GGUF models (Gemma 3 270M, Qwen2.5-Coder-0.5B-Instruct) against llama.cpp's own predictions.

The oracle is tests/fixtures/{alias}_llamacpp.json, made by make_families_llamacpp_logits.py
(llama.cpp with a float32 KV cache, llama.cpp's token ids). The model is loaded as
`giraffe.load` loads it (packed blocks where the kernels are built) and run with int8
activations (the default for packed models) and with float activations.

The top-1 goal is 99 %, but not above what llama.cpp achieves against itself: with only
its KV cache changed from float32 to float16, llama.cpp agrees with itself at 95.7 % of
the positions on Gemma 3 270M and 98.1 % on Qwen2.5-Coder-0.5B (and moves its Gemma
perplexity by 0.9 %); both runs are in the fixture, so the bound is computed from it.

Why 99 % against llama.cpp cannot be reached exactly: tests/fixtures/{alias}_float64.json
(make_families_float64_reference.py) holds the exact answer both approximate - the file's
blocks dequantized and the plain module path run in float64. llama.cpp's own top-1 agrees
with it at 96.7 % (Gemma 3) and 98.2 % (Qwen2.5) of positions (its activations rounded to
int8, its GELU read from a float16 table); giraffe's float32 path agrees at 100 %, and with
int8 activations at 98.3 % / 98.9 %. So the reference is the sharper test of giraffe.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
FILES = {
    "gemma-3-270m": "gemma-3-270m-q4_k_m.gguf",
    "qwen2.5-coder-0.5b-instruct": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
}
NEAR_TIE = 0.1  # a greedy difference: llama.cpp's two candidates this close in probability

pytestmark = pytest.mark.slow


def real_model(alias: str) -> Path:
    folder = os.environ.get("GIRAFFE_TEST_MODELS_DIR")
    if folder and (Path(folder) / FILES[alias]).is_file():
        return Path(folder) / FILES[alias]
    from giraffe.formats.registry import ModelNotFound, resolve

    try:
        return resolve(alias)
    except ModelNotFound:
        pytest.skip(f"{alias} is not installed (giraffe pull {alias}, or GIRAFFE_TEST_MODELS_DIR)")


@pytest.fixture(scope="module", params=list(FILES))
def real(request):
    import giraffe

    alias = request.param
    fixture = json.loads((FIXTURES / f"{alias}_llamacpp.json").read_text())
    lm = giraffe.load(real_model(alias))
    return alias, lm.model, fixture


@pytest.fixture(params=["int8", "float"])
def activations(request, monkeypatch):
    if request.param == "float":
        monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", "0")
    return request.param


@torch.inference_mode()
def text_predictions(model, ids: list[int], theirs: list[int]) -> tuple[np.ndarray, ...]:
    """Per position: giraffe's top-1, its log p(next), and p(its top-1) - p(theirs[t]),
    computed in chunks of 128 so the (T, V) probabilities never exist whole."""
    h = model.hidden(torch.tensor([ids]))[0]  # (T, C)
    top1, logp_next, gap = [], [], []
    for s in range(0, len(ids), 128):
        logp = model.head(h[s : s + 128]).float().log_softmax(-1)  # (t, V)
        rows = torch.arange(len(logp))
        best = logp.argmax(-1)
        top1 += best.tolist()
        nxt = torch.tensor(ids[s + 1 : s + 129])
        logp_next += logp[rows[: len(nxt)], nxt].tolist()
        gap += (
            logp[rows, best].exp() - logp[rows, torch.tensor(theirs[s : s + 128])].exp()
        ).tolist()
    return np.array(top1), np.array(logp_next), np.array(gap)


_SCORED: dict[tuple[str, str], tuple] = {}


@pytest.fixture
def scored(real, activations):
    """giraffe's predictions on the fixture's English ids, once per model and activations."""
    alias, model, fx = real
    if (alias, activations) not in _SCORED:
        text = fx["english"]
        _SCORED[alias, activations] = text_predictions(model, text["ids"], text["top1"])
    return (alias, fx, *_SCORED[alias, activations])


def test_top1_and_perplexity_match_llama_cpp(scored, activations):
    alias, fx, ours, logp_next, gap = scored
    text = fx["english"]
    theirs = np.array(text["top1"])
    agree = float((ours == theirs).mean())
    ppl = math.exp(-logp_next.mean())
    rel = ppl / text["perplexity"] - 1
    gaps = gap[ours != theirs]
    print(
        f"{alias} {activations}: top-1 {agree:.4f}, perplexity {ppl:.4f} vs llama.cpp "
        f"{text['perplexity']:.4f} ({rel:+.3%}; its float16-cache run: "
        f"{fx['english_f16_cache']['perplexity']:.4f})"
        f"; largest disagreement gap {gaps.max(initial=0):.4f}"
    )
    assert agree >= min(0.99, self_agreement(fx))
    assert abs(rel) <= 0.005


# Per activation form, against the float64 reference: the least top-1 agreement, the widest
# reference gap (top two probabilities) at which a disagreement is allowed, and the
# perplexity's relative tolerance (measured: float 100 %, +-0.01 %; int8 98.3-98.9 %, +0.07 %).
REFERENCE_BOUNDS = {"float": (0.998, 0.005, 0.001), "int8": (0.975, 0.2, 0.005)}


def test_fast_path_equals_the_float64_reference(scored, activations):
    """The exact answer (dequantized blocks, float64 module path): float32 activations
    agree everywhere but at near-ties; int8 activations, as llama.cpp's, lose a little."""
    alias, _, ours, logp_next, _ = scored
    ref = json.loads((FIXTURES / f"{alias}_float64.json").read_text())
    truth, gap = np.array(ref["top1"]), np.array(ref["gap"])
    least, widest, rel = REFERENCE_BOUNDS[activations]
    misses = np.flatnonzero(ours != truth)
    print(f"{alias} {activations}: top-1 vs float64 {1 - len(misses) / len(truth):.4f}")
    assert 1 - len(misses) / len(truth) >= least
    assert all(gap[t] <= widest for t in misses), [(int(t), gap[t]) for t in misses]
    assert math.exp(-logp_next.mean()) == pytest.approx(ref["perplexity"], rel=rel)


def self_agreement(fx: dict) -> float:
    """llama.cpp against llama.cpp: float32 vs float16 KV cache, top-1 on the same text."""
    return float(
        np.mean(np.array(fx["english"]["top1"]) == np.array(fx["english_f16_cache"]["top1"]))
    )


@torch.inference_mode()
def test_greedy_continuations_match_llama_cpp(real, activations):
    from giraffe.generate.engine import DecodeSession
    from giraffe.generate.params import DecodingConfig

    alias, model, fx = real
    prompts = [g["ids"] for g in fx["greedy"]]
    cfg = DecodingConfig(max_new_tokens=32, temperature=0, top_logprobs=2)
    out = [[] for _ in prompts]
    tops = [[] for _ in prompts]
    for events in DecodeSession(model, prompts, cfg):  # batched: left padding, one cache
        for e in events:
            out[e.row].append(e.token_id)
            tops[e.row].append(e.top)
    for g, ours, top in zip(fx["greedy"], out, tops, strict=True):
        diff = next(
            (i for i, (a, b) in enumerate(zip(ours, g["generated"], strict=False)) if a != b), None
        )
        if diff is None:
            assert len(ours) == len(g["generated"])
            continue
        (a, pa), (b, pb) = g["steps"][diff]
        print(
            f"{alias}: first difference at {diff}: llama.cpp {g['steps'][diff]}, giraffe {top[diff]}"
        )
        assert ours[diff] in (a, b) and abs(pa - pb) <= NEAR_TIE  # a near-tie, shown above
