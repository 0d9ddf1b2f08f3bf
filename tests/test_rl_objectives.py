"""The RL objectives on fixed tensors: a hand computation, and TRL's own code as the oracle
(GRPOTrainer/RLOOTrainer's loss called with a stand-in `self`; TRL 0.11.4's classic PPO
through a committed fixture, tests/fixtures/make_trl_ppo_fixture.py)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from giraffe.train import rl_objectives as ro

FIXTURE = Path(__file__).parent / "fixtures" / "trl_ppo.json"


def _batch(seed=0, n=6, t=5):
    g = torch.Generator().manual_seed(seed)
    lengths = [5, 3, 1, 4, 2, 5][:n]
    mask = torch.tensor([[1] * k + [0] * (t - k) for k in lengths])  # (N, T)
    logp = -torch.rand(n, t, generator=g) * 2
    old = logp + 0.3 * torch.randn(n, t, generator=g)  # ratios well outside 1 +- 0.2
    ref = logp + 0.2 * torch.randn(n, t, generator=g)
    rewards = torch.tensor([1.0, 0.0, 0.5, 2.0, 0.0, 1.0])[:n]
    return mask, logp, old, ref, rewards


# ---- by hand -----------------------------------------------------------------------------


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.5, 2.0, 0.0, 1.0])
    adv = ro.group_advantages(r, 3)
    for g in range(2):
        xs = r[3 * g : 3 * g + 3].tolist()
        mean = sum(xs) / 3
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / 2)  # unbiased
        for i, x in enumerate(xs):
            assert adv[3 * g + i].item() == pytest.approx((x - mean) / (std + 1e-4), rel=1e-6)
    assert torch.equal(ro.group_advantages(torch.ones(4), 2), torch.zeros(4))  # no signal


def test_leave_one_out_by_hand():
    r = torch.tensor([1.0, 0.0, 0.5, 2.0, 0.0, 1.0])
    adv = ro.leave_one_out_advantages(r, 3)
    assert adv[0].item() == pytest.approx(1.0 - (0.0 + 0.5) / 2)
    assert adv[4].item() == pytest.approx(0.0 - (2.0 + 1.0) / 2)
    assert adv.view(2, 3).sum(1).abs().max() < 1e-6  # a group's advantages sum to zero
    with pytest.raises(ValueError, match="at least 2"):
        ro.leave_one_out_advantages(r, 1)


def test_token_loss_by_hand():
    mask, logp, old, ref, rewards = _batch()
    adv = ro.group_advantages(rewards, 3)
    parts = ro.token_policy_loss(logp, old, adv, mask, beta=0.04, ref_logp=ref, norm="sequence")
    per_seq = []
    clipped = total = 0
    for i in range(len(adv)):
        terms = []
        for t in range(mask.shape[1]):
            if not mask[i, t]:
                continue
            rho = math.exp(logp[i, t] - old[i, t])
            a = adv[i].item()
            c = min(max(rho, 0.8), 1.2)
            d = ref[i, t].item() - logp[i, t].item()
            terms.append(-min(rho * a, c * a) + 0.04 * (math.exp(d) - d - 1))
            clipped += (rho > 1.2 and a > 0) or (rho < 0.8 and a < 0)
            total += 1
        per_seq.append(sum(terms) / len(terms))
    assert parts.loss.item() == pytest.approx(sum(per_seq) / len(per_seq), rel=1e-5)
    assert parts.clip_fraction == pytest.approx(clipped / total)
    token = ro.token_policy_loss(logp, old, adv, mask, beta=0.04, ref_logp=ref, norm="token")
    assert token.loss.item() != pytest.approx(parts.loss.item())  # the two norms differ


def test_equal_policies_give_zero_kl_and_unit_ratio():
    mask, logp, _, _, rewards = _batch()
    adv = ro.group_advantages(rewards, 3)
    parts = ro.token_policy_loss(logp, logp, adv, mask, beta=0.1, ref_logp=logp)
    assert parts.kl == 0.0 and parts.clip_fraction == 0.0
    # ratio 1 everywhere: the loss is minus the mean advantage (per-sequence mean)
    assert parts.loss.item() == pytest.approx(-adv.mean().item(), abs=1e-6)


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.5, 1.0], [2.0, 0.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [0.4, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    gamma, lam = 0.9, 0.8
    adv, ret = ro.gae(rewards, values, mask, gamma, lam)
    d2 = 1.0 - 0.3
    d1 = 0.5 + gamma * 0.3 - 0.2
    d0 = 0.0 + gamma * 0.2 - 0.1
    a2, a1 = d2, d1 + gamma * lam * d2
    a0 = d0 + gamma * lam * a1
    assert adv[0].tolist() == pytest.approx([a0, a1, a2])
    assert adv[1].tolist() == pytest.approx([2.0 - 0.4, 0.0, 0.0])  # episode ends at t=0
    assert ret[0].tolist() == pytest.approx([a0 + 0.1, a1 + 0.2, a2 + 0.3])


# ---- TRL (installed): GRPOTrainer / RLOOTrainer ------------------------------------------


def _trl_self(trainer_cls, logp, **settings):
    """A stand-in `self` holding what TRL's _compute_loss reads; logp plays the model."""
    accel = SimpleNamespace(
        gather=lambda t: t, reduce=lambda t, reduction="sum": t, gather_for_metrics=lambda t: t
    )
    this = SimpleNamespace(
        aux_loss_enabled=False,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        _entropy_bonus_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        accelerator=accel,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None),
        **settings,
    )
    this._get_per_token_logps_and_entropies = lambda *a, **k: (logp, torch.zeros_like(logp), None)
    return this


