"""The compiled step's image (giraffe.quant.step_image) and the torch-free load it allows.

A packed GGUF load with torch saves its step beside the file's tiles; a later load opens
the file on that image alone (`giraffe.formats.saved_step.open_saved_step`, a `StepModel`):
its logits must equal the torch model's bit for bit (the same bytes at the same offsets),
for a tied Llama (llama.cpp's permuted q/k rows: copies, stored in the image), an untied
Qwen3 (QK-norm) and a Gemma 3 (sliding layers with their own RoPE, sandwich norms). An
image from other sources or a damaged one is ignored; a family the step cannot run whole
(learned positions) gets none. `giraffe.load` of such a file imports no torch until
something needs the torch model (checked in a real process on SmolLM2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from giraffe.config import (
    GEMMA3_WIRING,
    GPT2_WIRING,
    QWEN3_WIRING,
    ModelConfig,
    periodic_layer_types,
)
from giraffe.formats.gguf import load_gguf, open_gguf, save_gguf
from giraffe.formats.saved_step import open_saved_step
from giraffe.models import Decoder
from giraffe.quant import file_cache, kernels, step_image

pytestmark = pytest.mark.skipif(
    not kernels.int8_kinds() or kernels.decode_layer_function() is None,
    reason="the compiled step with int8 tiles is not built here",
)

SHAPE = dict(
    vocab_size=300, hidden_size=256, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=64,
    intermediate_size=256, max_position_embeddings=64,
)  # fmt: skip
FAMILIES = {
    "llama": ({}, "q4_0"),
    "llama-bf16": ({}, "bf16"),  # the float kernel's products, prompts and decode rows
    "qwen3": (dict(QWEN3_WIRING, tie_embeddings=False), "q8_0"),
    "gemma3": (
        dict(
            GEMMA3_WIRING,
            sliding_window=4,
            layer_types=periodic_layer_types(3, 3),
            rope_theta=1e6,
            rope_local_theta=1e4,
        ),
        "q4_k",
    ),  # fmt: skip
}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test its own tile cache folder (images and tiles), int8 activations on."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", "1")


def write_model(folder, family: str, monkeypatch=None):
    wiring, dtype = FAMILIES.get(family, ({}, "q8_0"))
    if family == "gpt2":
        wiring = dict(GPT2_WIRING, n_kv_heads=None)
    if family == "llama-mixed":  # v in another type than q and k, as llama.cpp's K-quant
        # mixes do: q/k/v cannot share one buffer and keep their own tiles (q and k permuted)
        from giraffe.formats import gguf

        real = gguf._add_tensor

        def add(writer, name, array, dtype):
            return real(writer, name, array, "Q8_0" if name.endswith("attn_v.weight") else dtype)

        monkeypatch.setattr(gguf, "_add_tensor", add)
        wiring, dtype = {}, "q4_0"
    torch.manual_seed(0)
    model = Decoder(ModelConfig(**{**SHAPE, **wiring})).eval()
    with torch.no_grad():  # random init leaves every norm at 1 (or 0 with an offset)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return save_gguf(model, folder / f"{family}.gguf", dtype=dtype)


def steps(model, prompt: list[int], n: int, as_tensor) -> list[np.ndarray]:
    """Logits of the prompt's last token, then of n greedy tokens, each (1, V)."""
    cache = model.new_cache(1, 32)
    out = []
    logits, argmax = model.next_token_logits(as_tensor([prompt]), cache=cache)
    for _ in range(n + 1):
        out.append(np.array(logits))
        logits, argmax = model.next_token_logits(as_tensor([[argmax[0]]]), cache=cache)
    return out


@pytest.mark.parametrize("family", [*FAMILIES, "llama-mixed"])
def test_the_saved_step_equals_the_torch_step(tmp_path, family, monkeypatch):
    path = write_model(tmp_path, family, monkeypatch)
    model = load_gguf(path, packed=True)  # writes the image
    bare = open_saved_step(path, open_gguf(path))
    assert bare is not None
    prompt = [5, 17, 250, 3, 99, 42, 7]  # past the sliding window of 4
    with torch.inference_mode():
        want = steps(model, prompt, 6, torch.tensor)
    got = steps(bare, prompt, 6, np.array)
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a, b), np.abs(a - b).max()


@pytest.mark.parametrize("bits", [4, 8])
def test_a_group_wise_folder_saves_its_step_too(tmp_path, bits):
    """giraffe's own int4/int8 folders have no file map the tiles could come from: the
    image holds every array, and a later load opens the folder on it. (A tied table: an
    untied one stays in its stored groups, which only Python looks rows up in - no image.)"""
    from giraffe.formats.hf import load_hf, save_hf
    from giraffe.quant.groupwise import GroupConfig

    torch.manual_seed(0)
    cfg = ModelConfig(**SHAPE)
    assert cfg.tie_embeddings
    folder = save_hf(Decoder(cfg).eval(), tmp_path / "int", group=GroupConfig(bits=bits))
    model = load_hf(folder)  # writes the image
    bare = open_saved_step(folder)
    assert bare is not None
    prompt = [5, 17, 250, 3, 99, 42, 7]
    with torch.inference_mode():
        want = steps(model, prompt, 6, torch.tensor)
    for a, b in zip(steps(bare, prompt, 6, np.array), want, strict=True):
        assert np.array_equal(a, b), np.abs(a - b).max()
    # float weights have no step of the kind, nor an untied group-wise table
    plain = save_hf(Decoder(cfg).eval(), tmp_path / "float")
    untied = cfg.replace(tie_embeddings=False)
    untied = save_hf(Decoder(untied).eval(), tmp_path / "untied", group=GroupConfig(bits=bits))
    for other in (plain, untied):
        load_hf(other)
        assert open_saved_step(other) is None


