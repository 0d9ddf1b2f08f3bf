"""Samplers and penalties: pure functions on a batch of logits, numpy float32 (B, V).

Each takes logits and returns new logits (or ids); none keeps state, touches the model
or imports torch (a model hands its logits over as numpy, `Decoder.next_token_logits`).
`process_logits` applies them in Hugging Face's order: repetition penalty,
frequency/presence penalties, n-gram bans, stop-token suppression, then - only when
sampling - temperature, top-k, top-p, min-p. Filters never remove every token: the
most likely one always survives. A draw takes one uniform number per row from that
row's own `numpy.random.Generator`, which the caller keeps (`sequence.SequenceState`).

Where a ranking is needed (top-k, top-p, the top log-probabilities) the vocabulary is
never sorted or partitioned whole: a bound from block maxima (`_bounds`) leaves a short
list to sort. Ties rank the lower id first.
"""

from __future__ import annotations

import numpy as np

from giraffe.generate.params import DecodingConfig, GenerationError

NEG_INF = float("-inf")
NUCLEUS_CANDIDATES = (64, 1024)  # shortlists tried before a full sort
DRAW_BLOCK = 256  # tokens per block of the two-level inverse CDF (`_draw`)


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL (Keskar et al. 2019): divide positive, multiply negative logits of seen tokens."""
    if penalty == 1.0:
        return logits
    p = np.float32(penalty)  # the logits' precision: 5e-324 is 0 here, see below
    rows, cols = np.nonzero(seen)  # the prompt's and answer's tokens: few of the vocabulary
    old = logits[rows, cols]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        new = np.where(old > 0, old / p, old * p)
    # a penalty that is 0 in float32 would make -inf (a grammar's mask) NaN and large
    # logits inf: a masked token stays masked, every other one stays finite
    big = np.finfo(np.float32).max
    out = logits.copy()
    out[rows, cols] = np.where(np.isneginf(old), old, np.clip(new, -big, big))
    return out


def apply_frequency_presence(
    logits: np.ndarray, counts: np.ndarray, frequency: float, presence: float
) -> np.ndarray:
    """OpenAI's penalties: logits - frequency * count - presence * (count > 0)."""
    if frequency == 0 and presence == 0:
        return logits
    rows, cols = np.nonzero(counts)  # the generated tokens: an unseen token loses nothing
    n = counts[rows, cols].astype(np.float32)
    out = logits.copy()
    out[rows, cols] = out[rows, cols] - np.float32(frequency) * n - np.float32(presence)
    return out


def ban_repeated_ngrams(logits: np.ndarray, sequences: list[list[int]], n: int) -> np.ndarray:
    """-inf on every token that would complete an n-gram already present in its row."""
    if n <= 0:
        return logits
    out = logits.copy()
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


def suppress(logits: np.ndarray, token_ids) -> np.ndarray:
    token_ids = list(token_ids)
    if not token_ids:
        return logits
    out = logits.copy()
    out[:, token_ids] = NEG_INF
    return out


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    if temperature == 1.0:
        return logits
    with np.errstate(over="ignore"):
        t = np.float32(temperature)  # inf past float32's range
    try:
        with np.errstate(over="raise", divide="raise", invalid="raise"):
            return logits / t
    except FloatingPointError:  # x / t overflows, or t is 0 or inf in float32
        return _divided_safely(logits, t)


def _divided_safely(logits: np.ndarray, t: np.float32) -> np.ndarray:
    """logits / t towards its limits: shifted by each row's maximum first (softmax does
    not see a shift), the maximum stays 0, the rest fall to -inf as t -> 0 and rise to
    0 as t -> inf, and a -inf (masked) logit stays -inf. Unshifted, every large logit
    overflowed to +inf alike and a masked one became NaN (-inf / inf)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    with np.errstate(all="ignore"):
        out = shifted / t
    out[shifted == 0] = 0  # (0 / 0 when t is 0)
    out[np.isneginf(logits)] = NEG_INF
    return out


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep each row's k largest logits (and any equal to the k-th); k <= 0: all."""
    return _rowwise(logits, _top_k_row, k)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus sampling (Holtzman et al. 2019): the smallest set whose probability >= p."""
    return _rowwise(logits, _top_p_row, p)


def min_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Drop tokens whose probability is below p x the most likely token's (Nguyen et al. 2024)."""
    return _rowwise(logits, _min_p_row, p)


def _rowwise(logits: np.ndarray, filter_row, arg) -> np.ndarray:
    """A new array: a copy of logits with filter_row(row, arg) applied to each row."""
    out = logits.copy()
    for row in out:
        filter_row(row, arg)
    return out


# The filters' work on one row (V,), in place, nothing when their setting is neutral:
# `process_logits` runs them all on one new array row by row, so that each row stays in
# the cache and no filter allocates a batch (a fresh (B, V) array is fresh pages, which
# cost more than the filters at 8 rows of 152k).


def _top_k_row(row: np.ndarray, k: int) -> None:
    if not 0 < k < row.shape[0]:
        return
    ids = _ranked(row, _bounds(row[None], k)[0])
    if len(ids) >= k:  # else fewer than k are finite: they all stay
        row[row < row[ids[k - 1]]] = NEG_INF


