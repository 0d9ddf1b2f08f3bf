"""Beam search (num_beams, length_penalty, early_stopping) over the same model interface.

Keeps the `num_beams` highest log-probability continuations; a beam that emits a stop
token becomes a finished hypothesis scored sum(logprob) / length**length_penalty, with
the length counting the generated tokens including the stop token (as Hugging Face
does). Deterministic only: beam *sampling* is not offered, so the sampling knobs are
ignored while penalties and n-gram bans still apply. It does not know text. Unlike the
sampling session it keeps torch: it reorders the model's cache by beam; the penalties
(numpy, `samplers.process_logits`) see the logits through a zero-copy numpy view.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from giraffe.generate.params import DecodingConfig
from giraffe.generate.samplers import process_logits
from giraffe.generate.sequence import check_prompts, stop_set


@dataclass
class BeamResult:
    token_ids: list[int]  # generated tokens, without the stop token
    score: float  # length-normalised log-probability
    finish_reason: str  # "stop" or "length"


@dataclass
class _Hypothesis:
    score: float
    ids: list[int]
    reason: str


@torch.inference_mode()
def beam_search(model, prompt: list[int], cfg: DecodingConfig, stop_ids=()) -> BeamResult:
    # Beam search is deterministic: temperature/top-k/top-p/min-p do not apply (penalties do).
    cfg = dataclasses.replace(cfg, do_sample=False)
    context = model.config.max_position_embeddings
    check_prompts([prompt], context)
    K, L = cfg.num_beams, len(prompt)
    budget = min(cfg.max_new_tokens, context - L)
    stops = set(stop_set(cfg, stop_ids))
    cache = model.new_cache(1, L + budget)
    logits = _last(model, torch.tensor([prompt]), cache)
    cache.reorder(torch.zeros(K, dtype=torch.long))  # every beam starts from the one prompt
    logits = logits.expand(K, -1)
    scores = torch.full((K,), float("-inf"))
    scores[0] = 0.0  # only the first copy may expand at step 0, or beams would be duplicates
    beams: list[list[int]] = [[] for _ in range(K)]
    finished: list[_Hypothesis] = []
    for step in range(budget):
        logp = _beam_logprobs(logits, cfg, prompt, beams, step, stops)  # (K, V)
        total = (scores[:, None] + logp).flatten()
        top_scores, top_idx = total.topk(2 * K)
        V = logp.shape[1]
        survivors = []
        for rank, (s, idx) in enumerate(zip(top_scores.tolist(), top_idx.tolist(), strict=True)):
            beam, tok = divmod(idx, V)
            if tok in stops:
                if rank < K:  # only a stop among the best K counts, as in Hugging Face
                    n = len(beams[beam]) + 1
                    finished.append(_Hypothesis(s / n**cfg.length_penalty, beams[beam], "stop"))
                continue
            survivors.append((beam, tok, s))
            if len(survivors) == K:
                break
        if _done(finished, survivors, cfg, step + 1):
            survivors = []  # settled: running beams can no longer win
            break
        if step + 1 == budget:
            break
        rows = torch.tensor([b for b, _, _ in survivors])
        cache.reorder(rows)
        beams = [beams[b] + [t] for b, t, _ in survivors]
        scores = torch.tensor([s for _, _, s in survivors])
        positions = torch.full((K, 1), L + step)
        logits = _last(model, torch.tensor([[t] for _, t, _ in survivors]), cache, positions)
    for b, t, s in survivors:  # out of budget: running beams compete as they are
        ids = beams[b] + [t]
        finished.append(_Hypothesis(s / len(ids) ** cfg.length_penalty, ids, "length"))
    best = max(finished, key=lambda h: h.score)
    return BeamResult(best.ids, best.score, best.reason)


def _last(model, ids, cache, positions=None) -> torch.Tensor:
    return model.head(model.hidden(ids, cache=cache, positions=positions)[:, -1]).float()


def _beam_logprobs(logits, cfg, prompt, beams, step, stops) -> torch.Tensor:
    """(K, V) log-probabilities of each beam's next token after penalties and bans."""
    K, V = logits.shape
    seen = np.zeros((K, V), dtype=bool)
    counts = np.zeros((K, V), dtype=np.int64)
    sequences = [prompt + b for b in beams]
    for k, b in enumerate(beams):
        seen[k, prompt + b] = True
        np.add.at(counts[k], b, 1)  # repeats add up
    processed = process_logits(
        logits.numpy(),
        cfg,
        seen_mask=seen,
        counts=counts,
        sequences=sequences,
        n_generated=step,
        eos_ids=sorted(stops),
    )
    return torch.from_numpy(processed).log_softmax(dim=-1)


def _done(finished, survivors, cfg: DecodingConfig, length: int) -> bool:
    if len(finished) < cfg.num_beams:
        return False
    if cfg.early_stopping:
        return True
    # No running beam can still beat the worst kept hypothesis (Hugging Face's heuristic).
    kept = sorted(h.score for h in finished)[-cfg.num_beams :]
    best_running = max(s for _, _, s in survivors) / (length + 1) ** cfg.length_penalty
    return kept[0] >= best_running
