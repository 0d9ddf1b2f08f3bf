"""Reinforcement learning for a chat model: sample answers, score them, make the better
ones more likely (GRPO, RLOO or PPO), with a KL pull towards where the model started.

Each step takes `batch_size` prompts (a seeded order, a function of the step), samples
`group` answers to each with giraffe's batched decoding (`giraffe.train.rollout`),
scores them (`giraffe.train.rewards`: a reward model or a Python function), and updates
the policy (`giraffe.train.rl_update`; losses in `giraffe.train.rl_objectives`). LoRA
trains adapters only and the reference is the same model with them off; full
fine-tuning keeps a frozen copy of the starting weights as the reference (only when
beta > 0). QLoRA samples and trains over packed weights.

A run is exact and resumable: the prompts of a step and every row's sampling seed are
functions of (seed, step), and a checkpoint (out/checkpoints, every `save_every` steps)
holds the trainable weights, the value head, AdamW's and the schedule's state and the
RNG states; a run started again with the same settings continues from the latest one and
ends with the same weights, bit for bit, as one that never stopped. Progress: reward
mean/std, KL, entropy, answer length, clip fraction, tokens/s of each phase; log.jsonl,
loss.png and rl.png (`giraffe.train.rl_report`). It does not parse command lines.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from giraffe.generate.params import DecodingConfig
from giraffe.train import rl_objectives as ro
from giraffe.train.chat_data import DataWarning
from giraffe.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from giraffe.train.denormals import flush_denormals
from giraffe.train.rewards import RewardFailures, load_reward
from giraffe.train.rl_data import conversation_ids, load_prompts
from giraffe.train.rl_report import RLReporter
from giraffe.train.rl_update import Updater, make_chunks, reference_for
from giraffe.train.rollout import row_seed, sample_answers
from giraffe.train.schedule import make_optimizer, make_scheduler
from giraffe.train.tune_settings import ALGOS, RLConfig
from giraffe.train.tuning import (
    FinetuneError,
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


class RewardWarning(UserWarning):
    """Some samples' reward function failed (reward 0); the run went on."""


def check_rl(cfg: RLConfig) -> None:
    check_run(cfg)
    if cfg.algo not in ALGOS:
        raise FinetuneError(f"--algo takes {', '.join(ALGOS)}, not {cfg.algo!r}")
    if cfg.algo in ("grpo", "rloo") and cfg.group < 2:
        raise FinetuneError(f"--algo {cfg.algo} compares answers within a group: --group >= 2")
    if cfg.loss_norm not in ro.NORMS:
        raise FinetuneError(f"--loss-norm takes {' or '.join(ro.NORMS)}, not {cfg.loss_norm!r}")
    for name in ("group", "max_new_tokens", "updates", "save_every"):
        if getattr(cfg, name) <= 0:
            raise FinetuneError(f"--{name.replace('_', '-')} must be positive")
    if cfg.grad_accum > cfg.batch_size * cfg.group:
        raise FinetuneError("--grad-accum cannot exceed the answers per step (batch x group)")
    if not cfg.prompts or not cfg.reward:
        raise FinetuneError("give --prompts (a JSONL file) and --reward")


def train_rl(cfg: RLConfig) -> dict:
    """Run reinforcement learning as `cfg` says; returns the final metrics."""
    check_rl(cfg)
    with flush_denormals():
        return RLRun(cfg).run()


