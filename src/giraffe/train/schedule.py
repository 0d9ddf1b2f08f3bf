"""Learning-rate schedule and optimiser for pretraining.

Linear warm-up to the peak rate, then a cosine decay to `min_ratio` of it (as GPT-3 and
nanoGPT do; Loshchilov & Hutter 2017 for the cosine). AdamW with decoupled weight
decay (Loshchilov & Hutter 2019) applied to matrices only: biases, norms' gains and
1-D parameters are not decayed, as in GPT-2/nanoGPT.

It does not know data or models beyond their parameters.
"""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, warmup: int, total: int, min_ratio: float = 0.1) -> float:
    """Multiplier of the peak learning rate at `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min((step - warmup) / (total - warmup), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95)):
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def make_scheduler(optimizer, warmup: int, total: int, min_ratio: float = 0.1):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total, min_ratio)
    )


def apply_update(params, optimizer, scheduler, clip: float) -> None:
    """Clip the gradient's global norm (clip > 0), step the optimiser and the schedule,
    and clear the gradients: the end of every training step, in every loop."""
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
