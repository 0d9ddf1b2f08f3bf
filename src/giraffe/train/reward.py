"""Reward model: a decoder that reads a conversation and gives one number, how good the
answer is, trained from preference pairs.

The model is the language model's body plus a scalar head (`nn.Linear(hidden, 1,
bias=False)`) read at the last token that is not padding; the pairwise loss is
-log sigmoid(r(chosen) - r(rejected)) (Bradley-Terry, as in InstructGPT, Ouyang et al.
2022), and accuracy is the share of pairs scored in the right order. It trains every
weight of the body and the head (no LoRA here).

"Last non-pad token" follows transformers' `*ForSequenceClassification` exactly: the
rightmost token that is not `pad_id`. (A sequence whose real last token *is* the pad id,
e.g. a template ending in eos when pad = eos, is read one token earlier, by giraffe and
transformers alike.) The model is saved as a Hugging Face folder that
`LlamaForSequenceClassification` (Qwen2/Mistral/GPT2ForSequenceClassification for those
families) loads: the body's tensors without the LM head, `score.weight`, and a config with
that architecture, `num_labels: 1` and `pad_token_id`. It does not parse command lines.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from giraffe.formats import names
from giraffe.formats.assemble import assemble, disassemble
from giraffe.formats.hf import atomic_write
from giraffe.formats.hf_config import config_from_hf, config_to_hf, read_json
from giraffe.models import Decoder
from giraffe.tokenizer.tokenizer import load_tokenizer_file
from giraffe.train.chat_data import pad_examples
from giraffe.train.denormals import flush_denormals
from giraffe.train.preference import PreferencePair, pair_data, pair_evaluation
from giraffe.train.schedule import apply_update, make_optimizer, make_scheduler
from giraffe.train.tune_settings import RewardConfig
from giraffe.train.tuning import (
    FinetuneError,
    TuneReporter,
    check_run,
    load_model,
    pad_id,
    step_indices,
)

# The head's tensor name in transformers' *ForSequenceClassification (every family).


class RewardModel(nn.Module):
    def __init__(self, body: Decoder, pad_id: int) -> None:
        super().__init__()
        self.body, self.pad_id = body, pad_id
        self.score = nn.Linear(body.config.hidden_size, 1, bias=False)
        nn.init.normal_(self.score.weight, std=0.02)  # transformers' initializer_range

    @property
    def config(self):
        return self.body.config

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T), right-padded with pad_id -> rewards (B,)."""
        h = self.body.hidden(ids)  # (B, T, C); causal, so padding after a token never reaches it
        last = last_token_index(ids, self.pad_id)  # (B,)
        return self.score(h[torch.arange(ids.shape[0]), last]).squeeze(-1)  # (B,)


def last_token_index(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Index of the rightmost token that is not pad_id in each row (0 if all are)."""
    positions = torch.arange(ids.shape[-1])  # (T,)
    return (positions * (ids != pad_id)).argmax(-1)  # (B,)


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid(chosen - rejected).mean()


def pair_rewards(rm: RewardModel, pairs: list[PreferencePair]) -> tuple[torch.Tensor, ...]:
    """Rewards of the chosen and the rejected conversations, one forward pass over both."""
    ids, _ = pad_examples([p.chosen for p in pairs] + [p.rejected for p in pairs], rm.pad_id)
    r = rm(ids)  # (2B,)
    return r[: len(pairs)], r[len(pairs) :]


# ---- files -------------------------------------------------------------------------------


def save_reward_model(rm: RewardModel, tokenizer, folder) -> Path:
    """A Hugging Face *ForSequenceClassification folder (+ the tokenizer)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: v for k, v in disassemble(rm.body, "hf").items() if k not in names.TIED_HEAD_NAMES
    }
    tensors[names.SEQUENCE_SCORE_HEAD] = rm.score.weight.detach().contiguous()  # (1, C)
    atomic_write(
        folder / "model.safetensors", lambda p: save_file(tensors, p, metadata={"format": "pt"})
    )
    config = config_to_hf(rm.config)
    arch = config["architectures"][0].removesuffix("ForCausalLM").removesuffix("LMHeadModel")
    config.update(
        architectures=[arch + "ForSequenceClassification"],
        num_labels=1,
        id2label={"0": "LABEL_0"},
        label2id={"LABEL_0": 0},
        pad_token_id=rm.pad_id,
        torch_dtype="float32",
    )
    for key, value in (("bos_token_id", tokenizer.bos_id), ("eos_token_id", tokenizer.eos_id)):
        if value is not None:
            config[key] = value
    text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    atomic_write(folder / "config.json", lambda p: Path(p).write_text(text, encoding="utf-8"))
    tokenizer.save(folder)
    return folder