def test_an_image_of_other_sources_or_damaged_is_ignored(tmp_path, monkeypatch):
    path = write_model(tmp_path, "llama")
    load_gguf(path, packed=True)
    folder = file_cache.cache_dir_for(path)
    assert open_saved_step(path, open_gguf(path)) is not None
    monkeypatch.setattr(step_image, "source_tag", lambda: "other code")
    assert open_saved_step(path, open_gguf(path)) is None
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    blob = folder / step_image.BLOB
    blob.write_bytes(blob.read_bytes()[:100])  # cut short
    assert open_saved_step(path, open_gguf(path)) is None
    image = json.loads((folder / step_image.IMAGE).read_text())
    image["matrices"][0][1]["q8"][0] = ["tiles", 1 << 40]  # an address past the tiles
    (folder / step_image.IMAGE).write_text(json.dumps(image))
    load_gguf(path, packed=True)  # an image that does not match is written again
    assert open_saved_step(path, open_gguf(path)) is not None


def test_learned_positions_get_no_image(tmp_path):
    path = write_model(tmp_path, "gpt2")
    load_gguf(path, packed=True)
    assert not (file_cache.cache_dir_for(path) / step_image.IMAGE).exists()
    assert open_saved_step(path, open_gguf(path)) is None


GENERATE = """
import sys, giraffe
lm = giraffe.load("smollm2-135m-instruct")
text = lm.complete("The capital of France is", max_new_tokens=8, temperature=0).text
print(type(lm._model).__name__, "torch" in sys.modules, repr(text))
both = lm.complete_batch(["Hi", "The capital of France is"], max_new_tokens=8, temperature=0)
print(type(lm._model).__name__, "torch" in sys.modules, repr(both[1].text))
"""


def test_a_second_load_generates_without_torch(tmp_path, smollm2_gguf):
    """The first process loads with torch and saves the step; the second opens on it and
    generates with no torch, the same text; a batch then builds the torch model."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    run = [sys.executable, "-c", GENERATE]
    first = subprocess.run(run, capture_output=True, text=True, env=env, check=True).stdout
    second = subprocess.run(run, capture_output=True, text=True, env=env, check=True).stdout
    first, second = first.splitlines(), second.splitlines()
    assert first[0].startswith("Decoder True")
    assert second[0].startswith("StepModel False")
    assert second[0].split(" ", 2)[2] == first[0].split(" ", 2)[2]  # the same text
    assert second[1].startswith("Decoder True") and second[1] == first[1]


def test_the_step_model_refuses_a_batch_and_a_full_cache(tmp_path):
    """It runs one sequence: a batch or a padding mask is the torch model's to run (what
    `LanguageModel.decoder_for` decides), and a full cache is an error, not a write past it."""
    path = write_model(tmp_path, "llama")
    load_gguf(path, packed=True)
    bare = open_saved_step(path, open_gguf(path))
    with pytest.raises(ValueError, match="one sequence"):
        bare.next_token_logits(np.array([[1], [2]]), cache=bare.new_cache(2, 8))
    with pytest.raises(ValueError, match="one sequence"):
        cache = bare.new_cache(1, 8)
        bare.next_token_logits(np.array([[1, 2]]), cache=cache, key_mask=np.ones((1, 2), bool))
    cache = bare.new_cache(1, 4)
    bare.next_token_logits(np.array([[1, 2, 3]]), cache=cache)
    with pytest.raises(ValueError, match="KV cache full"):
        bare.next_token_logits(np.array([[4, 5]]), cache=cache)
    assert cache.length == 3  # nothing written


def test_every_buffer_the_step_reads_starts_on_a_cache_line(tmp_path):
    """numpy starts its arrays 16 bytes past a 64-byte boundary; the C step's 64-byte
    vector loads and stores then split cache lines (512-token prompts ~10 % slower). The
    scratch, the reused rows, the logits and the caches are allocated aligned."""
    from giraffe.quant.compiled_step import aligned

    for shape in (1, 7, (3, 5), 100_000):  # (an empty array is never handed to C)
        for dtype in (np.float32, np.int64, np.uint8):
            assert aligned(shape, dtype).ctypes.data % 64 == 0
    assert not aligned((4, 4), np.float32, zeros=True).any()
    path = write_model(tmp_path, "llama")
    load_gguf(path, packed=True)
    bare = open_saved_step(path, open_gguf(path))
    cache = bare.new_cache(1, 16)
    logits, _ = bare.next_token_logits(np.array([[1, 2, 3]]), cache=cache)
    step = bare.step
    buffers = [step.scratch, logits, cache.k, cache.v, *step._buffers.values()]
    assert [b.ctypes.data % 64 for b in buffers] == [0] * len(buffers)


def test_threads_asking_for_the_torch_model_at_once_build_it_once(tmp_path, tiny_folder):
    """A server's request threads may all need `lm.model` on their first batch: one builds
    it, the others wait for that one (two builds would map and repack the file twice)."""
    import threading
    import time

    import giraffe
    from giraffe.lm import LanguageModel

    path = save_gguf(giraffe.load(tiny_folder).model, tmp_path / "tiny.gguf", dtype="q4_0")
    load_gguf(path, packed=True)  # writes the image
    bare = open_saved_step(path, open_gguf(path))
    built = []

    def build():
        time.sleep(0.2)  # long enough for every thread to ask while the first builds
        built.append(load_gguf(path, packed=True))
        return built[-1]

    lm = LanguageModel(bare, giraffe.load_tokenizer(tiny_folder), "tiny", load_module=build)
    got = []
    threads = [threading.Thread(target=lambda: got.append(lm.model)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and all(m is built[0] for m in got) and len(got) == 4