def _top_p_row(row: np.ndarray, p: float) -> None:
    if p >= 1.0:
        return
    keep = _nucleus(row, p)
    kept = row[keep]
    row.fill(NEG_INF)
    row[keep] = kept


def _min_p_row(row: np.ndarray, p: float) -> None:
    if p <= 0:
        return
    probs = _softmax(row)
    row[probs < np.float32(p) * probs.max()] = NEG_INF


def _nucleus(row: np.ndarray, p: float) -> np.ndarray:
    """The ids one row keeps: a token stays while the tokens ranked ahead of it hold less
    than p; the first always stays. Compared in float32, the running sums accumulated in
    float64 then rounded, as torch's cumsum does (the rule of Hugging Face's warper).

    The nucleus is almost always a few dozen tokens: look among the top 64, then 1024,
    and rank the whole vocabulary (milliseconds a row) only when neither is enough. A
    shortlist that is a prefix of the ranking and reaches p holds the whole nucleus: the
    first token after it has at least p ahead of it."""
    p = np.float32(p)
    weights = _exp_shifted(row)  # the softmax's numerators
    total = weights.sum()
    for k in (*NUCLEUS_CANDIDATES, row.shape[0]):
        bound = _bounds(row[None], k)[0]
        ids = _ranked(row, bound)  # every token with probability when bound is -inf
        top = weights[ids] / total  # their probabilities, as the whole softmax has them
        upto = np.cumsum(top, dtype=np.float64).astype(np.float32)  # this token included
        if bound == NEG_INF or upto[-1] >= p:
            break
    keep = upto - top < p  # (the tokens ahead of each)
    keep[:1] = True  # (a row with no finite logit has no first)
    return ids[keep]


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in the logits' float32, in one new array."""
    out = _exp_shifted(logits)
    out /= out.sum(axis=-1, keepdims=True)
    return out


