"""One policy update from one rollout: GRPO, RLOO or PPO (see `giraffe.train.rl_objectives`).

The rollout's rows are split into `grad_accum` chunks (each laid out as its own padded
batch, so a short chunk pays for no long padding). Before any gradient step it measures,
without gradients, what the update needs as constants: the reference's log-probabilities
(the same model with its LoRA adapters switched off, or the frozen initial copy under
full fine-tuning), and - when the policy moves within the step (`updates` > 1) or the
algorithm reads them (RLOO's and PPO's KL in the reward, PPO's values) - the sampling
policy's own. With one update per rollout, the old log-probabilities are the current
ones detached (ratio exactly 1, as TRL does). Each chunk's loss is weighted by its share
of the batch's sequences or tokens, so the accumulated gradient is the whole batch's.

It knows the objectives and the model's forward, not sampling, rewards or files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from giraffe.train import rl_objectives as ro
from giraffe.train.lora import disable_adapters
from giraffe.train.rollout import Rollout, answer_logprobs
from giraffe.train.schedule import apply_update


@dataclass
class Chunk:
    rows: list[int]  # rows of the rollout in this chunk
    ids: torch.Tensor  # (n, L)
    picked: torch.Tensor  # (n, L-1)
    mask: torch.Tensor  # (n, A)
    ref: torch.Tensor | None = None  # (n, A) reference log-probabilities
    old: torch.Tensor | None = None  # (n, A) sampling policy's log-probabilities
    old_values: torch.Tensor | None = None  # (n, A) PPO
    adv: torch.Tensor | None = None  # (n,) or (n, A)
    returns: torch.Tensor | None = None  # (n, A) PPO


@dataclass
class UpdateStats:
    loss: float = 0.0
    kl: float = 0.0
    clip_fraction: float = 0.0
    entropy: float = 0.0
    value_loss: float = 0.0
    tokens: int = 0  # answer tokens trained on (each update pass counts)


def make_chunks(rollout: Rollout, parts: int, pad: int) -> list[Chunk]:
    n = len(rollout.answers)
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    chunks = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        if a == b:
            continue
        rows = list(range(a, b))
        sub = Rollout(
            [rollout.prompts[i] for i in rows],
            [rollout.answers[i] for i in rows],
            [rollout.texts[i] for i in rows],
            [rollout.finished[i] for i in rows],
        )
        chunks.append(Chunk(rows, *sub.tensors(pad)))
    return chunks


class Updater:
    def __init__(self, model, params, optimizer, scheduler, cfg, reference, value_head) -> None:
        self.model, self.params = model, params
        self.optimizer, self.scheduler, self.cfg = optimizer, scheduler, cfg
        self.reference = reference  # "adapters-off", a frozen model, or None (no KL)
        self.value_head = value_head  # PPO only

    # ---- constants -----------------------------------------------------------------------
    @torch.no_grad()
    def measure(self, chunks: list[Chunk]) -> None:
        cfg = self.cfg
        need_old = cfg.updates > 1 or cfg.algo in ("ppo", "rloo")
        for c in chunks:
            if self.reference is not None:
                c.ref = self._reference_logp(c)
            if need_old:
                scores = self._scores(self.model, c, self.value_head)
                c.old = scores.logp
                c.old_values = scores.values

    def _scores(self, model, c: Chunk, value_head=None):
        T = self.cfg.temperature
        return answer_logprobs(model, c.ids, c.picked, c.mask, value_head, temperature=T)

    def _reference_logp(self, c: Chunk) -> torch.Tensor:
        if self.reference == "adapters-off":
            with disable_adapters(self.model):
                return self._scores(self.model, c).logp
        return self._scores(self.reference, c).logp

    # ---- advantages ----------------------------------------------------------------------
    def advantages(self, chunks: list[Chunk], rewards: torch.Tensor) -> torch.Tensor:
        """Set each chunk's advantages; returns the rewards the advantages were made of
        (for RLOO and PPO, with the KL penalty)."""
        cfg = self.cfg
        if cfg.algo == "grpo":
            adv = ro.group_advantages(rewards, cfg.group, scale=cfg.scale_rewards)
            for c in chunks:
                c.adv = adv[c.rows]
            return rewards
        if cfg.algo == "rloo":
            penalised = rewards.clone()
            if self.reference is not None and cfg.beta:
                for c in chunks:
                    kl = (ro.k1(c.old, c.ref) * c.mask).sum(-1)  # (n,)
                    penalised[c.rows] = rewards[c.rows] - cfg.beta * kl
            adv = ro.leave_one_out_advantages(penalised, cfg.group, normalize=cfg.scale_rewards)
            for c in chunks:
                c.adv = adv[c.rows]
            return penalised
        return self._ppo_advantages(chunks, rewards)

    def _ppo_advantages(self, chunks: list[Chunk], rewards: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        raw = []
        for c in chunks:
            ref = c.ref if c.ref is not None else c.old
            token_rewards = ro.ppo_token_rewards(rewards[c.rows], c.old, ref, c.mask, cfg.beta)
            c.adv, c.returns = ro.gae(token_rewards, c.old_values, c.mask, cfg.gamma, cfg.lam)
            raw.append(token_rewards.sum(-1))
        # whiten over the whole batch's tokens, not per chunk
        flat = torch.cat([c.adv[c.mask] for c in chunks])
        mean, std = flat.mean(), flat.std() if flat.numel() > 1 else torch.tensor(1.0)
        for c in chunks:
            c.adv = (c.adv - mean) * torch.rsqrt(std**2 + 1e-8) * c.mask
        out = torch.zeros_like(rewards)
        for c, r in zip(chunks, raw, strict=True):
            out[c.rows] = r
        return out

    # ---- gradient steps --------------------------------------------------------------------
    def step(self, chunks: list[Chunk]) -> UpdateStats:
        """cfg.updates optimiser steps over the rollout; stats are the passes' means."""
        cfg = self.cfg
        stats = UpdateStats()
        n_rows = sum(len(c.rows) for c in chunks)
        n_tokens = sum(int(c.mask.sum()) for c in chunks)
        for _ in range(cfg.updates):
            for c in chunks:
                share = (
                    len(c.rows) / n_rows
                    if self._per_sequence()
                    else int(c.mask.sum()) / max(n_tokens, 1)
                )
                parts = self._loss(c)
                (parts.loss * share).backward()
                stats.loss += float(parts.loss.detach()) * share / cfg.updates
                stats.kl += parts.kl * share / cfg.updates
                stats.clip_fraction += parts.clip_fraction * share / cfg.updates
                stats.entropy += parts.entropy * share / cfg.updates
                stats.value_loss += parts.value_loss * share / cfg.updates
                stats.tokens += int(c.mask.sum())
            apply_update(self.params, self.optimizer, self.scheduler, cfg.clip)
        return stats

    def _per_sequence(self) -> bool:
        return self.cfg.algo == "rloo" or (
            self.cfg.algo == "grpo" and self.cfg.loss_norm == "sequence"
        )

    def _loss(self, c: Chunk):
        cfg = self.cfg
        scores = self._scores(self.model, c, self.value_head)
        old = c.old if c.old is not None else scores.logp.detach()
        entropy = float(ro.masked_mean(scores.entropy, c.mask, "token"))
        if cfg.algo == "rloo":
            parts = ro.sequence_policy_loss(
                scores.logp, old, c.adv, c.mask, eps_low=cfg.eps_low, eps_high=cfg.eps_high
            )
            if c.ref is not None:
                parts.kl = float(
                    ro.masked_mean(ro.k3(scores.logp.detach(), c.ref), c.mask, "token")
                )
            return _Parts(parts.loss, parts.kl, parts.clip_fraction, entropy, 0.0)
        norm = "token" if cfg.algo == "ppo" else cfg.loss_norm
        beta = cfg.beta if cfg.algo == "grpo" else 0.0  # PPO's KL is in its reward
        parts = ro.token_policy_loss(
            scores.logp, old, c.adv, c.mask, eps_low=cfg.eps_low, eps_high=cfg.eps_high,
            beta=beta, ref_logp=c.ref, norm=norm,
        )  # fmt: skip
        if cfg.algo != "ppo":
            return _Parts(parts.loss, parts.kl, parts.clip_fraction, entropy, 0.0)
        vf, _ = ro.value_loss(scores.values, c.old_values, c.returns, c.mask, cfg.value_clip)
        loss = parts.loss + cfg.vf_coef * vf
        return _Parts(loss, parts.kl, parts.clip_fraction, entropy, float(vf.detach()))


@dataclass
class _Parts:
    loss: torch.Tensor
    kl: float
    clip_fraction: float
    entropy: float
    value_loss: float


def reference_for(model, cfg, lora: bool):
    """What plays the reference: adapters off (LoRA), a frozen copy (full), or nothing."""
    needs = cfg.beta != 0.0
    if not needs:
        return None
    if lora:
        return "adapters-off"
    import copy

    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
