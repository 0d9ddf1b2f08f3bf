"""Direct Preference Optimization (DPO, Rafailov et al. 2023): learn from pairs of
answers to the same prompt, one preferred ("chosen") and one not ("rejected").

DPO needs no reward model and no sampling: with the policy's log-probability of a whole
answer log pi(y|x) and the frozen reference's log pi_ref(y|x), the implicit reward is
r(y) = beta * (log pi(y|x) - log pi_ref(y|x)), and the loss is
-log sigmoid(r(chosen) - r(rejected)) (the paper's eq. 7). Accuracy is the share of
pairs whose chosen answer gets the higher reward; the margin is their mean difference.

The reference never changes, so its log-probabilities are computed ONCE, before the
first step, for every training and held-out pair and kept as two numbers per pair. With
LoRA the reference is the same model with its adapters switched off
(`disable_adapters`); without LoRA it is the initial weights, measured before any step:
no second copy of the model is ever held.

Each pair is the prompt as a user turn and the answer as the assistant turn, rendered
with the model's chat template; the log-probability covers the answer's tokens and its
end-of-turn marker (`giraffe.train.chat_data`'s mask). It does not parse command lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from giraffe.files.records import RecordError, RecordReport, check_preference, read_records
from giraffe.tokenizer.chat import ChatTemplateError
from giraffe.train.chat_data import (
    ChatDataReport,
    ChatExample,
    DataWarning,
    encode_chat,
    pad_examples,
)
from giraffe.train.denormals import flush_denormals
from giraffe.train.lora import disable_adapters
from giraffe.train.schedule import apply_update, make_optimizer, make_scheduler
from giraffe.train.tune_settings import DPOConfig
from giraffe.train.tuning import (
    FinetuneError,
    TuneReporter,
    check_run,
    load_model,
    pad_id,
    peak_lr,
    prepare_trainable,
    save_tuned,
    step_indices,
    train_and_val,
    uses_lora,
)


@dataclass(frozen=True)
class PreferencePair:
    chosen: ChatExample  # prompt + chosen answer, the answer's tokens masked
    rejected: ChatExample  # prompt + rejected answer
    line: int = 0  # JSONL line


# ---- data --------------------------------------------------------------------------------


def encode_pair(tokenizer, pref: dict, template: str | None = None, line: int = 0):
    user = {"role": "user", "content": pref["prompt"]}
    chosen, rejected = (
        encode_chat(tokenizer, [user, {"role": "assistant", "content": pref[k]}], template, line)
        for k in ("chosen", "rejected")
    )
    return PreferencePair(chosen, rejected, line)


def load_pairs(
    path, tokenizer, max_len: int, on_error: str = "stop", template: str | None = None
) -> tuple[list[PreferencePair], ChatDataReport]:
    """Read {"prompt", "chosen", "rejected"} lines; a pair longer than max_len tokens is cut
    (counted), and one whose answer is cut away entirely is left out (counted)."""

    def check(row: dict) -> PreferencePair:
        try:
            return encode_pair(tokenizer, check_preference(row), template)
        except ChatTemplateError as e:
            raise RecordError(str(e)) from None

    report = ChatDataReport(RecordReport(str(path)), max_len)
    pairs = []
    for record in read_records(path, check, on_error, report.records):
        sides = (record.value.chosen, record.value.rejected)
        if any(len(ex.ids) > max_len for ex in sides):
            report.truncated.append(record.line)
        cut = [
            dataclasses.replace(ex, ids=ex.ids[:max_len], mask=ex.mask[:max_len]) for ex in sides
        ]
        if not all(any(ex.mask) for ex in cut):
            report.dropped.append(record.line)
            continue
        pairs.append(PreferencePair(*cut, record.line))
        report.examples += 1
        report.tokens += sum(len(ex.ids) for ex in cut)
        report.targets += sum(ex.targets for ex in cut)
    if report.warning():
        warnings.warn(f"{path}: {report.warning()}", DataWarning, stacklevel=2)
    return pairs, report


# ---- the objective -----------------------------------------------------------------------


def sequence_logprobs(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over the masked tokens of log p(ids[t] | ids[:t]): one number per row, (B,).

    mask (B, L) marks the answer's tokens in ids (B, L); the vocabulary projection runs
    only where it is needed.
    """
    h = model.hidden(ids[:, :-1])  # (B, L-1, C): position t predicts ids[t+1]
    picked = mask[:, 1:]  # (B, L-1)
    logits = model.head(h[picked]).float()  # (N, V)
    token_lp = -F.cross_entropy(logits, ids[:, 1:][picked], reduction="none")  # (N,)
    rows = picked.nonzero()[:, 0]  # (N,) the row of each picked token
    return torch.zeros(ids.shape[0], dtype=token_lp.dtype).index_add(0, rows, token_lp)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """(mean loss, chosen rewards (B,), rejected rewards (B,)); rewards are detached."""
    chosen = beta * (policy_chosen - ref_chosen)  # (B,)
    rejected = beta * (policy_rejected - ref_rejected)  # (B,)
    loss = -F.logsigmoid(chosen - rejected).mean()
    return loss, chosen.detach(), rejected.detach()