def _bounds(logits: np.ndarray, k: int) -> np.ndarray:
    """(B,) per row a value that at least k of its entries reach, a little below its k-th
    largest; -inf when the row is too short to say (4k entries or fewer).

    The k-th largest of the maxima of 4k interleaved blocks (block j holds entries j,
    j + 4k, j + 8k, ...): each maximum is an entry of its own, so k entries reach it, and
    about 1.2 k do when the large entries are spread out. Interleaved, not contiguous:
    a vocabulary's frequent tokens sit at low ids, and large logits crowded into a few
    contiguous blocks would let the bound fall far. Two cheap passes (the maxima here,
    `_ranked`'s comparison) instead of a partition of the whole row, which costs numpy
    several times torch's topk."""
    B, V = logits.shape
    n = 4 * k
    if n >= V:
        return np.full(B, NEG_INF, dtype=logits.dtype)
    maxima = logits[:, : V // n * n].reshape(B, -1, n).max(axis=1)  # (B, n); the tail
    return np.partition(maxima, n - k, axis=1)[:, n - k]  # (< n entries) is in no block


def _ranked(row: np.ndarray, bound) -> np.ndarray:
    """The ids of the row's entries >= bound (every finite one when bound is -inf), from
    the largest down; ties keep the lower id first (a stable sort of ascending ids)."""
    ids = np.flatnonzero(row >= bound if bound > NEG_INF else row > NEG_INF)
    return ids[np.argsort(-row[ids], kind="stable")]


def keeps_logits(cfg: DecodingConfig, n_generated: int) -> bool:
    """Whether `process_logits` hands the logits back unchanged (greedy, no penalty, no
    n-gram ban, no stop token held back by min_new_tokens): then a row's token is their
    first maximum, which the compiled step may already have found."""
    changes = cfg.sampling or cfg.repetition_penalty != 1.0
    changes = changes or bool(cfg.frequency_penalty or cfg.presence_penalty)
    changes = changes or cfg.no_repeat_ngram_size > 0 or n_generated < cfg.min_new_tokens
    return not changes


def process_logits(
    logits: np.ndarray,  # (B, V) float32
    cfg: DecodingConfig,
    *,
    seen_mask: np.ndarray | None,  # (B, V) bool; may be None when repetition_penalty == 1
    counts: np.ndarray | None,  # (B, V) int; may be None without frequency/presence penalties
    sequences: list[list[int]],
    n_generated: int,
    eos_ids,
) -> np.ndarray:
    if keeps_logits(cfg, n_generated):
        return logits
    logits = apply_repetition_penalty(logits, seen_mask, cfg.repetition_penalty)
    logits = apply_frequency_presence(logits, counts, cfg.frequency_penalty, cfg.presence_penalty)
    logits = ban_repeated_ngrams(logits, sequences, cfg.no_repeat_ngram_size)
    if n_generated < cfg.min_new_tokens:
        logits = suppress(logits, eos_ids)
    if not cfg.sampling:
        return logits
    out = apply_temperature(logits, cfg.temperature)
    out = out.copy() if out is logits else out  # (B, V), new: the filters write into it
    for row in out:  # top_k_filter, top_p_filter, min_p_filter, one row at a time
        _top_k_row(row, cfg.top_k)
        _top_p_row(row, cfg.top_p)
        _min_p_row(row, cfg.min_p)
    return out


def choose(
    logits: np.ndarray, cfg: DecodingConfig, generator: np.random.Generator | None
) -> np.ndarray:
    """Pick one id per row: argmax when not sampling, else a draw from softmax(logits)."""
    return choose_rows(logits, cfg, [generator] * logits.shape[0])


def choose_rows(
    logits: np.ndarray, cfg: DecodingConfig, generators: list[np.random.Generator | None]
) -> np.ndarray:
    """Like `choose`, with one random stream per row (row i draws from generators[i]):
    (B,) int64 ids. Greedy takes each row's first maximum; sampling inverts the row's
    cumulative distribution with one uniform number from its generator."""
    if not cfg.sampling:
        return logits.argmax(axis=-1)
    draws = [_draw_row(row, g.random()) for row, g in zip(logits, generators, strict=True)]
    return np.array(draws, dtype=np.int64)


def _draw_row(row: np.ndarray, r: float) -> int:
    """One token from softmax(row), r uniform in [0, 1). Among the tokens the filters
    left (a -inf one has no probability), usually a few dozen: no full-row exp then."""
    finite = row > NEG_INF
    if finite.all():  # `_draw` takes the softmax's numerators: it divides itself
        return _draw(_exp_shifted(row), r)
    ids = np.flatnonzero(finite)
    if ids.size == 0:
        raise GenerationError(
            "no token is left to sample: every one is excluded (a logit_bias of -100 on "
            "every token, or a grammar that allows none)"
        )
    return int(ids[_draw(_exp_shifted(row[ids]), r)])


def _exp_shifted(x: np.ndarray) -> np.ndarray:
    """exp(x - max) along the last axis, in one new array: each full-row temporary is
    fresh memory, which a busy machine makes slow to touch (see `_draw`)."""
    out = x - x.max(axis=-1, keepdims=True)
    return np.exp(out, out=out)


def _draw(weights: np.ndarray, r: float) -> int:
    """The first token whose cumulative weight exceeds r x the total, r uniform in [0, 1):
    token i with probability weights[i] / total; a token of weight 0 never.

    Two levels: the block of DRAW_BLOCK tokens where the running sum passes r x total,
    then the token inside it. numpy's cumulative sum does not vectorise (over a whole
    row it costs several block sums). The blocks are summed in float32 - a float64
    reduceat first casts the whole row into fresh memory, which cost up to ten times the
    sum on a busy machine - the running sums and the block's inside in float64."""
    starts = np.arange(0, weights.shape[0], DRAW_BLOCK)
    ends = np.cumsum(np.add.reduceat(weights, starts), dtype=np.float64)  # (blocks,)
    total = ends[-1]
    u = min(r * total, np.nextafter(total, 0.0))  # below the total, also after rounding
    block = int(np.searchsorted(ends, u, side="right"))  # its end passes u: it has weight
    start = block * DRAW_BLOCK
    inside = weights[start : start + DRAW_BLOCK]
    i = int(np.searchsorted(np.cumsum(inside, dtype=np.float64), u - _before(ends, block), "right"))
    if i == inside.shape[0]:  # the two levels' sums rounded apart: the block's last weight
        i = int(np.flatnonzero(inside)[-1])
    return start + i


def _before(ends: np.ndarray, block: int) -> float:
    return float(ends[block - 1]) if block else 0.0


def logprobs_of(
    raw_logits: np.ndarray, chosen: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's own distribution (before penalties and filters), as OpenAI reports it.

    Returns chosen log-probabilities (B,), top ids (B, k) int64 and their
    log-probabilities (B, k), each row from the most likely down (ties: lower id first);
    k is capped at the vocabulary. Log-softmax in float32: x - max - log(sum(exp(x - max))).
    """
    B, V = raw_logits.shape
    shift = raw_logits.max(axis=-1)  # (B,)
    log_total = np.log(_exp_shifted(raw_logits).sum(axis=-1))  # (B,)
    chosen_lp = raw_logits[np.arange(B), chosen] - shift - log_total
    top_ids = _top_ids(raw_logits, min(k, V))  # (B, k)
    top_lps = np.take_along_axis(raw_logits, top_ids, axis=1) - shift[:, None] - log_total[:, None]
    return chosen_lp, top_ids, top_lps


def _top_ids(logits: np.ndarray, k: int) -> np.ndarray:
    """(B, k) int64: each row's k largest entries' ids, from the largest down."""
    out = np.empty((logits.shape[0], max(k, 0)), dtype=np.int64)
    if k <= 0:
        return out
    for i, (row, bound) in enumerate(zip(logits, _bounds(logits, k), strict=True)):
        ids = _ranked(row, bound)[:k]
        # fewer than k finite entries (a -inf in raw logits): -inf ones complete the list
        out[i] = ids if len(ids) == k else np.argsort(-row, kind="stable")[:k]
    return out
