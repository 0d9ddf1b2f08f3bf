"""DPO: the loss against a hand computation, answer log-probabilities against the plain
per-sequence sum, the reference computed once and equal to a recomputation (initial
weights, or the same model with adapters off), a tiny model learning a rule-decided
preference, and the command line."""

from __future__ import annotations

import argparse
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import preference

import giraffe
from giraffe.files.records import RecordError
from giraffe.lm import load
from giraffe.train.adapter import load_with_adapter
from giraffe.train.chat_data import pad_examples
from giraffe.train.data import DataWarning
from giraffe.train.lora import disable_adapters
from giraffe.train.preference import (
    DPOConfig,
    dpo_loss,
    dpo_step,
    evaluate_pairs,
    load_pairs,
    pair_logprobs,
    reference_logprobs,
    sequence_logprobs,
    train_dpo,
)
from giraffe.train.schedule import make_optimizer
from giraffe.train.tune_command import add_dpo_parser, run_dpo
from giraffe.train.tuning import prepare_trainable, split_items, step_indices


def _cfg(tiny_folder, prefs, out, **kw) -> DPOConfig:
    base = dict(
        model=str(tiny_folder),
        data=str(prefs),
        out=str(out),
        max_steps=20,
        batch_size=4,
        seq_len=128,
        lr=1e-3,
        warmup=2,
        eval_every=10,
        val_fraction=0.2,
        progress=False,
    )
    return DPOConfig(**{**base, **kw})


def test_dpo_loss_is_the_papers_formula():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    rc, rr = torch.tensor([-1.2, -2.5]), torch.tensor([-1.4, -0.5])
    loss, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.1)
    # rewards 0.1 * (policy - reference): chosen (0.02, 0.05), rejected (-0.01, -0.05)
    assert chosen.tolist() == pytest.approx([0.02, 0.05])
    assert rejected.tolist() == pytest.approx([-0.01, -0.05])
    hand = (math.log1p(math.exp(-0.03)) + math.log1p(math.exp(-0.10))) / 2  # -log sigmoid
    assert float(loss) == pytest.approx(hand, rel=1e-6)
    assert float(loss) == pytest.approx(0.6613285, abs=1e-6)


@torch.no_grad()
def test_sequence_logprobs_sum_the_answer_tokens(tiny_folder, prefs):
    lm = load(tiny_folder)
    pairs, _ = load_pairs(prefs, lm.tokenizer, 128)
    examples = [pairs[0].chosen, pairs[1].rejected, pairs[2].chosen]
    ids, mask = pad_examples(examples, lm.tokenizer.eos_id)
    batched = sequence_logprobs(lm.model, ids, mask)
    for row, ex in enumerate(examples):
        logp = F.log_softmax(lm.model(torch.tensor([ex.ids]))[0].float(), -1)  # (T, V)
        alone = sum(float(logp[t - 1, ex.ids[t]]) for t in range(1, len(ex.ids)) if ex.mask[t])
        assert float(batched[row]) == pytest.approx(alone, abs=1e-4)


def test_sft_weight_adds_the_chosen_answers_mean_token_nll(tiny_folder, prefs):
    lm = load(tiny_folder)
    pairs = load_pairs(prefs, lm.tokenizer, 128)[0][:4]
    pad = lm.tokenizer.eos_id
    ref = reference_logprobs(lm.model, pairs, pad, 4, lora=False)
    grads, losses = [], []
    for weight in (0.0, 0.5):
        lm.model.zero_grad()
        cfg = _cfg(tiny_folder, prefs, "", sft_weight=weight)
        losses.append(dpo_step(lm.model, pairs, ref, [0, 1, 2, 3], pad, cfg)[0])
        grads.append(lm.model.embed.weight.grad.clone())
    with torch.no_grad():
        pc, _ = pair_logprobs(lm.model, pairs, pad)
    tokens = torch.tensor([sum(p.chosen.mask) for p in pairs], dtype=torch.float32)
    hand = float((-pc / tokens).mean())
    assert losses[1] == pytest.approx(losses[0] + 0.5 * hand, rel=1e-5)
    assert not torch.allclose(grads[0], grads[1])  # the extra term does push the weights


def _train_a_little(lm, pairs, ref, cfg, steps=3):
    optimizer = make_optimizer(lm.model, 1e-2, 0.0)
    lm.model.train()
    for step in range(steps):
        index = step_indices(len(pairs), cfg.batch_size, 0, step)
        dpo_step(lm.model, pairs, ref, index, lm.tokenizer.eos_id, cfg)
        optimizer.step()
        optimizer.zero_grad()


def _close(a, b) -> bool:
    return torch.allclose(a, b, atol=1e-4)


def test_reference_is_the_initial_weights(tiny_folder, prefs):
    lm = load(tiny_folder)
    cfg = _cfg(tiny_folder, prefs, "")
    pairs = load_pairs(prefs, lm.tokenizer, 128)[0][:8]
    params = prepare_trainable(lm.model, cfg)
    assert len(params) == len(list(lm.model.parameters()))  # no LoRA: every weight trains
    ref = reference_logprobs(lm.model, pairs, lm.tokenizer.eos_id, 4, lora=False)
    _train_a_little(lm, pairs, ref, cfg)
    fresh = load(tiny_folder)  # the initial weights, read again
    again = reference_logprobs(fresh.model, pairs, fresh.tokenizer.eos_id, 3, lora=False)
    assert _close(again.chosen, ref.chosen) and _close(again.rejected, ref.rejected)
    moved = reference_logprobs(lm.model, pairs, lm.tokenizer.eos_id, 4, lora=False)
    assert not _close(moved.chosen, ref.chosen)  # the policy did move away