def _trl_inputs(mask, old, adv, **extra):
    n, t = mask.shape
    return {
        "prompt_ids": torch.zeros(n, 2, dtype=torch.long),
        "prompt_mask": torch.ones(n, 2, dtype=torch.long),
        "completion_ids": torch.zeros(n, t, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        **extra,
    }


@pytest.mark.parametrize(("norm", "loss_type"), [("sequence", "grpo"), ("token", "bnpo")])
def test_grpo_loss_equals_trl(norm, loss_type):
    trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
    mask, logp, old, ref, rewards = _batch()
    adv = ro.group_advantages(rewards, 3)
    this = _trl_self(
        trl_grpo.GRPOTrainer,
        logp,
        beta=0.04,
        loss_type=loss_type,
        epsilon_low=0.2,
        epsilon_high=0.28,
    )
    inputs = _trl_inputs(mask, old, adv, ref_per_token_logps=ref)
    expected = trl_grpo.GRPOTrainer._compute_loss(this, None, inputs)
    ours = ro.token_policy_loss(
        logp, old, adv, mask, eps_low=0.2, eps_high=0.28, beta=0.04, ref_logp=ref, norm=norm
    )
    assert ours.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    metrics = this._metrics["train"]
    assert ours.kl == pytest.approx(metrics["kl"][0], rel=1e-6)
    assert ours.clip_fraction == pytest.approx(metrics["clip_ratio/region_mean"][0], rel=1e-6)
    assert ours.clip_fraction > 0  # the fixed ratios reach the clip


def test_grpo_advantages_equal_trl_formula():
    """TRL computes GRPO advantages inline (not a function): reward minus the group mean,
    over nanstd (its own helper) + 1e-4."""
    trl_utils = pytest.importorskip("trl.trainer.utils")
    r = torch.tensor([1.0, 0.0, 0.5, 2.0, 0.0, 1.0, 3.0, 3.0])
    grouped = r.view(-1, 4)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(4)
    std = trl_utils.nanstd(grouped, dim=1).repeat_interleave(4)
    assert torch.allclose(ro.group_advantages(r, 4), (r - mean) / (std + 1e-4))


def test_rloo_loss_equals_trl():
    trl_rloo = pytest.importorskip("trl.trainer.rloo_trainer")
    mask, logp, old, _, rewards = _batch()
    adv = ro.leave_one_out_advantages(rewards, 3)
    this = _trl_self(trl_rloo.RLOOTrainer, logp, epsilon_low=0.2, epsilon_high=0.2)
    old_seq = (old * mask).sum(1)
    inputs = _trl_inputs(mask, old, adv, old_logps=old_seq)
    expected = trl_rloo.RLOOTrainer._compute_loss(this, None, inputs)
    ours = ro.sequence_policy_loss(logp, old, adv, mask)
    assert ours.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    region = this._metrics["train"]["clip_ratio/region_mean"][0]
    assert ours.clip_fraction == pytest.approx(region)


def test_logprobs_and_entropy_equal_trl():
    trl_utils = pytest.importorskip("trl.trainer.utils")
    from giraffe.train.rollout import token_logprobs_and_entropy

    logits = torch.randn(3, 4, 17, generator=torch.Generator().manual_seed(1))
    ids = torch.randint(0, 17, (3, 4), generator=torch.Generator().manual_seed(2))
    lp, ent = token_logprobs_and_entropy(logits, ids)
    assert torch.allclose(lp, trl_utils.selective_log_softmax(logits, ids), atol=1e-6)
    assert torch.allclose(ent, trl_utils.entropy_from_logits(logits), atol=1e-5)


# ---- TRL 0.11.4's classic PPO (fixture) --------------------------------------------------


def test_ppo_rewards_gae_and_losses_equal_trl_fixture():
    fx = json.loads(FIXTURE.read_text())
    s, x, y = fx["settings"], fx["inputs"], fx["outputs"]
    t = {k: torch.tensor(v) for k, v in x.items()}
    mask = t["mask"]
    rewards = ro.ppo_token_rewards(
        t["scores"], t["logprobs"], t["ref_logprobs"], mask, s["kl_coef"]
    )
    assert torch.allclose(rewards, torch.tensor(y["rewards"]), atol=1e-6)
    adv, ret = ro.gae(rewards, t["values"], mask, s["gamma"], s["lam"])
    adv = ro.whiten(adv, mask)
    assert torch.allclose(adv, torch.tensor(y["advantages"]), atol=1e-5)
    assert torch.allclose(ret, torch.tensor(y["returns"]), atol=1e-6)
    eps = s["cliprange"]
    pg = ro.token_policy_loss(
        t["logprobs"], t["old_logprobs"], adv, mask, eps_low=eps, eps_high=eps, norm="token"
    )
    vf, vf_clip = ro.value_loss(t["vpreds"], t["values"] * mask, ret, mask, s["cliprange_value"])
    assert pg.loss.item() == pytest.approx(y["pg_loss"], rel=1e-5)
    assert vf.item() == pytest.approx(y["vf_loss"], rel=1e-5)
    assert (pg.loss + s["vf_coef"] * vf).item() == pytest.approx(y["total"], rel=1e-5)
    assert pg.clip_fraction == pytest.approx(y["pg_clipfrac"], rel=1e-6)
    assert vf_clip == pytest.approx(y["vf_clipfrac"], rel=1e-6)