def chosen_nll(policy_chosen: torch.Tensor, pairs) -> torch.Tensor:
    """Mean over pairs of the chosen answer's per-token negative log-likelihood."""
    tokens = torch.tensor([sum(p.chosen.mask) for p in pairs], dtype=policy_chosen.dtype)
    return (-policy_chosen / tokens).mean()


@dataclass
class ReferenceLogprobs:
    chosen: torch.Tensor  # (N,) log pi_ref(chosen | prompt) per pair, summed over tokens
    rejected: torch.Tensor  # (N,) log pi_ref(rejected | prompt)


def pair_logprobs(model, pairs: list[PreferencePair], pad: int) -> tuple[torch.Tensor, ...]:
    """Log-probabilities of chosen and rejected answers, one forward pass over both."""
    ids, mask = pad_examples([p.chosen for p in pairs] + [p.rejected for p in pairs], pad)
    lp = sequence_logprobs(model, ids, mask)  # (2B,)
    return lp[: len(pairs)], lp[len(pairs) :]


@torch.no_grad()
def reference_logprobs(
    model, pairs: list[PreferencePair], pad: int, batch_size: int, lora: bool
) -> ReferenceLogprobs:
    """The reference's log-probabilities for every pair (eval mode, adapters off with LoRA)."""
    was = model.training
    model.eval()
    chosen, rejected = [], []
    off = disable_adapters(model) if lora else contextlib.nullcontext()
    try:
        with off:
            for i in range(0, len(pairs), batch_size):
                c, r = pair_logprobs(model, pairs[i : i + batch_size], pad)
                chosen.append(c)
                rejected.append(r)
    finally:
        model.train(was)
    empty = torch.zeros(0)
    return ReferenceLogprobs(torch.cat(chosen or [empty]), torch.cat(rejected or [empty]))


def dpo_step(model, pairs, ref: ReferenceLogprobs, index: list[int], pad: int, cfg: DPOConfig):
    """Accumulate gradients for the pairs at `index` in cfg.grad_accum micro-batches;
    returns the mean loss and the rewards (chosen, rejected) of every pair."""
    total, chosen, rejected = 0.0, [], []
    parts = cfg.grad_accum
    for part in range(parts):
        idx = index[part::parts]
        pc, pr = pair_logprobs(model, [pairs[i] for i in idx], pad)
        loss, c, r = dpo_loss(pc, pr, ref.chosen[idx], ref.rejected[idx], cfg.beta)
        if cfg.sft_weight:
            loss = loss + cfg.sft_weight * chosen_nll(pc, [pairs[i] for i in idx])
        (loss / parts).backward()
        total += float(loss.detach()) / parts
        chosen.append(c)
        rejected.append(r)
    return total, torch.cat(chosen), torch.cat(rejected)


@torch.no_grad()
def evaluate_pairs(model, pairs, ref: ReferenceLogprobs, pad: int, cfg: DPOConfig) -> dict:
    """Held-out loss, accuracy (chosen reward > rejected) and mean margin, in eval mode."""
    was = model.training
    model.eval()
    per = cfg.batch_size // cfg.grad_accum
    chosen, rejected = [], []
    try:
        for i in range(0, len(pairs), per):
            pc, pr = pair_logprobs(model, pairs[i : i + per], pad)
            _, c, r = dpo_loss(pc, pr, ref.chosen[i : i + per], ref.rejected[i : i + per], cfg.beta)
            chosen.append(c)
            rejected.append(r)
    finally:
        model.train(was)
    c, r = torch.cat(chosen), torch.cat(rejected)
    return {
        "loss": float(-F.logsigmoid(c - r).mean()),
        "accuracy": float((c > r).float().mean()),
        "margin": float((c - r).mean()),
    }