def test_reference_is_the_model_with_adapters_off(tiny_folder, prefs):
    lm = load(tiny_folder)
    cfg = _cfg(tiny_folder, prefs, "", lora_r=4, lora_dropout=0.1)
    pairs = load_pairs(prefs, lm.tokenizer, 128)[0][:8]
    prepare_trainable(lm.model, cfg)
    ref = reference_logprobs(lm.model, pairs, lm.tokenizer.eos_id, 4, lora=True)
    _train_a_little(lm, pairs, ref, cfg)
    lm.model.eval()
    with torch.no_grad():
        with disable_adapters(lm.model):
            base = pair_logprobs(lm.model, pairs, lm.tokenizer.eos_id)
        policy = pair_logprobs(lm.model, pairs, lm.tokenizer.eos_id)
    assert _close(base[0], ref.chosen) and _close(base[1], ref.rejected)
    assert not _close(policy[0], ref.chosen)


def test_tiny_model_learns_a_rule_decided_preference(tiny_folder, prefs, tmp_path):
    metrics = train_dpo(_cfg(tiny_folder, prefs, tmp_path))
    assert metrics["val_pairs"] == 8 and metrics["train_pairs"] == 32
    # At step 0 policy = reference: every reward is 0, no pair is ranked right yet.
    assert metrics["first_val_accuracy"] == 0.0
    assert metrics["first_val_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert metrics["val_accuracy"] >= 0.875 and metrics["val_margin"] > 0.2
    assert metrics["val_loss"] < math.log(2) - 0.1
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if "val_accuracy" in r]
    assert [r["step"] for r in evals] == [0, 10, 20] and "train_accuracy" in evals[-1]
    assert giraffe.load(tmp_path).config.vocab_size == load(tiny_folder).config.vocab_size


def test_dpo_with_lora_saves_an_adapter_measured_against_the_base(tiny_folder, prefs, tmp_path):
    cfg = _cfg(tiny_folder, prefs, tmp_path, lora_r=8, lora_targets="all-linear", lr=2e-2)
    metrics = train_dpo(cfg)
    assert metrics["val_accuracy"] >= 0.875 and metrics["val_loss"] < math.log(2) - 0.1
    assert (tmp_path / "adapter_model.safetensors").is_file()
    lm = load_with_adapter(tiny_folder, tmp_path)
    pairs, _ = load_pairs(prefs, lm.tokenizer, cfg.seq_len)
    _, val = split_items(pairs, cfg.val_fraction, cfg.seed)
    pad = lm.tokenizer.eos_id
    ref = reference_logprobs(lm.model, val, pad, 4, lora=True)  # the base: adapters off
    held = evaluate_pairs(lm.model, val, ref, pad, cfg)
    assert held["loss"] == pytest.approx(metrics["val_loss"], abs=1e-4)
    assert held["accuracy"] == metrics["val_accuracy"]


@pytest.mark.slow
def test_dpo_with_lora_on_smollm2(smollm2_gguf, tmp_path):
    rows = [
        {"prompt": q, "chosen": f"In short: {a}.", "rejected": f"Well, {a} I think, maybe."}
        for q, a in [
            ("What is the tallest animal?", "the giraffe"),
            ("What do giraffes eat?", "leaves"),
            ("Where do giraffes live?", "Africa"),
            ("How tall is a giraffe?", "about five metres"),
        ]
    ]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DPOConfig(
        model=str(smollm2_gguf),
        data=str(data),
        out=str(tmp_path / "adapter"),
        max_steps=4,
        batch_size=2,
        seq_len=96,
        lr=5e-3,
        warmup=1,
        val_fraction=0.25,
        lora_r=8,
        progress=False,
    )
    metrics = train_dpo(cfg)
    # The reference is SmolLM2 with its adapters off: at step 0 the policy equals it.
    assert metrics["first_val_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert metrics["val_loss"] < math.log(2) - 0.05 and metrics["val_accuracy"] == 1.0


def test_long_pairs_are_cut_and_counted(tiny_folder, tmp_path):
    lm = load(tiny_folder)
    long = {"prompt": "hi", "chosen": "The giraffe is tall. " * 20, "rejected": "no"}
    late = {"prompt": "giraffe " * 40, "chosen": "yes", "rejected": "no"}
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (long, late)))
    with pytest.warns(DataWarning, match=r"2 example\(s\) longer than 40 tokens were cut"):
        pairs, report = load_pairs(path, lm.tokenizer, 40)
    assert [p.line for p in pairs] == [1] and report.dropped == [2]
    assert len(pairs[0].chosen.ids) == 40 and len(pairs[0].rejected.ids) < 40


def _parse(argv):
    parser = argparse.ArgumentParser(prog="giraffe")
    add_dpo_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["dpo", *argv])


def test_command_line(tiny_folder, prefs, tmp_path, capsys):
    argv = [str(tiny_folder), "--data", str(prefs), "--out", str(tmp_path / "o")]
    argv += ["--max-steps", "2", "--seq-len", "128", "--beta", "0.2", "--no-progress"]
    assert run_dpo(_parse(argv)) == 0
    assert "saved to" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    same = {"prompt": "p", "chosen": "x", "rejected": "x"}
    bad.write_text(json.dumps(preference(random.Random(1))) + "\n" + json.dumps(same) + "\n")
    argv[2] = str(bad)
    with pytest.raises(RecordError, match="bad.jsonl line 2: .*the same text"):
        run_dpo(_parse(argv))
