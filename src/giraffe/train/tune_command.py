"""Command-line doors onto fine-tuning: `giraffe finetune`, `giraffe dpo`, `giraffe reward`.

Each `add_*_parser(subparsers)` adds one subcommand and each `run_*(args)` runs it and
returns an exit status. Building the parsers imports nothing heavy (no torch): the loops
(`giraffe.train.finetune`, `.preference`, `.reward`) are imported when a command runs.
A flag left out keeps its config field's default (every flag defaults to None and only
given values reach the config), so the defaults live in one place. Bad input - a JSONL
line, a role the chat template refuses, settings that do not fit - raises a ValueError
subclass with a full sentence, which `giraffe.cli` prints as one line.
"""

from __future__ import annotations

import argparse
import json
import warnings

from giraffe.train import tune_settings
from giraffe.train.tune_flags import add_config_flags, config_from_args

ON_ERROR = {"on_error": ("stop", "skip")}


def _add(subparsers, name: str, help_text: str, config: str, flag_names=None):
    """A subcommand whose flags are generated from `giraffe.train.tune_settings.<config>`
    (plain data: building the parser imports no torch)."""
    p = subparsers.add_parser(name, help=help_text)
    add_config_flags(p, getattr(tune_settings, config), ("data", "out"), ON_ERROR, flag_names)
    return p


def _run(train, cfg, command: str) -> dict:
    """Run a loop; the data warnings it raises (examples cut at --seq-len) are printed
    after its results as plain lines, any other warning as Python shows it."""
    from giraffe.train.chat_data import DataWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        metrics = train(cfg)
    for w in caught:
        if issubclass(w.category, DataWarning):
            metrics.setdefault("warnings", []).append(f"giraffe {command}: warning: {w.message}")
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return metrics


def _print_result(metrics: dict, keys: tuple[str, ...]) -> None:
    shown = {k: metrics[k] for k in keys if k in metrics}
    print(f"saved to {metrics['saved']}: {json.dumps(shown)}")
    for line in metrics.get("warnings", []):
        print(line)


# ---- finetune ----------------------------------------------------------------------------


def add_finetune_parser(subparsers) -> argparse.ArgumentParser:
    return _add(
        subparsers,
        "finetune",
        "supervised fine-tuning on conversations (full, LoRA or QLoRA)",
        "FinetuneConfig",
        {"sample_prompts": "--sample-prompt"},
    )


def run_finetune(args) -> int:
    from giraffe.train.finetune import FinetuneConfig, finetune

    metrics = _run(finetune, config_from_args(FinetuneConfig, args), "finetune")
    for s in metrics["samples"]:
        print(f"\nprompt:    {s['prompt']}")
        if s["reference"]:
            print(f"reference: {s['reference']}")
        print(f"before:    {s['before']}\nafter:     {s['after']}")
    _print_result(metrics, ("step", "loss", "first_val_loss", "val_loss", "truncated"))
    return 0


# The result line of the two trainers on chosen/rejected pairs.
PAIR_KEYS = ("step", "loss", "first_val_accuracy", "val_accuracy", "val_margin", "truncated")


# ---- dpo ---------------------------------------------------------------------------------


def add_dpo_parser(subparsers) -> argparse.ArgumentParser:
    return _add(
        subparsers,
        "dpo",
        "direct preference optimisation on chosen/rejected pairs (full or LoRA)",
        "DPOConfig",
    )


def run_dpo(args) -> int:
    from giraffe.train.preference import DPOConfig, train_dpo

    _print_result(_run(train_dpo, config_from_args(DPOConfig, args), "dpo"), PAIR_KEYS)
    return 0


# ---- reward ------------------------------------------------------------------------------


def add_reward_parser(subparsers) -> argparse.ArgumentParser:
    return _add(
        subparsers,
        "reward",
        "train a reward model (scalar head) on chosen/rejected pairs",
        "RewardConfig",
    )


def run_reward(args) -> int:
    from giraffe.train.reward import RewardConfig, train_reward

    _print_result(_run(train_reward, config_from_args(RewardConfig, args), "reward"), PAIR_KEYS)
    return 0
