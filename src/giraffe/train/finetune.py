"""Supervised fine-tuning (SFT): teach a chat model from example conversations.

`finetune(cfg)` loads a model (float, or packed 4/8-bit blocks for QLoRA), optionally
wraps it with LoRA adapters, and trains on the assistant's tokens only
(`giraffe.train.chat_data` builds the masks from the chat template). The loss is the
mean cross-entropy over every assistant token of the optimiser step, whatever the
micro-batch split. It reports train and held-out loss (progress bar, `log.jsonl`,
`loss.png` via `giraffe.train.report`), shows greedy answers to held-out prompts before
and after, and saves the adapter (PEFT layout) or the whole model (a Hugging Face
folder). Batches are a function of the seed and the step, so a run is reproducible.

The pieces every fine-tuning loop shares (loading, LoRA set-up, splits, batches, the
reporter, saving) live here too, for `giraffe.train.preference` and `giraffe.train.reward`.
It does not parse command lines (`giraffe.train.tune_command`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from giraffe.files.records import ON_ERROR
from giraffe.lm import LanguageModel, load
from giraffe.quant.linear import QuantEmbedding, QuantLinear
from giraffe.train.adapter import save_adapter
from giraffe.train.chat_data import Batch, ChatExample, collate, load_chat_examples, pack
from giraffe.train.denormals import flush_denormals
from giraffe.train.lora import LoraConfig, apply_lora, lora_parameters
from giraffe.train.report import Reporter
from giraffe.train.schedule import apply_update, make_optimizer, make_scheduler


class FinetuneError(ValueError):
    """The fine-tuning settings do not fit together, with the model or with the data."""


@dataclass(frozen=True)
class FinetuneConfig:
    model: str = ""  # alias, .gguf file or Hugging Face folder to start from
    data: str = ""  # JSONL of {"messages": [{"role", "content"}, ...]} conversations
    out: str = ""  # the adapter (LoRA) or the whole model, plus log.jsonl and loss.png
    val_data: str = ""  # held-out conversations; "" = hold out val_fraction of `data`
    val_fraction: float = 0.05  # share of `data` held out when val_data is not given
    max_steps: int = 100  # optimiser steps (also the cosine schedule's length)
    batch_size: int = 4  # conversations (or packed rows) per optimiser step
    grad_accum: int = 1  # micro-batches per step (each batch_size / grad_accum rows)
    seq_len: int = 512  # longest example (or packed row) in tokens; longer ones are cut
    packing: bool = False  # fill rows of seq_len with several examples (attention kept apart)
    lr: float | None = None  # peak learning rate; None = 2e-4 with LoRA, 2e-5 without
    min_lr_ratio: float = 0.1  # the cosine ends at lr x this
    warmup: int = 10  # linear warm-up steps
    weight_decay: float = 0.0  # AdamW's decoupled decay, on matrices only
    clip: float = 1.0  # max global gradient norm; 0 = no clipping
    seed: int = 0  # LoRA's initial weights, the split, the batch order, dropout
    eval_every: int = 50  # steps between held-out evaluations
    eval_examples: int = 200  # held-out examples scored at each evaluation (the first ones)
    lora_r: int = 0  # LoRA rank; 0 = full fine-tuning of every weight
    lora_alpha: float = 16.0  # LoRA scale numerator: the update is (alpha / r) B A
    lora_dropout: float = 0.05  # dropout on the LoRA branch's input while training
    lora_targets: str = "q_proj,v_proj"  # comma-separated names of the linear layers to adapt
    qlora: bool = False  # keep a GGUF model's weights packed (4/8-bit) and train LoRA over them
    on_error: str = "stop"  # a bad JSONL line: "stop" with its number, or "skip" it
    template: str | None = None  # chat template (builtin name or Jinja); None = the model's
    sample_prompts: tuple[str, ...] = ()  # user prompts answered before/after; () = held-out
    samples: int = 3  # held-out conversations answered before and after when no prompts given
    sample_tokens: int = 64  # longest sample answer in tokens
    progress: bool = True  # a progress bar and printed evaluations


# ---- shared pieces -----------------------------------------------------------------------


def check_run(cfg) -> None:
    """Settings every fine-tuning loop shares."""
    for name in ("max_steps", "batch_size", "grad_accum", "seq_len", "eval_every"):
        if getattr(cfg, name) <= 0:
            raise FinetuneError(
                f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}"
            )
    if cfg.batch_size % cfg.grad_accum:
        raise FinetuneError(
            f"--batch-size {cfg.batch_size} must split into --grad-accum {cfg.grad_accum} "
            "equal micro-batches"
        )
    if cfg.on_error not in ON_ERROR:
        raise FinetuneError(f"--on-error takes {' or '.join(ON_ERROR)}, not {cfg.on_error!r}")
    if not 0 <= cfg.val_fraction < 1:
        raise FinetuneError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    if getattr(cfg, "lora_r", 0) < 0:
        raise FinetuneError(f"--lora-r must be 0 (full fine-tuning) or more, got {cfg.lora_r}")
    if getattr(cfg, "qlora", False) and getattr(cfg, "lora_r", 0) == 0:
        raise FinetuneError("--qlora trains LoRA adapters over a packed model: give --lora-r too")


def load_model(cfg) -> LanguageModel:
    """The model to tune: float32, or packed blocks when cfg.qlora."""
    lm = load(cfg.model, packed=bool(getattr(cfg, "qlora", False)))
    if getattr(cfg, "qlora", False) and not is_packed(lm.model):
        raise FinetuneError(
            f"--qlora trains over a quantized GGUF model's packed blocks, but {cfg.model} has "
            "float weights; quantize it first (giraffe quantize MODEL --to q4_0 --out m.gguf) "
            "or drop --qlora"
        )
    if cfg.seq_len > lm.config.max_position_embeddings:
        raise FinetuneError(
            f"--seq-len {cfg.seq_len} exceeds the model's context of "
            f"{lm.config.max_position_embeddings} tokens"
        )
    return lm


def is_packed(model: torch.nn.Module) -> bool:
    return any(isinstance(m, (QuantLinear, QuantEmbedding)) for m in model.modules())


def uses_lora(cfg) -> bool:
    return getattr(cfg, "lora_r", 0) > 0


def prepare_trainable(model: torch.nn.Module, cfg) -> list[torch.nn.Parameter]:
    """Freeze the model and return what trains: LoRA adapters, or every weight."""
    for p in model.parameters():
        p.requires_grad_(False)
    if uses_lora(cfg):
        targets = tuple(t.strip() for t in cfg.lora_targets.split(",") if t.strip())
        lora = LoraConfig(
            r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, targets=targets
        )
        apply_lora(model, lora)  # an unknown target raises, naming the layers there are
        params = list(lora_parameters(model))
    elif is_packed(model):
        raise FinetuneError(
            "full fine-tuning needs float weights; this model is packed (use --lora-r)"
        )
    else:
        params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def peak_lr(cfg, lora: float, full: float) -> float:
    return cfg.lr if cfg.lr is not None else (lora if uses_lora(cfg) else full)


def pad_id(tokenizer) -> int:
    for i in (tokenizer.pad_id, tokenizer.eos_id):
        if i is not None:
            return i
    return 0


def split_items(items: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """(train, held out): a seeded shuffle, then the last val_fraction held out (at least one
    when there are two or more items and val_fraction > 0)."""
    if val_fraction <= 0 or len(items) < 2:
        return list(items), []
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(max(1, round(len(items) * val_fraction)), len(items) - 1)
    return [items[i] for i in order[:-n_val]], [items[i] for i in order[-n_val:]]


def step_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Item indices of the batch at `step`: epochs of seeded permutations, read in order.

    A function of (seed, step) alone, so any step's batch is known without replaying.
    """
    perms: dict[int, list[int]] = {}
    out = []
    for p in range(step * batch_size, (step + 1) * batch_size):
        epoch, at = divmod(p, n)
        if epoch not in perms:
            gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
            perms[epoch] = torch.randperm(n, generator=gen).tolist()
        out.append(perms[epoch][at])
    return out


