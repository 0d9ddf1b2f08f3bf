"""Samplers and penalties: pure functions on a batch of logits (B, V).

Each takes logits and returns new logits (or ids); none keeps state or touches the
model. `process_logits` applies them in Hugging Face's order: repetition penalty,
frequency/presence penalties, n-gram bans, stop-token suppression, then - only when
sampling - temperature, top-k, top-p, min-p. Filters never remove every token: the
most likely one always survives.
"""

from __future__ import annotations

import torch

from giraffe.generate.params import DecodingConfig

NEG_INF = float("-inf")
NUCLEUS_CANDIDATES = (64, 1024)  # shortlists tried before a full sort


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: float
) -> torch.Tensor:
    """CTRL (Keskar et al. 2019): divide positive, multiply negative logits of seen tokens."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    # a penalty that is 0 in float32 would make -inf (a grammar's mask) NaN and large
    # logits inf: a masked token stays masked, every other one stays finite
    big = torch.finfo(logits.dtype).max
    penalised = torch.where(torch.isneginf(logits), logits, penalised.clamp(-big, big))
    return torch.where(seen, penalised, logits)


def apply_frequency_presence(
    logits: torch.Tensor, counts: torch.Tensor, frequency: float, presence: float
) -> torch.Tensor:
    """OpenAI's penalties: logits - frequency * count - presence * (count > 0)."""
    if frequency == 0 and presence == 0:
        return logits
    return logits - frequency * counts.to(logits.dtype) - presence * (counts > 0).to(logits.dtype)


def ban_repeated_ngrams(logits: torch.Tensor, sequences: list[list[int]], n: int) -> torch.Tensor:
    """-inf on every token that would complete an n-gram already present in its row."""
    if n <= 0:
        return logits
    out = logits.clone()
    for row, seq in enumerate(sequences):
        if len(seq) < n:
            continue
        prefix = tuple(seq[len(seq) - n + 1 :])
        banned = [
            seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i : i + n - 1]) == prefix
        ]
        if banned:
            out[row, banned] = NEG_INF
    return out


def suppress(logits: torch.Tensor, token_ids) -> torch.Tensor:
    token_ids = list(token_ids)
    if not token_ids:
        return logits
    out = logits.clone()
    out[:, token_ids] = NEG_INF
    return out


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits if temperature == 1.0 else logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2019): the smallest set whose probability >= p."""
    if p >= 1.0:
        return logits
    probs = logits.softmax(dim=-1)
    # The nucleus is almost always a few dozen tokens: look among the top 64, then 1024,
    # and sort the whole vocabulary (~3 ms a row for 49k) only when neither is enough.
    V = logits.shape[-1]
    for k in NUCLEUS_CANDIDATES:
        k = min(k, V)
        top_probs, order = probs.topk(k, dim=-1)  # (B, k), descending
        if k == V or bool((top_probs.sum(dim=-1) >= p).all()):
            before = top_probs.cumsum(dim=-1) - top_probs  # probability of the tokens ahead
            keep = before < p
            keep[:, 0] = True  # the first always stays
            kept = torch.where(keep, logits.gather(1, order), NEG_INF)
            return torch.full_like(logits, NEG_INF).scatter_(1, order, kept)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    sorted_probs = sorted_logits.softmax(dim=-1)
    # drop a token when the tokens before it already reach p; the first always stays
    drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= p
    drop_sorted[:, 0] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


def min_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Drop tokens whose probability is below p x the most likely token's (Nguyen et al. 2024)."""
    if p <= 0:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, NEG_INF)


def keeps_logits(cfg: DecodingConfig, n_generated: int) -> bool:
    """Whether `process_logits` hands the logits back unchanged (greedy, no penalty, no
    n-gram ban, no stop token held back by min_new_tokens): then a row's token is their
    first maximum, which the compiled step may already have found."""
    changes = cfg.sampling or cfg.repetition_penalty != 1.0
    changes = changes or bool(cfg.frequency_penalty or cfg.presence_penalty)
    changes = changes or cfg.no_repeat_ngram_size > 0 or n_generated < cfg.min_new_tokens
    return not changes


def process_logits(
    logits: torch.Tensor,
    cfg: DecodingConfig,
    *,
    seen_mask: torch.Tensor | None,  # (B, V); may be None when repetition_penalty == 1
    counts: torch.Tensor | None,  # (B, V); may be None without frequency/presence penalties
    sequences: list[list[int]],
    n_generated: int,
    eos_ids,
) -> torch.Tensor:
    if keeps_logits(cfg, n_generated):
        return logits
    logits = apply_repetition_penalty(logits, seen_mask, cfg.repetition_penalty)
    logits = apply_frequency_presence(logits, counts, cfg.frequency_penalty, cfg.presence_penalty)
    logits = ban_repeated_ngrams(logits, sequences, cfg.no_repeat_ngram_size)
    if n_generated < cfg.min_new_tokens:
        logits = suppress(logits, eos_ids)
    if not cfg.sampling:
        return logits
    logits = apply_temperature(logits, cfg.temperature)
    logits = top_k_filter(logits, cfg.top_k)
    logits = top_p_filter(logits, cfg.top_p)
    return min_p_filter(logits, cfg.min_p)


def choose(
    logits: torch.Tensor, cfg: DecodingConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """Pick one id per row: argmax when not sampling, else a draw from softmax(logits)."""
    return choose_rows(logits, cfg, [generator] * logits.shape[0])


def choose_rows(
    logits: torch.Tensor, cfg: DecodingConfig, generators: list[torch.Generator | None]
) -> torch.Tensor:
    """Like `choose`, with one random stream per row (row i draws from generators[i]).

    The draw inverts the cumulative distribution with one uniform number per row: the
    same law as torch.multinomial, at a twentieth of its cost over a 49k vocabulary.
    """
    if not cfg.sampling:
        # numpy's argmax (first maximum, as torch's): ~30 us on a 49k-token row just after
        # the weights streamed past, against ~80 us for torch's, which splits it over threads
        return torch.as_tensor(logits.detach().float().numpy().argmax(axis=-1))
    cdf = logits.float().softmax(dim=-1).cumsum(dim=-1)  # (B, V)
    u = torch.cat([torch.rand(1, generator=g) for g in generators])[:, None] * cdf[:, -1:]
    # the first token whose cumulative probability exceeds u; zero-probability tokens
    # never qualify, since their cumulative value equals their predecessor's
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)


def logprobs_of(
    raw_logits: torch.Tensor, chosen: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's own distribution (before penalties and filters), as OpenAI reports it.

    Returns chosen log-probabilities (B,), top ids (B, k) and their log-probabilities (B, k).
    """
    logp = raw_logits.float().log_softmax(dim=-1)
    chosen_lp = logp.gather(1, chosen[:, None]).squeeze(1)
    top = logp.topk(k, dim=-1) if k > 0 else None
    if top is None:
        empty = torch.empty(logp.shape[0], 0)
        return chosen_lp, empty.long(), empty
    return chosen_lp, top.indices, top.values
