"""Rollouts for reinforcement learning: sample answers with the policy, then lay them out
as tensors the losses read.

`sample_answers` runs giraffe's batched decoding (`giraffe.generate.engine.DecodeSession`:
one prefill of every prompt, then one token per step for all rows together over the KV
cache, rows of different lengths left-padded and masked) over every prompt x G copies.
Each row has its own seed, a function of (run seed, step, row), so a resumed run draws
exactly the answers the uninterrupted one drew, whatever else is in the batch. With LoRA
on float weights the update is folded into the weights for the rollout (`folded_lora`:
the plain matmul, no adapter branch per token) and the original weight tensors are put
back afterwards untouched, not subtracted again, so no rounding creeps in. The answer
keeps its stop token (end of turn): the policy must learn to stop too.

`Rollout.tensors` builds the right-padded training batch, and `answer_logprobs` the
per-token log-probabilities (and entropies, values) over answer tokens only, in an
(N, T_answer) layout. It knows no rewards and no losses.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from giraffe.generate.engine import DecodeSession
from giraffe.generate.params import DecodingConfig
from giraffe.quant.linear import QuantLinear
from giraffe.train.lora import lora_layers

SEED_STRIDE = 1_000_003  # rows' seeds: seed * stride^2 + step * stride + row (distinct)


@dataclass
class Rollout:
    prompts: list[list[int]]  # (N,) prompt token ids, each prompt repeated G times in a row
    answers: list[list[int]]  # (N,) sampled token ids, stop token included when it stopped
    texts: list[str]  # (N,) answers decoded, special tokens skipped
    finished: list[bool]  # (N,) True when the answer ended with a stop token

    def tensors(self, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids (N, L) prompt + answer right-padded; picked (N, L-1): True where position t
        predicts an answer token ids[t+1]; answer_mask (N, A): the answer tokens, A the
        longest answer, in the (N, A) layout of per-token tensors."""
        rows = [p + a for p, a in zip(self.prompts, self.answers, strict=True)]
        L = max(len(r) for r in rows)
        A = max(max(len(a) for a in self.answers), 1)
        ids = torch.full((len(rows), L), pad, dtype=torch.long)  # (N, L)
        picked = torch.zeros(len(rows), L - 1, dtype=torch.bool)  # (N, L-1)
        answer_mask = torch.zeros(len(rows), A, dtype=torch.bool)  # (N, A)
        for i, (p, a) in enumerate(zip(self.prompts, self.answers, strict=True)):
            ids[i, : len(p) + len(a)] = torch.tensor(p + a)
            picked[i, len(p) - 1 : len(p) - 1 + len(a)] = True
            answer_mask[i, : len(a)] = True
        return ids, picked, answer_mask

    @property
    def answer_tokens(self) -> int:
        return sum(len(a) for a in self.answers)


def row_seed(seed: int, step: int, row: int) -> int:
    return (seed * SEED_STRIDE + step) * SEED_STRIDE + row


@contextlib.contextmanager
def folded_lora(model):
    """Within the block every float-based LoRA layer computes W + (alpha/r) B A in one
    matmul; afterwards the very same weight tensors as before are back in place."""
    saved = []
    with torch.no_grad():
        for _, layer in lora_layers(model):
            if layer.merged or layer.disabled or isinstance(layer.base, QuantLinear):
                continue  # a packed base cannot take the update: its branch runs as usual
            weight = layer.base.weight
            saved.append((layer, weight.data))
            weight.data = weight.data + layer.delta_weight().to(weight.dtype)
            layer.merged = True
    try:
        yield model
    finally:
        for layer, data in saved:
            layer.base.weight.data = data
            layer.merged = False


def sample_answers(
    model,
    tokenizer,
    prompts: list[list[int]],
    decoding: DecodingConfig,
    seeds: list[int],
    fold: bool = True,
) -> Rollout:
    """Sample one answer per prompt row (rows already repeated G times), in eval mode."""
    was = model.training
    model.eval()
    stop_ids = set(tokenizer.stop_ids)
    answers: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    try:
        with folded_lora(model) if fold else contextlib.nullcontext():
            session = DecodeSession(model, prompts, decoding, sorted(stop_ids), seeds)
            for events in session:
                for ev in events:
                    answers[ev.row].append(ev.token_id)
                    if ev.finish_reason == "stop":
                        finished[ev.row] = True
    finally:
        model.train(was)
    texts = [
        tokenizer.decode([t for t in a if t not in stop_ids], skip_special_tokens=True)
        for a in answers
    ]
    return Rollout([list(p) for p in prompts], answers, texts, finished)


# ---- log-probabilities -------------------------------------------------------------------


def token_logprobs_and_entropy(logits: torch.Tensor, ids: torch.Tensor):
    """log p(ids) and the entropy of each distribution: logits (..., V), ids (...)."""
    logp_all = F.log_softmax(logits.float(), dim=-1)
    chosen = logp_all.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return chosen, entropy


@dataclass
class AnswerScores:
    logp: torch.Tensor  # (N, A) log p of each answer token (graph kept when grads are on)
    entropy: torch.Tensor  # (N, A) entropy of each answer position's distribution (detached)
    values: torch.Tensor | None  # (N, A) value head output, when a value head is given


def answer_logprobs(
    model, ids, picked, answer_mask, value_head=None, temperature: float = 1.0
) -> AnswerScores:
    """Per-token scores over answer tokens only: the vocabulary projection runs at the
    M answer positions, not at every position of the batch. The logits are divided by
    the sampling temperature (as TRL does), so the log-probabilities are those of the
    distribution the answers were drawn from."""
    h = model.hidden(ids[:, :-1])  # (N, L-1, C): position t predicts ids[t+1]
    h_answer = h[picked]  # (M, C), row-major: row 0's answer tokens in order, then row 1's...
    logits = model.head(h_answer)  # (M, V)
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    target = ids[:, 1:][picked]  # (M,)
    lp, ent = token_logprobs_and_entropy(logits, target)

    def layout(flat: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(answer_mask.shape, dtype=flat.dtype)  # (N, A)
        return out.masked_scatter(answer_mask, flat)

    values = layout(value_head(h_answer).squeeze(-1).float()) if value_head is not None else None
    return AnswerScores(layout(lp), layout(ent.detach()), values)
