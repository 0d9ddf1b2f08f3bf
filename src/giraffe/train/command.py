"""Command-line doors onto training: `giraffe train-tokenizer`, `giraffe prepare`,
`giraffe pretrain`, and the table behind `giraffe tokenize --compare`.

Each `add_*_parser(subparsers)` adds one subcommand, each `run_*(args)` runs it and
returns an exit status. The logic lives in `giraffe.tokenizer.train`,
`giraffe.train.data` and `giraffe.train.loop`; this file parses, loads and prints.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import fields
from pathlib import Path

from rich.console import Console
from rich.table import Table

from giraffe.tokenizer.compare import compare
from giraffe.tokenizer.train import KINDS, train_tokenizer

# ---- train-tokenizer ---------------------------------------------------------------------


def add_train_tokenizer_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train-tokenizer", help="train a char, word or byte-level BPE tokenizer on text"
    )
    p.add_argument(
        "data", nargs="+", help="text files or folders (.txt .md .jsonl .parquet), or 'demo'"
    )
    p.add_argument("--kind", choices=KINDS, default="bpe")
    p.add_argument(
        "--vocab-size", type=int, default=8192, help="largest vocabulary (special tokens included)"
    )
    p.add_argument("--out", required=True, help="folder for tokenizer.json + tokenizer_config.json")
    return p


def run_train_tokenizer(args) -> int:
    from giraffe.train.data import documents, expand

    files = expand(args.data)
    texts = (text for f in files for text, _ in documents(f))
    tok = train_tokenizer(texts, args.kind, args.vocab_size)
    tok.save(args.out)
    Console(highlight=False).print(
        f"{args.kind} tokenizer with {tok.vocab_size} tokens written to {Path(args.out) / 'tokenizer.json'}"
    )
    return 0


# ---- prepare -----------------------------------------------------------------------------


def add_prepare_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("prepare", help="tokenize text into train/val token shards")
    p.add_argument(
        "data", nargs="+", help="text files or folders (.txt .md .jsonl .parquet), or 'demo'"
    )
    p.add_argument(
        "--tokenizer", required=True, help="tokenizer.json, its folder, or a model alias"
    )
    p.add_argument("--out", required=True, help="folder for train.bin, val.bin, meta.json")
    p.add_argument("--val-fraction", type=float, default=0.05, help="share of documents held out")
    return p


def run_prepare(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from giraffe.lm import load_tokenizer
    from giraffe.train.data import prepare

    tok = load_tokenizer(args.tokenizer)
    columns = (
        TextColumn("files"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tokens]:,} tokens"),
    )
    with Progress(*columns) as bar:
        task = bar.add_task("prepare", total=None, tokens=0)

        def progress(done, total, tokens):
            bar.update(task, completed=done, total=total, tokens=tokens)

        meta = prepare(args.data, tok, args.out, args.val_fraction, progress)
    Console(highlight=False).print(
        f"{meta['train']['tokens']:,} training and {meta['val']['tokens']:,} validation tokens "
        f"({meta['train']['documents'] + meta['val']['documents']} documents, {meta['dtype']}) in {args.out}"
    )
    return 0


# ---- pretrain ----------------------------------------------------------------------------


def add_pretrain_parser(subparsers) -> argparse.ArgumentParser:
    from giraffe.train.settings import TrainConfig

    p = subparsers.add_parser("pretrain", help="pretrain a gpt2, llama, bert or t5 model on shards")
    p.add_argument("--arch", choices=("gpt2", "llama", "bert", "t5"), required=True)
    p.add_argument("--data", required=True, help="folder written by giraffe prepare")
    p.add_argument("--out", required=True, help="model folder; checkpoints go to OUT/checkpoints")
    helps = {
        "preset": "model size: tiny, small, base",
        "max_steps": "optimiser steps (also the cosine schedule's length)",
        "max_minutes": "stop and save after this many minutes (rerun to resume)",
        "batch_size": "rows per step over all processes and micro-batches",
        "grad_accum": "micro-batches per step",
        "bf16": "bfloat16 autocast",
        "compile": "torch.compile the model",
        "gguf": "decoders: also write OUT/model.gguf",
    }
    skip = {"arch", "data", "out", "progress", "stop_step"}
    for f in fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, action="store_true", help=helps.get(f.name))
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type).split(" ")[0], float)
            p.add_argument(flag, type=kind, default=f.default, help=helps.get(f.name))
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    return p


def run_pretrain(args) -> int:
    from giraffe.train.loop import TrainConfig, pretrain

    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    cfg = TrainConfig(**values, progress=not args.no_progress)
    metrics = pretrain(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        shown = {
            k: v for k, v in metrics.items() if k in ("step", "val_loss", "val_ppl", "val_bpb")
        }
        Console(highlight=False).print(f"saved to {cfg.out}: {json.dumps(shown)}")
    return 0


# ---- tokenize --compare ------------------------------------------------------------------


def run_compare(text: str, names: list[str], as_json: bool = False) -> int:
    """Print `text` under each tokenizer in `names` (aliases, tokenizer.json, cl100k_base)."""
    from giraffe.lm import load_tokenizer

    rows = compare(text, {n: load_tokenizer(n) for n in names})
    if as_json:
        print(json.dumps([r.__dict__ for r in rows], ensure_ascii=False, indent=2))
        return 0
    table = Table("tokenizer", "tokens", "count", "tokens/word", "bytes/token")
    for r in rows:
        table.add_row(
            r.name,
            " | ".join(r.tokens),
            str(len(r.ids)),
            f"{r.tokens_per_word:.2f}",
            f"{r.bytes_per_token:.2f}",
        )
    Console(highlight=False).print(table)
    return 0
