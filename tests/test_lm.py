"""The Python API on a tiny model with a real tokenizer: the facade's promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import giraffe
from giraffe.generate import DecodingError, GenerationError


@pytest.fixture(scope="module")
def lm(tiny_folder):
    return giraffe.load(tiny_folder)


def test_logits_shape_and_errors(lm):
    ids = lm.tokenizer.encode("No, I am not a giraffe.")
    scores = lm.logits(ids)
    assert scores.shape == (len(ids), lm.config.vocab_size) and scores.dtype == torch.float32
    with pytest.raises(GenerationError, match="at least one"):
        lm.logits([])
    with pytest.raises(GenerationError, match="context"):
        lm.logits([1] * (lm.config.max_position_embeddings + 1))
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        lm.logits([10**6])


def test_text_and_ids_prompts_agree(lm):
    ids = lm.tokenizer.encode("The giraffe")
    kw = dict(max_new_tokens=8, temperature=0.0)
    assert lm.generate("The giraffe", **kw) == lm.generate(ids, **kw)


def test_stream_equals_complete_and_batch_equals_single(lm):
    kw = dict(max_new_tokens=10, temperature=0.8, seed=4)
    full = lm.complete("The giraffe", **kw)
    assert "".join(lm.generate("The giraffe", stream=True, **kw)) == full.text
    assert lm.tokenizer.decode(full.token_ids) == full.text
    prompts = ["The giraffe", "No, I am"]
    greedy = dict(max_new_tokens=6, temperature=0.0)
    assert lm.generate(prompts, **greedy) == [lm.generate(p, **greedy) for p in prompts]


def test_stop_string_cuts_the_text(lm):
    free = lm.complete("The giraffe", max_new_tokens=12, temperature=0.0)
    stop = free.text[3:6]
    cut = lm.complete("The giraffe", max_new_tokens=12, temperature=0.0, stop=[stop])
    assert cut.finish_reason == "stop" and cut.text == free.text[: free.text.index(stop)]


def test_logprobs_line_up_with_tokens(lm):
    r = lm.complete("The giraffe", max_new_tokens=5, temperature=0.0, logprobs=True, top_logprobs=3)
    assert len(r.logprobs) == len(r.token_ids) == len(r.top_logprobs)
    assert all(top[0][0] == t for top, t in zip(r.top_logprobs, r.token_ids, strict=True))


def test_chat_uses_the_template_and_bad_values_are_named(lm):
    messages = [{"role": "user", "content": "hi"}]
    assert lm.render_chat(messages).endswith("<|im_start|>assistant\n")
    assert isinstance(lm.chat(messages, max_new_tokens=4, temperature=0.0), str)
    with pytest.raises(DecodingError, match="top_p"):
        lm.generate("hi", top_p=2.0)
    with pytest.raises(GenerationError, match="empty"):
        lm.generate("")


def test_save_and_load_round_trip(lm, tmp_path):
    lm.save(tmp_path / "copy")
    again = giraffe.load(tmp_path / "copy")
    ids = lm.tokenizer.encode("No, I am not a giraffe.")
    assert again.tokenizer.encode("No, I am not a giraffe.") == ids
    assert torch.equal(again.logits(ids), lm.logits(ids))
    assert again.tokenizer.chat_template == lm.tokenizer.chat_template
    config = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert config["eos_token_id"] == lm.tokenizer.eos_id  # not transformers' own default


def test_load_tokenizer_alone(tiny_folder):
    tok = giraffe.load_tokenizer(tiny_folder)
    assert tok.decode(tok.encode("giraffe")) == "giraffe"
    assert giraffe.load_tokenizer("cl100k_base").encode("giraffe") == [70, 404, 38880]


@pytest.mark.parametrize("door", ["giraffe.load", "giraffe.lm.load"])
def test_loading_pauses_the_cyclic_collector_and_restores_it(tiny_folder, door):
    """No cyclic collection runs while a model loads (they walked ~10^6 live objects for
    ~0.2 s of a start); afterwards the collector is on again, and a caller that had turned
    it off finds it off."""
    import gc

    from giraffe import lm as lm_module

    load = giraffe.load if door == "giraffe.load" else lm_module.load
    collections = []

    def seen(phase, info):
        collections.append(phase)

    gc.callbacks.append(seen)
    try:
        for _ in range(2):
            collections.clear()
            load(tiny_folder)  # (a tiny model: ~10^5 allocations, well past the threshold)
            assert collections == [] and gc.isenabled()
        gc.disable()
        load(tiny_folder)
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.callbacks.remove(seen)


@pytest.mark.parametrize("door", ["torch", "bare"])
def test_a_child_forked_after_the_parent_generated_generates_on_one_thread(
    tiny_folder, tmp_path, door
):
    """libgomp's threads do not survive fork(): without `giraffe.forks`' handler the
    child's first parallel region (torch's or the compiled kernels') waits forever - in a
    process with torch, and in one that opened the file on its saved step (no torch)."""
    from giraffe.formats.gguf import save_gguf
    from giraffe.formats.hf import load_hf
    from giraffe.tokenizer import gguf_tokenizer_fields

    fields = gguf_tokenizer_fields(giraffe.load_tokenizer(tiny_folder))
    gguf = save_gguf(load_hf(tiny_folder), tmp_path / "tiny.gguf", "q8_0", tokenizer=fields)
    script = Path(__file__).parent / "fixtures" / "fork_after_compute.py"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2"}
    run = [sys.executable, str(script), str(gguf), door]
    if door == "bare":  # a first load saves the compiled step's image
        subprocess.run(run, capture_output=True, text=True, timeout=300, env=env, check=True)
    r = subprocess.run(run, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "child hung" not in r.stdout, "the forked child waited for its parent's threads"
    lines = dict(line.split(": ", 1) for line in r.stdout.strip().splitlines())
    assert lines["child"] == lines["parent"]  # the same tokens, on one thread
    assert lines["torch"] == str(door == "torch")
    assert "forked" in r.stderr and "one" in r.stderr  # the child was told why
