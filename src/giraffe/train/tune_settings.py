"""The settings every tuning command shares, declared once.

`TuneSettings` holds what SFT, DPO, the reward model and RL all have (the model, the
output, the step budget, the optimiser and its schedule, evaluation, data errors, the
chat template); `LoraSettings` what the commands that train adapters add. Each command's
config below (`FinetuneConfig`, `DPOConfig`, `RewardConfig`, `RLConfig`) inherits them,
adds its own fields and re-declares a field only to change its default or its comment.
The command-line flags are generated from these declarations, comments included
(`giraffe.train.tune_flags`), so a setting is written once for every command.

Plain data: no torch, no validation against models or files (`giraffe.train.tuning`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TuneSettings:
    model: str = ""  # alias, .gguf file or Hugging Face folder to start from
    out: str = ""  # the adapter (LoRA) or the whole model, plus log.jsonl and loss.png
    val_fraction: float = 0.1  # share of the data held out when no held-out file is given
    max_steps: int = 100  # optimiser steps (also the cosine schedule's length)
    batch_size: int = 4  # examples (pairs, prompts) per optimiser step
    grad_accum: int = 1  # micro-batches per step (each batch_size / grad_accum examples)
    seq_len: int = 512  # longest example in tokens; longer ones are cut (and counted)
    lr: float | None = None  # peak learning rate; None = the command's default for LoRA / full
    min_lr_ratio: float = 0.1  # the cosine ends at lr x this
    warmup: int = 10  # linear warm-up steps
    weight_decay: float = 0.0  # AdamW's decoupled decay, on matrices only
    clip: float = 1.0  # max global gradient norm; 0 = no clipping
    seed: int = 0  # initial weights of what is new, the split, the batch order, dropout
    eval_every: int = 25  # steps between held-out evaluations
    eval_examples: int = 200  # held-out examples scored at each evaluation (the first ones)
    on_error: str = "stop"  # a bad JSONL line: "stop" with its number, or "skip" it
    template: str | None = None  # chat template: chatml, llama2, plain or Jinja; None = the model's
    progress: bool = True  # a progress bar and printed evaluations


@dataclass(frozen=True)
class LoraSettings:
    lora_r: int = 0  # LoRA rank; 0 = full fine-tuning of every weight
    lora_alpha: float = 16.0  # LoRA scale numerator: the update is (alpha / r) B A
    lora_dropout: float = 0.05  # dropout on the LoRA branch's input while training
    lora_targets: str = "q_proj,v_proj"  # comma-separated linear layers to adapt, or all-linear
    qlora: bool = False  # keep a GGUF model's weights packed (4/8-bit) and train LoRA over them


# ---- the commands ------------------------------------------------------------------------


@dataclass(frozen=True)
class FinetuneConfig(LoraSettings, TuneSettings):
    data: str = ""  # JSONL of {"messages": [{"role", "content"}, ...]} conversations
    val_data: str = ""  # held-out conversations; "" = hold out val_fraction of `data`
    val_fraction: float = 0.05  # share of `data` held out when val_data is not given
    batch_size: int = 4  # conversations (or packed rows) per optimiser step
    seq_len: int = 512  # longest example (or packed row) in tokens; longer ones are cut
    lr: float | None = None  # peak learning rate; None = 2e-4 with LoRA, 2e-5 without
    eval_every: int = 50  # steps between held-out evaluations
    packing: bool = False  # fill rows of seq_len with several examples (attention kept apart)
    sample_prompts: tuple[str, ...] = ()  # user prompts answered before/after; () = held-out
    samples: int = 3  # held-out conversations answered before and after when no prompts given
    sample_tokens: int = 64  # longest sample answer in tokens


@dataclass(frozen=True)
class DPOConfig(LoraSettings, TuneSettings):
    model: str = ""  # alias, .gguf file or Hugging Face folder: the policy and the reference
    data: str = ""  # JSONL of {"prompt", "chosen", "rejected"}
    val_data: str = ""  # held-out pairs; "" = hold out val_fraction of `data`
    beta: float = 0.1  # strength of the pull towards the reference (the paper's beta)
    # RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization"): add this x the
    # chosen answers' mean per-token negative log-likelihood. Plain DPO only moves chosen
    # relative to rejected and can make both unlikely, e.g. forget where an answer ends.
    sft_weight: float = 0.0
    batch_size: int = 4  # pairs per optimiser step
    seq_len: int = 512  # longest prompt + answer in tokens; longer ones are cut (and counted)
    lr: float | None = None  # peak learning rate; None = 5e-5 with LoRA, 1e-6 without


@dataclass(frozen=True)
class RewardConfig(TuneSettings):
    model: str = ""  # alias, .gguf file or Hugging Face folder: the body to start from
    data: str = ""  # JSONL of {"prompt", "chosen", "rejected"}
    out: str = ""  # the reward model (a Hugging Face folder), log.jsonl and loss.png
    val_data: str = ""  # held-out pairs; "" = hold out val_fraction of `data`
    batch_size: int = 4  # pairs per optimiser step
    seq_len: int = 512  # longest prompt + answer in tokens; longer ones are cut (and counted)
    lr: float = 1e-5  # peak learning rate
    seed: int = 0  # the head's initial weights, the split, the batch order


ALGOS = ("grpo", "rloo", "ppo")


@dataclass(frozen=True)
class RLConfig(LoraSettings, TuneSettings):
    model: str = ""  # alias, .gguf file or Hugging Face folder: the policy to start from
    prompts: str = ""  # JSONL of {"prompt": ..., fields for the reward function}
    reward: str = ""  # a `giraffe reward` folder, or python:module:function
    out: str = ""  # the adapter (LoRA) or the whole model, checkpoints, log.jsonl, plots
    algo: str = "grpo"  # grpo, rloo or ppo
    val_prompts: str = ""  # held-out prompts; "" = hold out val_fraction of `prompts`
    max_steps: int = 50  # rollout + update rounds (also the cosine schedule's length)
    batch_size: int = 4  # prompts per step
    grad_accum: int = 1  # chunks the step's answers are split into for the backward pass
    seq_len: int = 256  # longest rendered prompt in tokens; longer prompts are dropped
    lr: float | None = None  # peak learning rate; None = 1e-4 with LoRA, 1e-6 without
    min_lr_ratio: float = 1.0  # the cosine ends at lr x this (1 = constant after warm-up)
    warmup: int = 0  # linear warm-up steps
    seed: int = 0  # LoRA's weights, the split, prompt order, every rollout's sampling
    eval_every: int = 10  # steps between held-out evaluations (greedy answers)
    eval_examples: int = 50  # held-out prompts answered at each evaluation
    lora_dropout: float = 0.0  # dropout on the LoRA branch (0: the ratio starts at exactly 1)
    group: int = 4  # answers sampled per prompt (GRPO/RLOO compare within the group)
    max_new_tokens: int = 32  # longest sampled answer
    temperature: float = 1.0  # sampling temperature of the rollouts
    top_p: float = 1.0  # nucleus sampling of the rollouts
    updates: int = 1  # optimiser steps per rollout (TRL's num_iterations; ppo_epochs)
    beta: float = 0.04  # KL coefficient: GRPO k3 in the loss; RLOO/PPO k1 in the reward
    eps_low: float = 0.2  # the ratio is clipped to [1 - eps_low, 1 + eps_high]
    eps_high: float = 0.2  # upper clip (DAPO's clip-higher raises it, e.g. to 0.28)
    loss_norm: str = "sequence"  # GRPO: "sequence" (mean per answer) or "token" (all tokens)
    scale_rewards: bool = True  # GRPO: divide by the group's std; RLOO: whiten the batch
    gamma: float = 1.0  # PPO: discount
    lam: float = 0.95  # PPO: GAE's lambda
    vf_coef: float = 0.1  # PPO: weight of the value loss
    value_clip: float = 0.2  # PPO: the value's change is clipped to +- this
    save_every: int = 10  # steps between checkpoints
    reward_timeout: float = 10.0  # seconds a reward function may take per sample
    stop_step: int | None = None  # stop (and checkpoint) here, as a crash would: for tests

    def run_shape(self) -> dict:
        """Settings a resumed run must share with the one it continues."""
        skip = ("out", "eval_every", "eval_examples", "save_every", "progress", "stop_step")
        return {k: v for k, v in asdict(self).items() if k not in skip}