def load_reward_model(folder) -> tuple[RewardModel, object]:
    """(RewardModel, Tokenizer) from a folder written by `save_reward_model` (or transformers)."""
    folder = Path(folder)
    raw = read_json(folder / "config.json")
    cfg = config_from_hf(raw, str(folder / "config.json"))
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if names.SEQUENCE_SCORE_HEAD not in tensors:
        raise FinetuneError(
            f"{folder} has no {names.SEQUENCE_SCORE_HEAD}: it is not a reward model folder"
        )
    score = tensors.pop(names.SEQUENCE_SCORE_HEAD)
    if not cfg.tie_embeddings and not any(n in tensors for n in names.TIED_HEAD_NAMES):
        # A reward model has no LM head; built tied, the body needs none (only hidden() runs).
        cfg = cfg.replace(tie_embeddings=True)
    body = assemble(cfg, "hf", tensors, lambda n: tensors[n], str(folder))
    rm = RewardModel(body, raw.get("pad_token_id") or 0)
    with torch.no_grad():
        rm.score.weight.copy_(score)
    return rm.eval(), load_tokenizer_file(folder)


# ---- the loop ----------------------------------------------------------------------------


@torch.no_grad()
def evaluate_rewards(rm: RewardModel, pairs, per: int) -> dict:
    was = rm.training
    rm.eval()
    chosen, rejected = [], []
    try:
        for i in range(0, len(pairs), per):
            c, r = pair_rewards(rm, pairs[i : i + per])
            chosen.append(c)
            rejected.append(r)
    finally:
        rm.train(was)
    c, r = torch.cat(chosen), torch.cat(rejected)
    return {
        "loss": float(pairwise_loss(c, r)),
        "accuracy": float((c > r).float().mean()),
        "margin": float((c - r).mean()),
    }


def train_reward(cfg: RewardConfig) -> dict:
    """Train a reward model as `cfg` says; returns the final metrics."""
    check_run(cfg)
    with flush_denormals():
        return _train_reward(cfg)


def _train_reward(cfg: RewardConfig) -> dict:
    torch.manual_seed(cfg.seed)
    lm = load_model(cfg)  # float weights: the whole body trains
    rm = RewardModel(lm.model, pad_id(lm.tokenizer))
    if rm.body.lm_head is not None:
        rm.body.lm_head.requires_grad_(False)  # never used: the score head replaces it
    train, val, data = pair_data(cfg, lm.tokenizer)
    if cfg.progress:
        print(f"{data.summary()}; {len(train)} for training, {len(val)} held out", flush=True)
    val = val[: cfg.eval_examples]
    per = cfg.batch_size // cfg.grad_accum

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    optimizer = make_optimizer(rm, cfg.lr, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.warmup, cfg.max_steps, cfg.min_lr_ratio)
    report = TuneReporter("reward", cfg, out)
    seen: list[torch.Tensor] = []  # margins of training pairs since the last evaluation

    def evaluate(step: int) -> dict:
        held = evaluate_rewards(rm, val, per) if val else None
        return pair_evaluation(report, step, seen, held)

    first = evaluate(0)
    rm.train()
    metrics, began = {}, time.monotonic()
    with report.bar(cfg.max_steps):
        for step in range(cfg.max_steps):
            index = step_indices(len(train), cfg.batch_size, cfg.seed, step)
            loss = 0.0
            for part in range(cfg.grad_accum):
                c, r = pair_rewards(rm, [train[i] for i in index[part :: cfg.grad_accum]])
                part_loss = pairwise_loss(c, r)
                (part_loss / cfg.grad_accum).backward()
                loss += float(part_loss.detach()) / cfg.grad_accum
                seen.append((c - r).detach())
            apply_update(rm.parameters(), optimizer, scheduler, cfg.clip)
            tokens = sum(len(train[i].chosen.ids) + len(train[i].rejected.ids) for i in index)
            metrics = report.step(step + 1, loss, scheduler.get_last_lr()[0], tokens)
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.max_steps:
                metrics = {**metrics, **evaluate(step + 1)}
    rm.eval()
    save_reward_model(rm, lm.tokenizer, out)
    report.finish()
    return {
        **metrics,
        "first_val_accuracy": first.get("val_accuracy", math.nan),
        "train_pairs": len(train),
        "val_pairs": len(val),
        "truncated": len(data.truncated),
        "dropped": len(data.dropped),
        "data": data.summary(),
        "seconds": round(time.monotonic() - began, 1),
        "saved": str(out),
    }
