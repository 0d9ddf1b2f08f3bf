"""`RLConfig`: the settings of one `giraffe rl` run, as plain data.

Kept apart from the loop (`giraffe.train.rl`) so that the command line can build its
flags from these fields (and their comments) without importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

ALGOS = ("grpo", "rloo", "ppo")


@dataclass(frozen=True)
class RLConfig:
    model: str = ""  # alias, .gguf file or Hugging Face folder: the policy to start from
    prompts: str = ""  # JSONL of {"prompt": ..., fields for the reward function}
    reward: str = ""  # a `giraffe reward` folder, or python:module:function
    out: str = ""  # the adapter (LoRA) or the whole model, checkpoints, log.jsonl, plots
    algo: str = "grpo"  # grpo, rloo or ppo
    val_prompts: str = ""  # held-out prompts; "" = hold out val_fraction of `prompts`
    val_fraction: float = 0.1  # share of `prompts` held out when val_prompts is not given
    max_steps: int = 50  # rollout + update rounds (also the cosine schedule's length)
    batch_size: int = 4  # prompts per step
    group: int = 4  # answers sampled per prompt (GRPO/RLOO compare within the group)
    grad_accum: int = 1  # chunks the step's answers are split into for the backward pass
    seq_len: int = 256  # longest rendered prompt in tokens; longer prompts are dropped
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
    lr: float | None = None  # peak learning rate; None = 1e-4 with LoRA, 1e-6 without
    min_lr_ratio: float = 1.0  # the cosine ends at lr x this (1 = constant after warm-up)
    warmup: int = 0  # linear warm-up steps
    weight_decay: float = 0.0  # AdamW's decoupled decay, on matrices only
    clip: float = 1.0  # max global gradient norm; 0 = no clipping
    seed: int = 0  # LoRA's weights, the split, prompt order, every rollout's sampling
    eval_every: int = 10  # steps between held-out evaluations (greedy answers)
    eval_examples: int = 50  # held-out prompts answered at each evaluation
    save_every: int = 10  # steps between checkpoints
    lora_r: int = 0  # LoRA rank; 0 = full fine-tuning of every weight
    lora_alpha: float = 16.0  # LoRA scale numerator: the update is (alpha / r) B A
    lora_dropout: float = 0.0  # dropout on the LoRA branch (0: the ratio starts at exactly 1)
    lora_targets: str = "q_proj,v_proj"  # comma-separated names of the linear layers to adapt
    qlora: bool = False  # keep a GGUF model's weights packed (4/8-bit) and train LoRA over them
    reward_timeout: float = 10.0  # seconds a reward function may take per sample
    on_error: str = "stop"  # a bad JSONL line: "stop" with its number, or "skip" it
    template: str | None = None  # chat template (builtin name or Jinja); None = the model's
    progress: bool = True  # a progress bar and printed evaluations
    stop_step: int | None = None  # stop (and checkpoint) here, as a crash would: for tests

    def run_shape(self) -> dict:
        """Settings a resumed run must share with the one it continues."""
        skip = ("out", "eval_every", "eval_examples", "save_every", "progress", "stop_step")
        return {k: v for k, v in asdict(self).items() if k not in skip}
