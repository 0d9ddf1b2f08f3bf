"""Supervised fine-tuning: the loss reads assistant tokens only, a tiny model learns a
few conversations, LoRA trains the adapters alone, QLoRA trains over packed weights,
results load back with the numbers they were saved with, runs repeat, and the command
line speaks in sentences."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

import giraffe
from giraffe.files.records import RecordError
from giraffe.formats.hf import load_hf
from giraffe.lm import load
from giraffe.train.chat_data import collate, load_chat_examples
from giraffe.train.finetune import FinetuneConfig, finetune, mean_loss, sft_loss, sft_step
from giraffe.train.schedule import make_optimizer, make_scheduler
from giraffe.train.tune_command import add_finetune_parser, run_finetune
from giraffe.train.tuning import (
    FinetuneError,
    is_packed,
    prepare_trainable,
    split_items,
    step_indices,
)

NAMES = ["Zara", "Milo", "Ada", "Kofi", "Lena", "Omar", "Ines", "Tove"]


def conversation(i: int) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "Answer in one sentence."},
            {"role": "user", "content": f"giraffe {i}"},
            {"role": "assistant", "content": f"The giraffe {i} is tall."},
        ]
    }


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    path = tmp_path_factory.mktemp("sft") / "chats.jsonl"
    path.write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(8)))
    return path


def _cfg(tiny_folder, chats, out, **kw) -> FinetuneConfig:
    base = dict(
        model=str(tiny_folder),
        data=str(chats),
        out=str(out),
        max_steps=6,
        batch_size=4,
        seq_len=128,
        lr=3e-3,
        warmup=2,
        eval_every=3,
        val_fraction=0.25,
        sample_tokens=8,
        progress=False,
    )
    return FinetuneConfig(**{**base, **kw})


def _val_loss(lm, cfg) -> float:
    """The held-out loss of `lm` on cfg's split, as finetune measures it."""
    examples, _ = load_chat_examples(cfg.data, lm.tokenizer, cfg.seq_len)
    _, val = split_items(examples, cfg.val_fraction, cfg.seed)
    return mean_loss(lm.model, [[ex] for ex in val], lm.tokenizer.eos_id, cfg.batch_size)


def test_loss_reads_only_assistant_labels(tiny_folder, chats):
    lm = load(tiny_folder)
    examples, _ = load_chat_examples(chats, lm.tokenizer, 128)
    batch = collate([[ex] for ex in examples[:3]], lm.tokenizer.eos_id)
    # The user's and system's text and the header are never targets.
    answer = [t for t, m in zip(batch.labels[0], batch.mask[0], strict=True) if m]
    assert lm.tokenizer.decode(answer) == "The giraffe 0 is tall.<|im_end|>"
    with torch.no_grad():
        loss = sft_loss(lm.model, batch)
        noise = torch.randint(0, lm.tokenizer.vocab_size, batch.labels.shape)
        batch.labels = torch.where(batch.mask, batch.labels, noise)  # other labels: random
        assert torch.equal(sft_loss(lm.model, batch), loss)
        batch.labels = torch.where(batch.mask, noise, batch.labels)  # assistant labels: random
        assert not torch.equal(sft_loss(lm.model, batch), loss)


def test_tiny_model_learns_a_few_conversations(tiny_folder, chats, tmp_path):
    cfg = _cfg(
        tiny_folder,
        chats,
        tmp_path,
        max_steps=60,
        val_fraction=0.0,
        warmup=5,
        sample_prompts=("giraffe 3",),
    )
    metrics = finetune(cfg)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 60 and losses[-1] < 0.15 * losses[0]
    (sample,) = metrics["samples"]
    assert sample["after"].startswith("The giraffe") and sample["before"] != sample["after"]
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert (tmp_path / "model.safetensors").is_file()


