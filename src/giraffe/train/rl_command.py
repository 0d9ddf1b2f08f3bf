"""`giraffe rl`: the command-line door onto `giraffe.train.rl`.

Flags are generated from `RLConfig` (`giraffe.train.tune_flags`), so the command offers
exactly the config's settings with their comments as help. Reward-function failures
(`RewardWarning`) are collected and printed after the result as plain lines, one per step
that had any. Building the parser imports no torch.
"""

from __future__ import annotations

import argparse
import json
import warnings

from giraffe.train.tune_flags import add_config_flags, config_from_args

CHOICES = {
    "algo": ("grpo", "rloo", "ppo"),
    "loss_norm": ("sequence", "token"),
    "on_error": ("stop", "skip"),
}
RESULT_KEYS = (
    "step",
    "first_val_reward",
    "val_reward",
    "first_val_success",
    "val_success",
    "reward_failures",
)


def add_rl_parser(subparsers) -> argparse.ArgumentParser:
    from giraffe.train.tune_settings import RLConfig

    p = subparsers.add_parser(
        "rl",
        help="reinforcement learning: GRPO/RLOO/PPO from a reward model or a Python reward",
        description="Sample answers to --prompts, score them with --reward, and make the "
        "better ones more likely, with a KL pull to the starting model.",
    )
    add_config_flags(p, RLConfig, required=("prompts", "reward", "out"), choices=CHOICES)
    return p


def run_rl(args) -> int:
    from giraffe.train.chat_data import DataWarning
    from giraffe.train.rl import RewardWarning, train_rl
    from giraffe.train.tune_settings import RLConfig

    cfg = config_from_args(RLConfig, args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RewardWarning)
        warnings.simplefilter("always", DataWarning)
        metrics = train_rl(cfg)
    shown = {k: metrics[k] for k in RESULT_KEYS if k in metrics}
    for s in metrics.get("samples", [])[:3]:
        print(f"\nprompt: {s['prompt']}\nbefore: {s['before']}\nafter:  {s['after']}")
    print(f"saved to {metrics.get('saved', cfg.out)}: {json.dumps(shown)}")
    for w in caught:
        if issubclass(w.category, (RewardWarning, DataWarning)):
            print(f"giraffe rl: warning: {w.message}")
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return 0
