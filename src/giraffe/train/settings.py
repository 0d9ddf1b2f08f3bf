"""`TrainConfig`: the settings of one pretraining run, as plain data.

Kept apart from the loop (`giraffe.train.loop`) so that the command line can build its
flags from these fields without importing torch. It does not validate against data.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "gpt2"  # gpt2, llama (causal LM), bert (masked LM), t5 (span corruption)
    preset: str = "small"  # PRESETS[f"{arch}-{preset}"]; vocab_size comes from the tokenizer
    data: str = ""  # folder written by `giraffe prepare`
    out: str = ""  # the model goes here, checkpoints to out/checkpoints
    max_steps: int = 1000  # optimiser steps; also the length of the cosine schedule
    max_minutes: float | None = None  # stop (and save) after this long, whatever the step
    batch_size: int = 16  # rows per optimiser step, over all ranks and micro-batches
    grad_accum: int = 1  # micro-batches per step (each batch_size / grad_accum / ranks rows)
    seq_len: int = 128  # tokens per row the model reads
    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # the cosine ends at lr x this
    warmup: int = 50  # linear warm-up steps
    weight_decay: float = 0.1  # AdamW's decoupled decay, on matrices only
    clip: float = 1.0  # max global gradient norm; 0 = no clipping
    bf16: bool = False  # bfloat16 autocast for the forward pass (weights stay float32)
    compile: bool = False  # torch.compile the model (see the README for when it helps)
    seed: int = 0
    eval_every: int = 100  # steps between validation runs (and samples, checkpoints)
    eval_batches: int = 4  # validation batches of batch_size rows each
    save_every: int = 100  # steps between checkpoints
    sample_prompt: str = "The"  # decoders: shown continued at each evaluation
    mask_prompt: str = "The [MASK] statement"  # bert: its top guesses at each evaluation
    device: str = "cpu"
    gguf: bool = False  # decoders: also write out/model.gguf
    progress: bool = True  # a rich progress bar on the main rank
    stop_step: int | None = None  # stop (and checkpoint) here, as a crash would: for tests

    def run_shape(self) -> dict:
        """The settings a resumed run must share with the one it continues."""
        keys = (
            "batch_size",
            "grad_accum",
            "seq_len",
            "lr",
            "min_lr_ratio",
            "warmup",
            "weight_decay",
            "clip",
            "bf16",
            "seed",
            "max_steps",
        )
        return {k: getattr(self, k) for k in keys}


class TrainError(ValueError):
    """The training settings do not fit together or with the data."""
