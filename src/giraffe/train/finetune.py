"""Supervised fine-tuning (SFT): teach a chat model from example conversations.

`finetune(cfg)` loads a model (float, or packed 4/8-bit blocks for QLoRA), optionally
wraps it with LoRA adapters, and trains on the assistant's tokens only
(`giraffe.train.chat_data` builds the masks from the chat template). The loss is the
mean cross-entropy over every assistant token of the optimiser step, whatever the
micro-batch split. It reports train and held-out loss (progress bar, `log.jsonl`,
`loss.png` via `giraffe.train.report`), shows greedy answers to held-out prompts before
and after, and saves the adapter (PEFT layout) or the whole model (a Hugging Face
folder). Batches are a function of the seed and the step, so a run is reproducible.

The pieces every tuning loop shares (loading, LoRA set-up, splits, batches, the reporter,
saving) are in `giraffe.train.tuning`, the shared settings in `giraffe.train.tune_settings`.
It does not parse command lines (`giraffe.train.tune_command`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from giraffe.lm import LanguageModel
from giraffe.train.chat_data import Batch, ChatExample, collate, load_chat_examples, pack
from giraffe.train.denormals import flush_denormals
from giraffe.train.schedule import apply_update, make_optimizer, make_scheduler
from giraffe.train.tune_settings import FinetuneConfig
from giraffe.train.tuning import (
    TuneReporter,
    check_run,
    load_model,
    pad_id,
    peak_lr,
    prepare_trainable,
    save_tuned,
    step_indices,
    train_and_val,
)

# ---- the SFT loss ------------------------------------------------------------------------


def sft_loss(model, batch: Batch) -> torch.Tensor:
    """Summed cross-entropy of the masked labels; the vocabulary projection runs only at
    the positions that count (assistant tokens), not over the whole batch."""
    h = model.hidden(batch.inputs, **batch.model_kwargs())  # (B, T, C)
    logits = model.head(h[batch.mask])  # (N, V)
    return F.cross_entropy(logits.float(), batch.labels[batch.mask], reduction="sum")


@torch.no_grad()
def mean_loss(model, rows: list, pad: int, per_batch: int) -> float:
    """Token-weighted mean loss over `rows` (in eval mode)."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, len(rows), per_batch):
            batch = collate(rows[i : i + per_batch], pad)
            total += float(sft_loss(model, batch))
            count += int(batch.mask.sum())
    finally:
        model.train(was)
    return total / max(count, 1)


# ---- samples -----------------------------------------------------------------------------


def sample_conversations(cfg, held_out: list[ChatExample]) -> list[tuple[list[dict], str]]:
    """(messages up to an answer, the reference answer or '') to show before and after."""
    if cfg.sample_prompts:
        return [([{"role": "user", "content": p}], "") for p in cfg.sample_prompts]
    out = []
    for ex in held_out[: cfg.samples]:
        messages = list(ex.messages)
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        out.append((messages[:last], messages[last]["content"]))
    return [(m, ref) for m, ref in out if m]


def answers(lm: LanguageModel, prompts, max_new_tokens: int) -> list[str]:
    was = lm.model.training
    lm.model.eval()
    try:
        return [
            lm.chat(m, max_new_tokens=max_new_tokens, temperature=0.0, seed=0) for m, _ in prompts
        ]
    finally:
        lm.model.train(was)


# ---- the loop ----------------------------------------------------------------------------


def finetune(cfg: FinetuneConfig) -> dict:
    """Fine-tune as `cfg` says; returns the final metrics (losses, samples, data counts)."""
    check_run(cfg)
    with flush_denormals():
        return _finetune(cfg)


def _finetune(cfg: FinetuneConfig) -> dict:
    torch.manual_seed(cfg.seed)
    lm = load_model(cfg)
    tok, model = lm.tokenizer, lm.model
    train, val, data = _data(cfg, tok)
    if cfg.progress:
        print(f"{data.summary()}; {len(train)} for training, {len(val)} held out", flush=True)
    rows = pack(train, cfg.seq_len) if cfg.packing else [[ex] for ex in train]
    val_rows = [[ex] for ex in val[: cfg.eval_examples]]
    params = prepare_trainable(model, cfg)
    prompts = sample_conversations(cfg, val)
    before = answers(lm, prompts, cfg.sample_tokens)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    optimizer = make_optimizer(model, peak_lr(cfg, 2e-4, 2e-5), cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.warmup, cfg.max_steps, cfg.min_lr_ratio)
    report = TuneReporter("sft", cfg, out)
    pad, per = pad_id(tok), cfg.batch_size // cfg.grad_accum

    def evaluate(step: int) -> dict:
        return report.evaluation(step, mean_loss(model, val_rows, pad, per), {})

    first = evaluate(0) if val_rows else {}
    torch.manual_seed(cfg.seed)  # LoRA dropout draws the same numbers in every run
    model.train()
    metrics, began = {}, time.monotonic()
    with report.bar(cfg.max_steps):
        for step in range(cfg.max_steps):
            picked = [rows[i] for i in step_indices(len(rows), cfg.batch_size, cfg.seed, step)]
            loss, tokens = sft_step(model, params, optimizer, scheduler, picked, pad, cfg)
            metrics = report.step(step + 1, loss, scheduler.get_last_lr()[0], tokens)
            if val_rows and (step + 1) % cfg.eval_every == 0:
                metrics = {**metrics, **evaluate(step + 1)}
    if val_rows and cfg.max_steps % cfg.eval_every:
        metrics = {**metrics, **evaluate(cfg.max_steps)}
    model.eval()
    after = answers(lm, prompts, cfg.sample_tokens)
    saved = save_tuned(lm, out, cfg)
    report.finish()
    samples = [
        {"prompt": m[-1]["content"], "reference": ref, "before": b, "after": a}
        for (m, ref), b, a in zip(prompts, before, after, strict=True)
    ]
    return {
        **metrics,
        "first_val_loss": first.get("val_loss", math.nan),
        "train_examples": len(train),
        "val_examples": len(val),
        "rows": len(rows),
        "truncated": len(data.truncated),
        "dropped": len(data.dropped),
        "data": data.summary(),
        "trainable_parameters": sum(p.numel() for p in params),
        "seconds": round(time.monotonic() - began, 1),
        "samples": samples,
        "saved": str(saved),
    }


def _data(cfg: FinetuneConfig, tok) -> tuple[list[ChatExample], list[ChatExample], object]:
    def read(path):
        return load_chat_examples(path, tok, cfg.seq_len, cfg.on_error, cfg.template)

    return train_and_val(read, cfg.data, cfg.val_data, cfg, "conversation")


def sft_step(model, params, optimizer, scheduler, rows, pad: int, cfg) -> tuple[float, int]:
    """One optimiser step over `rows`, split into grad_accum micro-batches; the loss is the
    mean over all the step's assistant tokens."""
    micro = [collate(rows[i :: cfg.grad_accum], pad) for i in range(cfg.grad_accum)]
    count = max(sum(int(b.mask.sum()) for b in micro), 1)
    total = 0.0
    for batch in micro:
        loss = sft_loss(model, batch) / count
        loss.backward()
        total += float(loss.detach())
    apply_update(params, optimizer, scheduler, cfg.clip)
    return total, sum(b.tokens for b in micro)
