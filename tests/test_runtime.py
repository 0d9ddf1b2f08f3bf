"""The packed runtime (giraffe.quant.runtime) is owned by one object the model holds.

Loaders attach it with `Decoder.attach_runtime`; nothing is installed on the model's
modules (no callables, no torch hooks, no fast-path objects beyond the decoder's one
runtime), also after LoRA rebuilds it. Detaching leaves the plain module path, which
equals a fresh model's module path exactly; attaching the same runtime again gives the
same logits as before, and the runtime agrees with the module path to quantization
rounding.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fast_path import counting

from giraffe.config import PRESETS
from giraffe.formats.gguf import load_gguf, save_gguf
from giraffe.models import Decoder, build_model
from giraffe.quant import kernels
from giraffe.quant.decode_step import FastDecode
from giraffe.quant.linear import FusedQuant
from giraffe.quant.runtime import LayerKernels, PackedRuntime
from giraffe.train.lora import LoraConfig, apply_lora, strip_lora

FAST_PATH_TYPES = (PackedRuntime, LayerKernels, FusedQuant, FastDecode)


def installed_on(model: torch.nn.Module) -> list[str]:
    """Everything set on a module instance that is not plain data: callables, torch
    hooks, fast-path objects (the decoder's own `_runtime` is the one allowed holder)."""
    found = []
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            where = f"{name or type(module).__name__}.{attr}"
            if "hooks" in attr and isinstance(value, dict):
                found += [f"{where}[{key}]" for key in value]  # torch's hook tables: empty
            elif module is model and attr == "_runtime":
                assert value is None or isinstance(value, PackedRuntime), where
            elif callable(value) or isinstance(value, FAST_PATH_TYPES):
                found.append(f"{where} = {value!r}")
    return found


def tiny_packed(tmp_path, dtype: str = "q8_0") -> Decoder:
    torch.manual_seed(0)
    path = save_gguf(Decoder(PRESETS["llama-tiny"]), tmp_path / "m.gguf", dtype)
    return load_gguf(path, packed=True)


@pytest.mark.parametrize("preset", [n for n in PRESETS if n.endswith("-tiny")])
def test_no_model_family_stores_callables_on_its_modules(preset):
    assert installed_on(build_model(PRESETS[preset])) == []


def test_a_loaded_packed_model_has_nothing_installed_on_its_modules(tmp_path):
    model = tiny_packed(tmp_path)
    assert isinstance(model.runtime, PackedRuntime)
    assert not callable(model.runtime)  # it is consulted by name, never called as a hook
    assert installed_on(model) == []
    if kernels.available():  # the fast path is really there, only owned elsewhere
        assert all(layer.qkv is not None for layer in model.runtime.layers)


def test_lora_rebuilds_the_runtime_without_installing_anything(tmp_path):
    model = tiny_packed(tmp_path)
    before = model.runtime
    apply_lora(model, LoraConfig(r=4, targets=("q_proj", "v_proj")))
    assert model.runtime is not None and model.runtime is not before
    assert installed_on(model) == []
    strip_lora(model, merge=False)
    assert model.runtime is not None and installed_on(model) == []


def test_the_inspection_finds_a_hook(tmp_path):
    """The check above can fail: a callable on a module, or a torch hook, is reported."""
    model = tiny_packed(tmp_path)
    model.layers[0].attn.fused_qkv = model.runtime.layers[0].qkv or (lambda x: x)
    model.layers[1].mlp.register_forward_hook(lambda *args: None)
    found = installed_on(model)
    assert any("layers.0.attn.fused_qkv" in f for f in found), found
    assert any(f.startswith("layers.1.mlp._forward_hooks") for f in found), found


@pytest.mark.slow
def test_smollm2_loaded_by_lm_load_has_nothing_installed(smollm2_gguf):
    from giraffe.lm import load

    model = load(smollm2_gguf).model
    assert isinstance(model.runtime, PackedRuntime) == kernels.available()
    assert installed_on(model) == []


def logits(model: Decoder, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt logits (1, T, V), logits of 3 tokens decoded one at a time (1, 3, V))."""
    cache = model.new_cache(1, ids.shape[1] + 3)
    with torch.inference_mode():
        prompt = model.head(model.hidden(ids, cache=cache))
        steps = [model.head(model.hidden(torch.tensor([[t]]), cache=cache)) for t in (9, 2, 6)]
    return prompt, torch.cat(steps, dim=1)


@pytest.mark.parametrize("int8", ["1", "0"])
def test_detach_and_reattach_round_trip(tmp_path, int8, monkeypatch):
    monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", int8)
    model = tiny_packed(tmp_path, "q4_0")
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    runtime, taken = model.runtime, []
    if runtime.step is not None:
        runtime.step = counting(runtime.step, taken)
    fast = logits(model, ids)
    assert taken == ([True] * 4 if runtime.step is not None else [])

    assert model.detach_runtime() is runtime and model.runtime is None
    assert model.detach_runtime() is None  # nothing left to take off
    plain = logits(model, ids)
    assert len(taken) == 4  # the detached model never consults the runtime

    fresh = load_gguf(tmp_path / "m.gguf", packed=True)  # the same file, never run fast
    fresh.detach_runtime()
    for a, b in zip(plain, logits(fresh, ids), strict=True):
        assert torch.equal(a, b)  # running the runtime left nothing behind in the modules

    model.attach_runtime(runtime)
    for a, b in zip(fast, logits(model, ids), strict=True):
        assert torch.equal(a, b)  # the same object again: the same numbers
    # int8 activations: a 1e-7 difference upstream can flip one rounding (see test_engine_families)
    tol = 2e-2 if int8 == "1" else 1e-4
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def test_a_runtime_built_for_another_model_is_refused(tmp_path):
    model = tiny_packed(tmp_path)
    other = PRESETS["llama-tiny"].replace(n_layers=PRESETS["llama-tiny"].n_layers + 1)
    bigger = load_gguf(save_gguf(Decoder(other), tmp_path / "b.gguf", "q8_0"), packed=True)
    with pytest.raises(ValueError, match="built for 3 layers, the model has 2"):
        model.attach_runtime(bigger.runtime)


def test_no_code_swaps_a_module_class():
    """LoRA, QLoRA and QAT replace modules or wrap them; none reassigns `__class__`."""
    import re
    from pathlib import Path

    src = Path(__file__).resolve().parent.parent / "src" / "giraffe"
    swaps = [
        f"{path.relative_to(src)}:{n}"
        for path in src.rglob("*.py")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\.__class__\s*=[^=]", line)
    ]
    assert swaps == []


@pytest.mark.parametrize("int8", ["1", "0"])
def test_threads_sharing_a_model_get_the_answers_of_one_thread(tmp_path, int8):
    """Python threads may share a loaded model (a web app's workers): the compiled step
    takes one call at a time and the module path's dequantize buffer is per thread; the
    step used to crash the interpreter, the shared buffer to give wrong logits."""
    script = Path(__file__).parent / "fixtures" / "threads_share_a_model.py"
    env = {**os.environ, "GIRAFFE_INT8_ACTIVATIONS": int8}
    cmd = [sys.executable, str(script), str(tmp_path / "m.gguf")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("wrong: []"), r.stdout