@dataclass(frozen=True)
class _ReportInfo:
    progress: bool  # what Reporter reads from a run's config
    arch: str  # plot title, first part
    preset: str  # plot title, second part


class TuneReporter(Reporter):
    """`giraffe.train.report.Reporter` for fine-tuning: the same bar, log and plot; the
    evaluation line shows whatever the loop measured."""

    def __init__(self, kind: str, cfg, out: Path) -> None:
        (out / "log.jsonl").unlink(missing_ok=True)  # a fresh run, never a resumed one
        info = _ReportInfo(cfg.progress, kind, Path(cfg.model).name or cfg.model)
        super().__init__(info, out, main=True, start=0, bytes_per_token=None)

    def _self_print(self, record: dict) -> None:  # Reporter's hook for evaluation records
        if not self.cfg.progress:
            return
        from rich.console import Console

        console = self._progress.console if self._progress is not None else Console()
        # Perplexity means something for SFT's token loss only, not for pairwise losses.
        skip = () if self.cfg.arch == "sft" else ("val_ppl",)
        shown = [
            f"{k.replace('_', ' ')} {v:.4f}"
            for k, v in record.items()
            if isinstance(v, float) and k not in skip
        ]
        console.print(f"step {record['step']}: " + ", ".join(shown), highlight=False)


def save_tuned(lm: LanguageModel, out: Path, cfg) -> Path:
    """The adapter alone (PEFT layout) with LoRA, otherwise the whole model folder."""
    if uses_lora(cfg):
        return save_adapter(lm.model, out, cfg.model)
    return lm.save(out)


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

    return train_and_val(read, cfg, "conversation")


def train_and_val(read, cfg, what: str) -> tuple[list, list, object]:
    """(train, held out, the data report): cfg.val_data when given, else a seeded split of
    cfg.data; `read(path)` returns (items, report)."""
    items, report = read(cfg.data)
    if cfg.val_data:
        train, val = items, read(cfg.val_data)[0]
    else:
        train, val = split_items(items, cfg.val_fraction, cfg.seed)
    if not train:
        raise FinetuneError(f"no {what} left to train on: {report.summary()}")
    return train, val, report


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
