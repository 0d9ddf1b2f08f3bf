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
from dataclasses import fields

# Flags every fine-tuning command shares: (flag, type, help).
COMMON = (
    ("--val-data", str, "held-out JSONL (default: hold out --val-fraction of --data)"),
    ("--val-fraction", float, "share of --data held out when --val-data is not given"),
    ("--max-steps", int, "optimiser steps (also the cosine schedule's length)"),
    ("--batch-size", int, "examples (pairs) per optimiser step"),
    ("--grad-accum", int, "micro-batches per step"),
    ("--seq-len", int, "longest example in tokens; longer ones are cut (and counted)"),
    ("--lr", float, "peak learning rate"),
    ("--warmup", int, "linear warm-up steps"),
    ("--weight-decay", float, "AdamW weight decay on matrices"),
    ("--clip", float, "max gradient norm (0 = off)"),
    ("--seed", int, "seed for the split, batch order and LoRA's initial weights"),
    ("--eval-every", int, "steps between held-out evaluations"),
    (
        "--template",
        str,
        "chat template: chatml, llama2, plain or Jinja text (default: the model's)",
    ),
)
LORA = (
    ("--lora-r", int, "LoRA rank; 0 = full fine-tuning (default)"),
    ("--lora-alpha", float, "LoRA scale numerator (update = alpha/r * B A)"),
    ("--lora-dropout", float, "dropout on the LoRA branch while training"),
    ("--lora-targets", str, "comma-separated linear layers to adapt, e.g. q_proj,v_proj"),
)


def _add(p: argparse.ArgumentParser, data_help: str, out_help: str, flags=COMMON) -> None:
    p.add_argument("model", help="alias, .gguf file or Hugging Face folder to start from")
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--out", required=True, help=out_help)
    for flag, kind, text in flags:
        p.add_argument(flag, type=kind, default=None, help=text)
    p.add_argument(
        "--on-error",
        choices=("stop", "skip"),
        default=None,
        help="a bad JSONL line: stop with its number (default) or skip it",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_lora(p: argparse.ArgumentParser) -> None:
    for flag, kind, text in LORA:
        p.add_argument(flag, type=kind, default=None, help=text)
    p.add_argument(
        "--qlora",
        action="store_true",
        default=None,
        help="train LoRA over a quantized GGUF model's packed weights (needs --lora-r)",
    )


def _config(cls, args):
    """The config from the flags given; the others keep the dataclass defaults."""
    names = {f.name for f in fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return cls(**given, progress=not args.no_progress)


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
    p = subparsers.add_parser(
        "finetune", help="supervised fine-tuning on conversations (full, LoRA or QLoRA)"
    )
    _add(
        p,
        'JSONL of {"messages": [{"role", "content"}, ...]}',
        "folder for the adapter (with LoRA) or the whole model, log.jsonl and loss.png",
    )
    _add_lora(p)
    p.add_argument(
        "--packing",
        action="store_true",
        default=None,
        help="pack several short conversations per row (attention stays within each)",
    )
    p.add_argument(
        "--sample-prompt",
        action="append",
        dest="sample_prompts",
        help="a prompt answered before and after training (repeatable; default: held-out ones)",
    )
    return p


def run_finetune(args) -> int:
    from giraffe.train.finetune import FinetuneConfig, finetune

    if args.sample_prompts:
        args.sample_prompts = tuple(args.sample_prompts)
    metrics = _run(finetune, _config(FinetuneConfig, args), "finetune")
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
    p = subparsers.add_parser(
        "dpo", help="direct preference optimisation on chosen/rejected pairs (full or LoRA)"
    )
    _add(
        p,
        'JSONL of {"prompt", "chosen", "rejected"}',
        "folder for the adapter (with LoRA) or the whole model, log.jsonl and loss.png",
    )
    p.add_argument("--beta", type=float, default=None, help="pull towards the reference (0.1)")
    p.add_argument(
        "--sft-weight",
        type=float,
        default=None,
        help="also learn the chosen answers' text, with this weight (RPO; 0 = plain DPO)",
    )
    _add_lora(p)
    return p


def run_dpo(args) -> int:
    from giraffe.train.preference import DPOConfig, train_dpo

    _print_result(_run(train_dpo, _config(DPOConfig, args), "dpo"), PAIR_KEYS)
    return 0


# ---- reward ------------------------------------------------------------------------------


def add_reward_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "reward", help="train a reward model (scalar head) on chosen/rejected pairs"
    )
    _add(
        p,
        'JSONL of {"prompt", "chosen", "rejected"}',
        "folder for the reward model (loads as transformers' *ForSequenceClassification)",
    )
    return p


def run_reward(args) -> int:
    from giraffe.train.reward import RewardConfig, train_reward

    _print_result(_run(train_reward, _config(RewardConfig, args), "reward"), PAIR_KEYS)
    return 0
