"""The objectives of reinforcement learning for language models, on plain tensors.

Advantages say how much better a sampled answer was than expected:
- GRPO (Shao et al. 2024, DeepSeekMath): each prompt is answered G times; an answer's
  advantage is its reward minus its group's mean, divided by the group's standard
  deviation (unbiased, plus 1e-4, as TRL's GRPOTrainer computes it).
- RLOO (Ahmadian et al. 2024): the baseline is the mean of the OTHER G-1 answers'
  rewards (leave-one-out), no division.
- PPO (Schulman et al. 2017; the RLHF recipe of Ouyang et al. 2022): a learned value
  V(prefix) per token and generalized advantage estimation (GAE, Schulman et al. 2016)
  over per-token rewards (the reward model's score at the last token, a KL penalty at
  every token).

The policy loss is PPO's clipped ratio -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A),
per token (GRPO, PPO) or per sequence on the summed log-probabilities (RLOO, as TRL's
RLOOTrainer). The KL to the reference is estimated two ways, as the papers do:
- k3 = exp(ref - logp) - (ref - logp) - 1 per token (Schulman's unbiased, always >= 0
  estimator), added to GRPO's per-token loss times beta;
- k1 = logp - ref per token, summed over the answer and subtracted from the reward
  times beta (RLOO, PPO).
Normalisation: "sequence" averages each answer's tokens, then the answers (TRL's
loss_type "grpo"); "token" averages every token of the batch at once (TRL's "bnpo", the
DAPO paper's choice: long answers are not down-weighted).

It knows only tensors: no models, no sampling, no data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STD_EPS = 1e-4  # added to the standard deviation before dividing (TRL's constant)
NORMS = ("sequence", "token")


# ---- advantages --------------------------------------------------------------------------


def group_advantages(rewards: torch.Tensor, group: int, scale: bool = True) -> torch.Tensor:
    """GRPO: rewards (N,) in consecutive groups of `group` answers -> advantages (N,)."""
    grouped = rewards.view(-1, group)  # (P, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        std = grouped.std(dim=1, keepdim=True) if group > 1 else torch.zeros_like(centred)
        centred = centred / (std + STD_EPS)
    return centred.reshape(-1)  # (N,)


def leave_one_out_advantages(
    rewards: torch.Tensor, group: int, normalize: bool = False
) -> torch.Tensor:
    """RLOO: reward minus the mean of the group's other answers; optionally whitened over
    the whole batch (TRL's normalize_advantages)."""
    if group < 2:
        raise ValueError("RLOO needs at least 2 answers per prompt (--group)")
    grouped = rewards.view(-1, group)  # (P, G)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group - 1)  # (P, G)
    adv = (grouped - others).reshape(-1)  # (N,)
    if normalize:
        adv = (adv - adv.mean()) / (adv.std() + STD_EPS)
    return adv


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over answer tokens.

    rewards, values (N, T): per-token reward and value estimate; mask (N, T) marks the
    answer's tokens (a prefix of each row: right padding). Past the last token the value
    is 0 (the episode ends). Returns (advantages, returns), both (N, T), zero on padding.
    """
    mask = mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])  # (N,)
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        adv[:, t] = running
    return adv, (adv + values) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the masked entries, with the unbiased variance
    (as TRL's PPO whitened its advantages); shift_mean=False keeps the mean."""
    m = mask.to(x.dtype)
    n = m.sum()
    mean = (x * m).sum() / n
    var = (((x - mean) * m) ** 2).sum() / n * (n / (n - 1))
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * m


# ---- KL ----------------------------------------------------------------------------------


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate exp(r) - r - 1 with r = ref - logp (>= 0)."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1


def k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp


# ---- losses ------------------------------------------------------------------------------


@dataclass
class LossParts:
    loss: torch.Tensor  # the scalar to minimise (with its graph)
    clip_fraction: float  # share of tokens (or sequences) whose ratio the clip held
    kl: float  # mean per-token k3 (token losses) or k1 (sequence loss) of this batch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, norm: str) -> torch.Tensor:
    """x (N, T) averaged over the mask: per sequence then over sequences, or per token."""
    m = mask.to(x.dtype)
    if norm == "sequence":
        return ((x * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    if norm == "token":
        return (x * m).sum() / m.sum().clamp(min=1.0)
    raise ValueError(f"loss normalisation is {' or '.join(NORMS)}, not {norm!r}")


def clipped_objective(ratio: torch.Tensor, adv: torch.Tensor, low: float, high: float):
    """(-min(rho A, clip(rho) A), where the clip held: a bool of the same shape)."""
    loss = -torch.min(ratio * adv, torch.clamp(ratio, 1 - low, 1 + high) * adv)
    held = ((ratio < 1 - low) & (adv < 0)) | ((ratio > 1 + high) & (adv > 0))
    return loss, held


def token_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.0,
    ref_logp: torch.Tensor | None = None,
    norm: str = "sequence",
) -> LossParts:
    """GRPO's (and PPO's) per-token clipped loss plus beta x k3.

    logp, old_logp, ref_logp, mask (N, T); adv (N,) per answer or (N, T) per token.
    """
    if adv.dim() == 1:
        adv = adv[:, None]  # (N, 1): every token of an answer shares its advantage
    ratio = torch.exp(logp - old_logp)
    per_token, held = clipped_objective(ratio, adv, eps_low, eps_high)
    kl_value = 0.0
    if beta != 0.0 and ref_logp is not None:
        kl = k3(logp, ref_logp)
        per_token = per_token + beta * kl
        kl_value = float(masked_mean(kl.detach(), mask, "token"))
    elif ref_logp is not None:
        kl_value = float(masked_mean(k3(logp.detach(), ref_logp), mask, "token"))
    held = held.expand_as(mask)
    clip = float((held & mask.bool()).sum() / mask.sum().clamp(min=1))
    return LossParts(masked_mean(per_token, mask, norm), clip, kl_value)


def sequence_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> LossParts:
    """RLOO's clipped loss on whole answers: rho = exp(sum logp - sum old_logp) (N,)."""
    m = mask.to(logp.dtype)
    seq, old = (logp * m).sum(-1), (old_logp * m).sum(-1)  # (N,)
    loss, held = clipped_objective(torch.exp(seq - old), adv, eps_low, eps_high)
    return LossParts(loss.mean(), float(held.float().mean()), 0.0)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, float]:
    """PPO's clipped value loss 0.5 * max((V - R)^2, (V_clipped - R)^2), masked token mean;
    returns (loss, share of tokens where the clipped term was the larger)."""
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    plain, held = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(plain, held), mask, "token")
    frac = float(masked_mean((held > plain).to(values.dtype), mask, "token"))
    return loss, frac


def ppo_token_rewards(
    score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, beta
) -> torch.Tensor:
    """InstructGPT's per-token reward: -beta x k1 at every answer token, plus the reward
    model's score (N,) at each answer's last token. (N, T)"""
    m = mask.to(logp.dtype)
    rewards = -beta * k1(logp, ref_logp) * m
    last = (m.sum(-1).long() - 1).clamp(min=0)  # (N,) index of the last answer token
    rewards[torch.arange(len(score)), last] += score
    return rewards