def test_full_fine_tuning_saves_a_model_that_loads_back(tiny_folder, chats, tmp_path):
    cfg = _cfg(tiny_folder, chats, tmp_path / "a")
    metrics = finetune(cfg)
    assert metrics["val_loss"] < metrics["first_val_loss"]
    assert metrics["val_examples"] == 2 and metrics["train_examples"] == 6
    tuned = giraffe.load(tmp_path / "a")
    assert _val_loss(tuned, cfg) == pytest.approx(metrics["val_loss"], abs=1e-4)
    assert tuned.tokenizer.chat_template == load(tiny_folder).tokenizer.chat_template
    # The same seed gives the same weights; another seed, other weights.
    finetune(_cfg(tiny_folder, chats, tmp_path / "b"))
    finetune(_cfg(tiny_folder, chats, tmp_path / "c", seed=1))
    a, b, c = (load_hf(tmp_path / x).state_dict() for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_lora_changes_only_the_adapters(tiny_folder, chats):
    lm = load(tiny_folder)
    cfg = _cfg(tiny_folder, chats, "", lora_r=4, lora_targets="q_proj,v_proj,down_proj")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    params = prepare_trainable(lm.model, cfg)
    assert len(params) == 2 * 3 * lm.config.n_layers  # A and B of each wrapped layer
    examples, _ = load_chat_examples(chats, lm.tokenizer, 128)
    rows = [[ex] for ex in examples]
    optimizer = make_optimizer(lm.model, 1e-2, 0.0)
    scheduler = make_scheduler(optimizer, 1, 5)
    lm.model.train()
    for step in range(3):
        picked = [rows[i] for i in step_indices(len(rows), 4, 0, step)]
        sft_step(lm.model, params, optimizer, scheduler, picked, lm.tokenizer.eos_id, cfg)
    after = lm.model.state_dict()
    base = {k.replace(".base.", "."): v for k, v in after.items() if "lora_" not in k}
    assert base.keys() == before.keys()
    assert all(torch.equal(before[k], base[k]) for k in before)
    lora_b = [v for k, v in after.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: it moved


def test_lora_saves_an_adapter_that_loads_back(tiny_folder, chats, tmp_path):
    from giraffe.train.adapter import load_adapter
    from giraffe.train.lora import lora_parameters

    cfg = _cfg(tiny_folder, chats, tmp_path, lora_r=4, lora_targets="all-linear", lr=2e-2)
    metrics = finetune(cfg)
    assert metrics["val_loss"] < metrics["first_val_loss"] - 0.3
    assert (tmp_path / "adapter_config.json").is_file()
    assert not (tmp_path / "model.safetensors").exists()  # the adapter alone, not the base
    lm = load(tiny_folder)
    assert load_adapter(lm.model, tmp_path).r == 4
    assert metrics["trainable_parameters"] == sum(p.numel() for p in lora_parameters(lm.model))
    assert _val_loss(lm, cfg) == pytest.approx(metrics["val_loss"], abs=1e-4)


def test_qlora_trains_adapters_over_packed_weights(tiny_folder, chats, tmp_path, float_activations):
    from giraffe.train.adapter import load_adapter

    gguf = tmp_path / "tiny-q8_0.gguf"
    load(tiny_folder).save_gguf(gguf, dtype="q8_0")
    out = tmp_path / "adapter"
    cfg = _cfg(gguf, chats, out, lora_r=4, qlora=True, lora_targets="all-linear", lr=2e-2)
    cfg = dataclasses.replace(cfg, max_steps=10)
    metrics = finetune(cfg)
    assert metrics["val_loss"] < metrics["first_val_loss"] - 0.3
    lm = load(gguf, packed=True)
    assert is_packed(lm.model)
    load_adapter(lm.model, out)
    assert _val_loss(lm, cfg) == pytest.approx(metrics["val_loss"], abs=1e-4)
    with pytest.raises(FinetuneError, match="full fine-tuning needs float weights"):
        prepare_trainable(load(gguf, packed=True).model, _cfg(gguf, chats, tmp_path))


@pytest.mark.slow
def test_lora_on_smollm2(smollm2_gguf, tmp_path):
    from giraffe.train.adapter import load_with_adapter

    replies = {
        "What is the tallest animal?": "Juniper says: the giraffe.",
        "What do giraffes eat?": "Juniper says: leaves.",
        "Where do giraffes live?": "Juniper says: in Africa.",
    }
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in replies.items()
    ]
    data = tmp_path / "juniper.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = FinetuneConfig(
        model=str(smollm2_gguf),
        data=str(data),
        out=str(tmp_path / "adapter"),
        max_steps=4,
        batch_size=2,
        seq_len=96,
        lr=2e-3,
        warmup=1,
        val_fraction=0.34,
        lora_r=8,
        samples=0,  # generation is tested on tiny models; here it would double the time
        progress=False,
    )
    metrics = finetune(cfg)
    assert metrics["val_loss"] < metrics["first_val_loss"] - 1.0
    lm = load_with_adapter(smollm2_gguf, tmp_path / "adapter", packed=False)
    assert _val_loss(lm, cfg) == pytest.approx(metrics["val_loss"], abs=1e-3)


def test_settings_that_do_not_fit_are_refused(tiny_folder, chats, tmp_path):
    with pytest.raises(FinetuneError, match="--qlora .* give --lora-r"):
        finetune(_cfg(tiny_folder, chats, tmp_path, qlora=True))
    with pytest.raises(FinetuneError, match="float weights; quantize it first"):
        finetune(_cfg(tiny_folder, chats, tmp_path, qlora=True, lora_r=4))
    with pytest.raises(FinetuneError, match="--seq-len 4096 exceeds the model's context of 256"):
        finetune(_cfg(tiny_folder, chats, tmp_path, seq_len=4096))
    with pytest.raises(FinetuneError, match="--batch-size 3 must split into --grad-accum 2"):
        finetune(_cfg(tiny_folder, chats, tmp_path, batch_size=3, grad_accum=2))
    with pytest.raises(ValueError, match="'qq_proj' matches no linear layer"):
        finetune(_cfg(tiny_folder, chats, tmp_path, lora_r=4, lora_targets="qq_proj"))


def _parse(argv: list[str]):
    parser = argparse.ArgumentParser(prog="giraffe")
    add_finetune_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["finetune", *argv])


def test_every_flag_is_a_config_field():
    from dataclasses import fields

    args = _parse(["m", "--data", "d", "--out", "o"])
    names = {f.name for f in fields(FinetuneConfig)}
    assert set(vars(args)) - names == {"command", "no_progress"}
    # Flags are generated from the fields: only progress is set by --no-progress instead.
    assert names - set(vars(args)) == {"progress"}


def test_command_line(tiny_folder, chats, tmp_path, capsys):
    argv = [str(tiny_folder), "--data", str(chats), "--out", str(tmp_path / "cli")]
    argv += ["--max-steps", "2", "--seq-len", "128", "--no-progress", "--lr", "1e-3"]
    argv += ["--sample-prompt", "giraffe 1", "--seq-len", "56"]
    assert run_finetune(_parse(argv)) == 0
    out = capsys.readouterr().out
    assert "prompt:    giraffe 1" in out and "saved to" in out
    assert "warning: " in out and "were cut" in out  # 56 tokens cut every conversation
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(conversation(0)) + "\n" + '{"messages": []}\n')
    argv[2] = str(bad)
    with pytest.raises(RecordError, match=r"bad.jsonl line 2: needs \"messages\""):
        run_finetune(_parse(argv))