class RLRun:
    def __init__(self, cfg: RLConfig) -> None:
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.lm = load_model(cfg)
        tok = self.lm.tokenizer
        self.pad = pad_id(tok)
        self.train, self.val = self._prompts(tok)

        def render(prompt, answer):
            return conversation_ids(tok, cfg.template, prompt, answer)

        self.reward = load_reward(cfg.reward, tok, render, cfg.reward_timeout)
        model = self.lm.model
        self.params = prepare_trainable(model, cfg)
        self.value_head = None
        if cfg.algo == "ppo":
            self.value_head = nn.Linear(model.config.hidden_size, 1, bias=False)
            nn.init.zeros_(self.value_head.weight)  # V = 0 at first: no made-up baseline
            self.params.append(self.value_head.weight)
        parts = {"model": model} if self.value_head is None else {"model": model, "value": self.value_head}  # fmt: skip
        self.optimizer = make_optimizer(nn.ModuleDict(parts), peak_lr(cfg, 1e-4, 1e-6), cfg.weight_decay)  # fmt: skip
        self.scheduler = make_scheduler(self.optimizer, cfg.warmup, cfg.max_steps, cfg.min_lr_ratio)
        reference = reference_for(model, cfg, uses_lora(cfg))  # before any step: the start
        self.updater = Updater(model, self.params, self.optimizer, self.scheduler, cfg, reference, self.value_head)  # fmt: skip
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)

    def _prompts(self, tok):
        cfg = self.cfg

        def read(path):
            items, report, too_long = load_prompts(path, tok, cfg.template, cfg.seq_len, cfg.on_error)  # fmt: skip
            if too_long and path == cfg.prompts:
                warnings.warn(f"{path}: {too_long} prompts longer than --seq-len {cfg.seq_len} tokens were dropped", DataWarning, stacklevel=3)  # fmt: skip
            return items, report

        train, val, _ = train_and_val(read, cfg.prompts, cfg.val_prompts, cfg, "prompts")
        return train, val[: cfg.eval_examples]

    # ---- checkpoints -----------------------------------------------------------------------
    def _trainable_state(self) -> dict:
        model = self.lm.model
        if uses_lora(self.cfg):
            names = {id(p): n for n, p in model.named_parameters()}
            return {names[id(p)]: p.detach().clone() for p in self.params if id(p) in names}
        return {k: v.clone() for k, v in model.state_dict().items()}

    def _save(self, step: int, failures: int) -> None:
        state = {
            "step": step,
            "trainable": self._trainable_state(),
            "value_head": self.value_head.state_dict() if self.value_head is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_states(),
            "reward_failures": failures,
            "model_config": self.lm.config.to_dict(),
            "run": self.cfg.run_shape(),
        }
        save_checkpoint(self.out / "checkpoints", state)

    def _resume(self) -> tuple[int, int]:
        path = latest_checkpoint(self.out / "checkpoints")
        if path is None:
            return 0, 0
        state = load_checkpoint(path, self.lm.config.to_dict(), self.cfg.run_shape())
        with torch.no_grad():
            if uses_lora(self.cfg):
                for name, p in self.lm.model.named_parameters():
                    if name in state["trainable"]:
                        p.copy_(state["trainable"][name])
            else:
                self.lm.model.load_state_dict(state["trainable"])
        if self.value_head is not None:
            self.value_head.load_state_dict(state["value_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_states(state["rng"])
        return state["step"], state["reward_failures"]

    # ---- evaluation ------------------------------------------------------------------------
    def evaluate(self) -> tuple[dict, list[str], list[float]]:
        """Greedy answers to the held-out prompts and their rewards."""
        if not self.val:
            return {}, [], []
        greedy = DecodingConfig(max_new_tokens=self.cfg.max_new_tokens, temperature=0.0)
        rollout = sample_answers(self.lm.model, self.lm.tokenizer, [list(p.ids) for p in self.val], greedy, [0] * len(self.val))  # fmt: skip
        failures = RewardFailures()
        r = self.reward([p.text for p in self.val], rollout.texts, [p.record for p in self.val], failures)  # fmt: skip
        metrics = {
            "val_reward": round(float(r.mean()), 5),
            "val_success": round(float((r >= 1.0).float().mean()), 5),
            "val_length": round(sum(len(a) for a in rollout.answers) / len(self.val), 2),
        }
        return metrics, rollout.texts, r.tolist()

    # ---- the loop --------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        start, failed_total = self._resume()
        report = RLReporter(cfg, self.out, start)
        first, before, before_r = self.evaluate()
        if start == 0 and first:
            report.evaluation(0, first)
        if start == 0:
            torch.manual_seed(cfg.seed)  # dropout's stream from a known point (else: restored)
        metrics, began = {}, time.monotonic()
        with report.bar(cfg.max_steps):
            for step in range(start, cfg.max_steps):
                if cfg.stop_step is not None and step == cfg.stop_step:
                    self._save(step, failed_total)
                    return {"stopped_at": step}
                record, failures = self.one_step(step)
                failed_total += failures.count
                record["reward_failures"] = failed_total
                metrics = report.rl_step(record)
                if failures.count:
                    warnings.warn(f"step {step + 1}: {failures.count} samples got reward 0 because the reward function failed; first: {failures.first}", RewardWarning, stacklevel=2)  # fmt: skip
                if (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.max_steps:
                    metrics = {**metrics, **report.evaluation(step + 1, self.evaluate()[0])}
                if (step + 1) % cfg.save_every == 0:
                    self._save(step + 1, failed_total)
        last, after, after_r = self.evaluate()
        if last:
            metrics = {**metrics, **report.evaluation(cfg.max_steps, last)}
        saved = save_tuned(self.lm, self.out, cfg)
        report.finish()
        samples = [
            {"prompt": p.text, "before": b, "after": a, "reward_before": rb, "reward_after": ra}
            for p, b, a, rb, ra in zip(self.val, before, after, before_r, after_r, strict=True)
        ]
        return {
            **metrics,
            **{f"first_{k}": v for k, v in first.items()},
            "train_prompts": len(self.train),
            "val_prompts": len(self.val),
            "reward_failures": failed_total,
            "trainable_parameters": sum(p.numel() for p in self.params),
            "seconds": round(time.monotonic() - began, 1),
            "samples": samples,
            "saved": str(saved),
        }

    def rollout_decoding(self) -> DecodingConfig:
        cfg = self.cfg
        return DecodingConfig(
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p
        )

    def one_step(self, step: int) -> tuple[dict, RewardFailures]:
        cfg, model, tok = self.cfg, self.lm.model, self.lm.tokenizer
        picked = [
            self.train[i] for i in step_indices(len(self.train), cfg.batch_size, cfg.seed, step)
        ]
        rows = [p for p in picked for _ in range(cfg.group)]  # each prompt G times, in a row
        decoding = self.rollout_decoding()
        seeds = [row_seed(cfg.seed, step, r) for r in range(len(rows))]
        t0 = time.monotonic()
        rollout = sample_answers(model, tok, [list(p.ids) for p in rows], decoding, seeds)
        t1 = time.monotonic()
        failures = RewardFailures()
        rewards = self.reward([p.text for p in rows], rollout.texts, [p.record for p in rows], failures)  # fmt: skip
        t2 = time.monotonic()
        model.train()
        chunks = make_chunks(rollout, cfg.grad_accum, self.pad)
        self.updater.measure(chunks)
        self.updater.advantages(chunks, rewards)
        stats = self.updater.step(chunks)
        t3 = time.monotonic()
        lengths = torch.tensor([len(a) for a in rollout.answers], dtype=torch.float32)
        gen_tokens = rollout.answer_tokens
        record = {
            "step": step + 1,
            "loss": round(stats.loss, 6),
            "reward": round(float(rewards.mean()), 5),
            "reward_std": round(float(rewards.std()) if len(rewards) > 1 else 0.0, 5),
            "kl": round(stats.kl, 6),
            "entropy": round(stats.entropy, 5),
            "length": round(float(lengths.mean()), 2),
            "clip_fraction": round(stats.clip_fraction, 5),
            "lr": self.scheduler.get_last_lr()[0],
            "generate_s": round(t1 - t0, 3),
            "score_s": round(t2 - t1, 3),
            "update_s": round(t3 - t2, 3),
            "generate_tokens_per_s": round(gen_tokens / max(t1 - t0, 1e-9), 1),
            "update_tokens_per_s": round(stats.tokens / max(t3 - t2, 1e-9), 1),
            "tokens_per_s": round(gen_tokens / max(t3 - t0, 1e-9), 1),
        }
        if cfg.algo == "ppo":
            record["value_loss"] = round(stats.value_loss, 6)
        if not math.isfinite(stats.loss):
            raise FinetuneError(f"step {step + 1}: the loss is {stats.loss}; lower --lr")
        return record, failures
