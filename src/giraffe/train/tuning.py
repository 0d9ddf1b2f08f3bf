"""What every tuning loop shares: checking the settings, loading the model (float, or
packed for QLoRA), choosing what trains (LoRA adapters or every weight), the held-out
split, the batch order, the reporter and saving the result.

`giraffe.train.finetune` (SFT), `.preference` (DPO), `.reward` (reward model) and `.rl`
(reinforcement learning) build on these; their settings are declared in
`giraffe.train.tune_settings`. It knows no objective and parses no command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from giraffe.files.records import ON_ERROR
from giraffe.lm import LanguageModel, load
from giraffe.quant.linear import QuantEmbedding, QuantLinear
from giraffe.train.adapter import save_adapter
from giraffe.train.lora import LoraConfig, apply_lora, lora_parameters
from giraffe.train.report import Reporter


class FinetuneError(ValueError):
    """The fine-tuning settings do not fit together, with the model or with the data."""


def check_run(cfg) -> None:
    """Settings every fine-tuning loop shares."""
    for name in ("max_steps", "batch_size", "grad_accum", "seq_len", "eval_every"):
        if getattr(cfg, name) <= 0:
            raise FinetuneError(
                f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}"
            )
    if cfg.batch_size % cfg.grad_accum:
        raise FinetuneError(
            f"--batch-size {cfg.batch_size} must split into --grad-accum {cfg.grad_accum} "
            "equal micro-batches"
        )
    if cfg.on_error not in ON_ERROR:
        raise FinetuneError(f"--on-error takes {' or '.join(ON_ERROR)}, not {cfg.on_error!r}")
    if not 0 <= cfg.val_fraction < 1:
        raise FinetuneError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    if getattr(cfg, "lora_r", 0) < 0:
        raise FinetuneError(f"--lora-r must be 0 (full fine-tuning) or more, got {cfg.lora_r}")
    if getattr(cfg, "qlora", False) and getattr(cfg, "lora_r", 0) == 0:
        raise FinetuneError("--qlora trains LoRA adapters over a packed model: give --lora-r too")


def load_model(cfg) -> LanguageModel:
    """The model to tune: float32, or packed blocks when cfg.qlora."""
    lm = load(cfg.model, packed=bool(getattr(cfg, "qlora", False)))
    if getattr(cfg, "qlora", False) and not is_packed(lm.model):
        raise FinetuneError(
            f"--qlora trains over a quantized GGUF model's packed blocks, but {cfg.model} has "
            "float weights; quantize it first (giraffe quantize MODEL --to q4_0 --out m.gguf) "
            "or drop --qlora"
        )
    if cfg.seq_len > lm.config.max_position_embeddings:
        raise FinetuneError(
            f"--seq-len {cfg.seq_len} exceeds the model's context of "
            f"{lm.config.max_position_embeddings} tokens"
        )
    return lm


def is_packed(model: torch.nn.Module) -> bool:
    return any(isinstance(m, (QuantLinear, QuantEmbedding)) for m in model.modules())


def uses_lora(cfg) -> bool:
    return getattr(cfg, "lora_r", 0) > 0


def prepare_trainable(model: torch.nn.Module, cfg) -> list[torch.nn.Parameter]:
    """Freeze the model and return what trains: LoRA adapters, or every weight."""
    for p in model.parameters():
        p.requires_grad_(False)
    if uses_lora(cfg):
        targets = tuple(t.strip() for t in cfg.lora_targets.split(",") if t.strip())
        lora = LoraConfig(
            r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, targets=targets
        )
        apply_lora(model, lora)  # an unknown target raises, naming the layers there are
        params = list(lora_parameters(model))
    elif is_packed(model):
        raise FinetuneError(
            "full fine-tuning needs float weights; this model is packed (use --lora-r)"
        )
    else:
        params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def peak_lr(cfg, lora: float, full: float) -> float:
    return cfg.lr if cfg.lr is not None else (lora if uses_lora(cfg) else full)


def pad_id(tokenizer) -> int:
    for i in (tokenizer.pad_id, tokenizer.eos_id):
        if i is not None:
            return i
    return 0


def split_items(items: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """(train, held out): a seeded shuffle, then the last val_fraction held out (at least one
    when there are two or more items and val_fraction > 0)."""
    if val_fraction <= 0 or len(items) < 2:
        return list(items), []
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(max(1, round(len(items) * val_fraction)), len(items) - 1)
    return [items[i] for i in order[:-n_val]], [items[i] for i in order[-n_val:]]


def step_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Item indices of the batch at `step`: epochs of seeded permutations, read in order.

    A function of (seed, step) alone, so any step's batch is known without replaying.
    """
    perms: dict[int, list[int]] = {}
    out = []
    for p in range(step * batch_size, (step + 1) * batch_size):
        epoch, at = divmod(p, n)
        if epoch not in perms:
            gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
            perms[epoch] = torch.randperm(n, generator=gen).tolist()
        out.append(perms[epoch][at])
    return out


@dataclass(frozen=True)
class _ReportInfo:
    progress: bool  # what Reporter reads from a run's config
    arch: str  # plot title, first part
    preset: str  # plot title, second part


class TuneReporter(Reporter):
    """`giraffe.train.report.Reporter` for fine-tuning: the same bar, log and plot; the
    evaluation line shows whatever the loop measured."""

    def __init__(self, kind: str, cfg, out: Path) -> None:
        (out / "log.jsonl").unlink(missing_ok=True)  # a fresh run, never a resumed one
        info = _ReportInfo(cfg.progress, kind, Path(cfg.model).name or cfg.model)
        super().__init__(info, out, main=True, start=0, bytes_per_token=None)

    def _self_print(self, record: dict) -> None:  # Reporter's hook for evaluation records
        if not self.cfg.progress:
            return
        from rich.console import Console

        console = self._progress.console if self._progress is not None else Console()
        # Perplexity means something for SFT's token loss only, not for pairwise losses.
        skip = () if self.cfg.arch == "sft" else ("val_ppl",)
        shown = [
            f"{k.replace('_', ' ')} {v:.4f}"
            for k, v in record.items()
            if isinstance(v, float) and k not in skip
        ]
        console.print(f"step {record['step']}: " + ", ".join(shown), highlight=False)


def save_tuned(lm: LanguageModel, out: Path, cfg) -> Path:
    """The adapter alone (PEFT layout) with LoRA, otherwise the whole model folder."""
    if uses_lora(cfg):
        return save_adapter(lm.model, out, cfg.model)
    return lm.save(out)


def train_and_val(read, data, val_data, cfg, what: str) -> tuple[list, list, object]:
    """(train, held out, the data report): val_data when given, else a seeded split of
    data (cfg.val_fraction, cfg.seed); `read(path)` returns (items, report)."""
    items, report = read(data)
    if val_data:
        train, val = items, read(val_data)[0]
    else:
        train, val = split_items(items, cfg.val_fraction, cfg.seed)
    if not train:
        raise FinetuneError(f"no {what} left to train on: {report.summary()}")
    return train, val, report
