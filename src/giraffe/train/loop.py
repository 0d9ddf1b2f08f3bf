"""The pretraining loop: shards + a preset -> a trained model, checkpoints and a log.

Each step draws the global batch for that step (a function of the seed and the step,
`giraffe.train.shards`), splits it over ranks and over gradient-accumulation
micro-batches, takes one AdamW step with clipped gradients and a warm-up + cosine
learning rate, and logs the loss. Every `eval_every` steps it reports validation loss,
perplexity and (for decoders) bits per byte, and shows a sample. Checkpoints carry all
the state, so a run stopped and resumed ends with the same weights, bit for bit, as one
that never stopped. The finished model is saved in `out` as a Hugging Face folder.

It does not parse command lines (`giraffe.train.command`) nor write shards.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from giraffe.config import ARCHITECTURES, PRESETS, ConfigError
from giraffe.formats.hf import save_hf
from giraffe.lm import LanguageModel
from giraffe.models import build_model
from giraffe.tokenizer.tokenizer import load_tokenizer_file
from giraffe.train import checkpoint as ckpt
from giraffe.train import distributed as ddp
from giraffe.train.denormals import flush_denormals
from giraffe.train.objectives import SpecialTokens, loss_for, span_counts, t5_sentinels
from giraffe.train.report import Reporter
from giraffe.train.schedule import apply_update, make_optimizer, make_scheduler
from giraffe.train.settings import TrainConfig, TrainError
from giraffe.train.shards import open_shards


def model_config(cfg: TrainConfig, vocab_size: int, sentinels: int):
    name = f"{cfg.arch}-{cfg.preset}"
    if cfg.arch not in ARCHITECTURES:
        raise ConfigError(
            f"--arch {cfg.arch!r} is not supported; choose one of {', '.join(ARCHITECTURES)}"
        )
    if name not in PRESETS:
        sizes = sorted(k.split("-", 1)[1] for k in PRESETS if k.startswith(f"{cfg.arch}-"))
        raise ConfigError(f"no preset {name!r}; --preset takes one of {', '.join(sizes)}")
    base = PRESETS[name]
    return base.replace(
        vocab_size=vocab_size + sentinels,
        max_position_embeddings=max(base.max_position_embeddings, cfg.seq_len + 1),
    )


def special_tokens(cfg: TrainConfig, tokenizer, model_vocab: int, sentinels: int) -> SpecialTokens:
    kind = ARCHITECTURES[cfg.arch]
    if kind == "encoder":
        mask = tokenizer.special_tokens.get("[MASK]")
        if mask is None:
            raise TrainError(
                f"{tokenizer.name} has no [MASK] token, which BERT's masked LM needs: "
                "train a tokenizer with `giraffe train-tokenizer`"
            )
        never = tuple(i for i in tokenizer.special_tokens.values() if i != mask)
        return SpecialTokens(mask_id=mask, never_mask=never)
    if kind == "encoder-decoder":
        return SpecialTokens(sentinel_ids=t5_sentinels(model_vocab, sentinels))
    return SpecialTokens()  # packed rows: no padding, eos is a real target


def check(cfg: TrainConfig, world: int) -> None:
    if cfg.batch_size % (cfg.grad_accum * world):
        raise TrainError(
            f"--batch-size {cfg.batch_size} must split into --grad-accum {cfg.grad_accum} "
            f"micro-batches on each of {world} process(es)"
        )
    for name in ("max_steps", "batch_size", "grad_accum", "seq_len", "eval_every", "save_every"):
        if getattr(cfg, name) <= 0:
            raise TrainError(
                f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}"
            )


def pretrain(cfg: TrainConfig) -> dict:
    """Train (or resume) as `cfg` says; returns the last metrics."""
    d = ddp.setup(cfg.device)
    try:
        with flush_denormals():
            return _run(cfg, d)
    finally:
        ddp.teardown(d)


def _run(cfg: TrainConfig, d: ddp.Dist) -> dict:
    check(cfg, d.world)
    out = Path(cfg.out)
    tokenizer = load_tokenizer_file(Path(cfg.data))
    shards = open_shards(cfg.data, tokenizer)
    causal = ARCHITECTURES[cfg.arch] == "decoder"
    row_len = cfg.seq_len + 1 if causal else cfg.seq_len
    n_sentinels = span_counts(row_len)[1] + 1 if cfg.arch == "t5" else 0
    mcfg = model_config(cfg, tokenizer.vocab_size, n_sentinels)
    special = special_tokens(cfg, tokenizer, mcfg.vocab_size, n_sentinels)
    loss_fn = loss_for(cfg.arch)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(mcfg).to(cfg.device)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.warmup, cfg.max_steps, cfg.min_lr_ratio)
    # a checkpoint continues only the same run on shards of the same tokenizer
    run = {**cfg.run_shape(), "tokenizer_sha256": shards.meta["tokenizer_sha256"]}
    start = _resume(out / "checkpoints", model, optimizer, scheduler, mcfg, run)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    net = ddp.wrap(model, d, cfg.device)
    if cfg.compile:
        net = torch.compile(net)
    report = Reporter(cfg, out, d.main, start, shards.bytes_per_token() if causal else None)

    def evaluate(step: int) -> dict:
        val = _val_loss(model, shards, cfg, row_len, loss_fn, special)
        extra = _peek(model, tokenizer, cfg)
        return report.evaluation(step, val, extra)

    if start == 0 and d.main:
        evaluate(0)
    began, step = time.monotonic(), start
    metrics: dict = {}
    with report.bar(cfg.max_steps):
        while step < cfg.max_steps:
            if cfg.stop_step is not None and step >= cfg.stop_step:
                break
            if cfg.max_minutes is not None and time.monotonic() - began > cfg.max_minutes * 60:
                break
            loss = _step(
                net, model, optimizer, scheduler, shards, cfg, d, step, row_len, loss_fn, special
            )
            step += 1
            metrics = report.step(
                step, ddp.mean_across(loss, d), scheduler.get_last_lr()[0], cfg.batch_size * row_len
            )
            if step % cfg.eval_every == 0 and d.main:
                metrics = evaluate(step)
            if step % cfg.save_every == 0:
                _save(out, model, optimizer, scheduler, mcfg, cfg, run, step, d)
    if step % cfg.save_every:
        _save(out, model, optimizer, scheduler, mcfg, cfg, run, step, d)
    if d.main:
        if step % cfg.eval_every:
            metrics = evaluate(step)
        _save_model(model, tokenizer, out, cfg)
        report.finish()
    ddp.barrier(d)
    return {**metrics, "step": step}


def _step(
    net, model, optimizer, scheduler, shards, cfg, d, step, row_len, loss_fn, special
) -> float:
    rows = shards.rows("train", cfg.seed, step, cfg.batch_size, row_len)  # (B, L)
    mine = ddp.rank_rows(rows, d)  # (B / world, L)
    total = 0.0
    for m, ids in enumerate(mine.chunk(cfg.grad_accum)):
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + step * 131 + m * 17 + d.rank)
        last = m == cfg.grad_accum - 1
        sync = contextlib.nullcontext() if last or d.world == 1 else net.no_sync()
        with sync, _autocast(cfg):
            loss = loss_fn(net, ids.to(cfg.device), gen, special)
            (loss / cfg.grad_accum).backward()
        total += float(loss.detach()) / cfg.grad_accum
    apply_update(model.parameters(), optimizer, scheduler, cfg.clip)
    return total


def _autocast(cfg: TrainConfig):
    if not cfg.bf16:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16)


@torch.no_grad()
def _val_loss(model, shards, cfg, row_len, loss_fn, special) -> float:
    """Mean loss over fixed validation rows (the same rows at every evaluation)."""
    if len(shards.val) < row_len + 1:
        return math.nan
    model.eval()
    losses = []
    per = max(cfg.batch_size // cfg.grad_accum, 1)
    for b in range(cfg.eval_batches):
        ids = shards.rows("val", cfg.seed, b, per, row_len).to(cfg.device)
        gen = torch.Generator().manual_seed(cfg.seed + b)
        with _autocast(cfg):
            losses.append(float(loss_fn(model, ids, gen, special)))
    model.train()
    return sum(losses) / len(losses)


def _peek(model, tokenizer, cfg: TrainConfig) -> dict:
    from giraffe.train.peek import fill_mask, sample

    kind = ARCHITECTURES[cfg.arch]
    if kind == "decoder":
        return {"sample": cfg.sample_prompt + sample(model, tokenizer, cfg.sample_prompt)}
    if kind == "encoder" and "[MASK]" in cfg.mask_prompt:
        return {"mask": [[t, round(p, 4)] for t, p in fill_mask(model, tokenizer, cfg.mask_prompt)]}
    return {}


def _resume(folder: Path, model, optimizer, scheduler, mcfg, run: dict) -> int:
    path = ckpt.latest_checkpoint(folder)
    if path is None:
        return 0
    state = ckpt.load_checkpoint(path, mcfg.to_dict(), run)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    ckpt.set_rng_states(state["rng"])
    return state["step"]


def _save(out: Path, model, optimizer, scheduler, mcfg, cfg, run, step: int, d) -> None:
    if d.main:
        state = {
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": ckpt.rng_states(),
            "model_config": mcfg.to_dict(),
            "run": run,
            "train_config": asdict(cfg),
        }
        ckpt.save_checkpoint(out / "checkpoints", state)
    ddp.barrier(d)


def _save_model(model, tokenizer, out: Path, cfg: TrainConfig) -> None:
    """The final model as a Hugging Face folder in `out` (and GGUF for decoders if asked)."""
    model.eval()
    if ARCHITECTURES[cfg.arch] == "decoder":
        lm = LanguageModel(model, tokenizer, str(out))
        lm.save(out)
        if cfg.gguf:
            lm.save_gguf(out / "model.gguf")
        return
    ids = {"pad_token_id": tokenizer.pad_id, "eos_token_id": tokenizer.eos_id}
    save_hf(model, out, {"config.json": {k: v for k, v in ids.items() if v is not None}})
    tokenizer.save(out)