def pair_evaluation(report: TuneReporter, step: int, seen: list, held: dict | None) -> dict:
    """Accuracy and mean margin of the training pairs seen since the last evaluation (then
    forgotten), and the held-out loss/accuracy/margin, logged as one evaluation record."""
    margins = torch.cat(seen) if seen else torch.zeros(0)
    seen.clear()
    extra = {}
    if len(margins):
        extra["train_accuracy"] = round(float((margins > 0).float().mean()), 4)
        extra["train_margin"] = round(float(margins.mean()), 5)
    if held is None:
        return extra
    shown = {"val_accuracy": round(held["accuracy"], 4), "val_margin": round(held["margin"], 5)}
    return report.evaluation(step, held["loss"], {**shown, **extra})


# ---- the loop ----------------------------------------------------------------------------


def train_dpo(cfg: DPOConfig) -> dict:
    """Train with DPO as `cfg` says; returns the final metrics."""
    check_run(cfg)
    if cfg.beta <= 0:
        raise FinetuneError(f"--beta must be positive, got {cfg.beta}")
    if cfg.sft_weight < 0:
        raise FinetuneError(f"--sft-weight must be 0 or more, got {cfg.sft_weight}")
    with flush_denormals():
        return _train_dpo(cfg)


def _train_dpo(cfg: DPOConfig) -> dict:
    torch.manual_seed(cfg.seed)
    lm = load_model(cfg)
    model, pad = lm.model, pad_id(lm.tokenizer)
    train, val, data = pair_data(cfg, lm.tokenizer)
    if cfg.progress:
        print(f"{data.summary()}; {len(train)} for training, {len(val)} held out", flush=True)
    val = val[: cfg.eval_examples]
    params = prepare_trainable(model, cfg)
    per = cfg.batch_size // cfg.grad_accum
    # Once, before any step: the reference the policy is measured against.
    ref = reference_logprobs(model, train, pad, per, uses_lora(cfg))
    ref_val = reference_logprobs(model, val, pad, per, uses_lora(cfg))

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    optimizer = make_optimizer(model, peak_lr(cfg, 5e-5, 1e-6), cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.warmup, cfg.max_steps, cfg.min_lr_ratio)
    report = TuneReporter("dpo", cfg, out)
    seen: list[torch.Tensor] = []  # reward margins of the training pairs since the last evaluation

    def evaluate(step: int) -> dict:
        held = evaluate_pairs(model, val, ref_val, pad, cfg) if val else None
        return pair_evaluation(report, step, seen, held)

    first = evaluate(0)
    torch.manual_seed(cfg.seed)  # LoRA dropout draws the same numbers in every run
    model.train()
    metrics, began = {}, time.monotonic()
    with report.bar(cfg.max_steps):
        for step in range(cfg.max_steps):
            index = step_indices(len(train), cfg.batch_size, cfg.seed, step)
            loss, chosen, rejected = dpo_step(model, train, ref, index, pad, cfg)
            seen.append(chosen - rejected)
            apply_update(params, optimizer, scheduler, cfg.clip)
            tokens = sum(len(train[i].chosen.ids) + len(train[i].rejected.ids) for i in index)
            metrics = report.step(step + 1, loss, scheduler.get_last_lr()[0], tokens)
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.max_steps:
                metrics = {**metrics, **evaluate(step + 1)}
    model.eval()
    saved = save_tuned(lm, out, cfg)
    report.finish()
    return {
        **metrics,
        "first_val_loss": first.get("val_loss", math.nan),
        "first_val_accuracy": first.get("val_accuracy", math.nan),
        "train_pairs": len(train),
        "val_pairs": len(val),
        "truncated": len(data.truncated),
        "dropped": len(data.dropped),
        "data": data.summary(),
        "trainable_parameters": sum(p.numel() for p in params),
        "seconds": round(time.monotonic() - began, 1),
        "saved": str(saved),
    }


def pair_data(cfg, tok) -> tuple[list[PreferencePair], list[PreferencePair], ChatDataReport]:
    """(train pairs, held-out pairs, the data report) as cfg's data/val settings say."""

    def read(path):
        return load_pairs(path, tok, cfg.seq_len, cfg.on_error, cfg.template)

    return train_and_val(read, cfg.data, cfg.val_data, cfg, "preference pair")
