"""Each sampler and penalty on hand-made logits (numpy float32), and against transformers'
logits processors (torch, on the same numbers)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from giraffe.generate.params import DecodingConfig, DecodingError
from giraffe.generate.samplers import (
    NEG_INF,
    apply_frequency_presence,
    apply_repetition_penalty,
    apply_temperature,
    ban_repeated_ngrams,
    choose,
    logprobs_of,
    min_p_filter,
    process_logits,
    suppress,
    top_k_filter,
    top_p_filter,
)

INF = float("-inf")
NO_HISTORY = dict(seen_mask=None, counts=None, sequences=[], n_generated=0, eos_ids=[])


def f32(rows) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def kept(logits):
    return np.flatnonzero(logits[0] != INF).tolist()


def test_top_k_keeps_the_k_largest():
    logits = f32([[1.0, 5.0, 3.0, 4.0, 2.0]])
    assert kept(top_k_filter(logits, 2)) == [1, 3]
    assert np.array_equal(top_k_filter(logits, 0), logits)


def test_top_p_keeps_the_smallest_nucleus():
    logits = np.log(f32([[0.5, 0.3, 0.2]]))
    assert kept(top_p_filter(logits, 0.75)) == [0, 1]
    assert kept(top_p_filter(logits, 0.5)) == [0]
    assert kept(top_p_filter(logits, 0.01)) == [0]  # never empty
    assert kept(top_p_filter(logits, 1.0)) == [0, 1, 2]


def test_min_p_scales_with_the_top_probability():
    logits = np.log(f32([[0.6, 0.25, 0.1, 0.05]]))
    assert kept(min_p_filter(logits, 0.2)) == [0, 1]  # threshold 0.12
    assert kept(min_p_filter(logits, 0.1)) == [0, 1, 2]  # threshold 0.06


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = f32([[2.0, -2.0, 2.0, -2.0]])
    seen = np.array([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 2.0, -2.0]]


def test_frequency_and_presence_arithmetic():
    logits = np.zeros((1, 3), dtype=np.float32)
    counts = np.array([[0, 1, 3]])
    out = apply_frequency_presence(logits, counts, frequency=0.5, presence=1.0)
    assert out.tolist() == [[0.0, -1.5, -2.5]]


def test_no_repeat_ngram_bans_exactly_the_completing_token():
    logits = np.zeros((1, 10), dtype=np.float32)
    out = ban_repeated_ngrams(logits, [[1, 2, 3, 1, 2]], 3)  # "1 2 3" seen; now "1 2" again
    assert np.flatnonzero(out[0] == INF).tolist() == [3]
    assert (ban_repeated_ngrams(logits, [[1, 2, 3, 1, 4]], 3) == 0).all()


def test_suppress_and_temperature():
    logits = f32([[1.0, 2.0, 3.0]])
    assert kept(suppress(logits, [2])) == [0, 1]
    assert apply_temperature(logits, 0.5).tolist() == [[2.0, 4.0, 6.0]]


def test_greedy_takes_the_argmax_and_ignores_filters():
    logits = f32([[1.0, 9.0, 3.0], [7.0, 0.0, 1.0]])
    cfg = DecodingConfig(temperature=0.0, top_k=1)
    assert choose(logits, cfg, None).tolist() == [1, 0]


def test_seeded_sampling_is_reproducible():
    logits = np.random.default_rng(0).standard_normal((1, 1000)).astype(np.float32)
    cfg = DecodingConfig(temperature=1.0)

    def draws(seed):
        g = np.random.default_rng(seed)
        return [int(choose(logits, cfg, g)[0]) for _ in range(20)]

    assert draws(1) == draws(1) and draws(1) != draws(2)


def test_sampled_frequencies_follow_the_tempered_softmax():
    logits = f32([[1.0, 0.0, -1.0]])
    cfg = DecodingConfig(temperature=0.5)
    processed = apply_temperature(logits, 0.5)
    g = np.random.default_rng(0)
    n = 20000
    draws = choose(np.repeat(processed, n, axis=0), cfg, g)  # (n,): one draw per row
    expected = np.exp(processed[0]) / np.exp(processed[0]).sum()
    observed = np.bincount(draws, minlength=3) / n
    assert np.abs(observed - expected).max() < 0.01


@pytest.mark.parametrize("V", [3, 1000, 151936])  # one block of the draw; several; Qwen's
def test_draws_follow_the_softmax_across_blocks(V):
    """The two-level draw (a block, then a token in it) has the law of a plain inverse
    CDF: mass planted at both ends and the middle, the rest spread thin over each half."""
    from giraffe.generate.samplers import _draw

    logits = np.full(V, -10.0)
    hot = sorted({0, V // 2, V - 1})
    logits[hot] = [2.0, 1.0, 0.0][: len(hot)]
    weights = np.exp(logits)
    rest = [i for i in range(V) if i not in hot]
    halves = [[i for i in rest if i < V // 2], [i for i in rest if i >= V // 2]]
    groups = [[i] for i in hot] + [h for h in halves if h]
    g, n = np.random.default_rng(5), 10000
    draws = np.array([_draw(weights.astype(np.float32), g.random()) for _ in range(n)])
    counts = np.bincount(draws, minlength=V)
    for group in groups:
        expected = weights[group].sum() / weights.sum()
        assert abs(counts[group].sum() / n - expected) < 0.02, (group[:3], expected)


def test_process_logits_only_filters_when_sampling():
    logits = f32([[1.0, 2.0, 3.0]])
    state = dict(
        seen_mask=np.zeros((1, 3), dtype=bool),
        counts=np.zeros((1, 3), dtype=np.int64),
        sequences=[[0]],
        n_generated=0,
        eos_ids=[2],
    )
    greedy = process_logits(logits, DecodingConfig(temperature=0.0, top_k=1), **state)
    assert np.array_equal(greedy, logits)
    sampled = process_logits(logits, DecodingConfig(temperature=1.0, top_k=1), **state)
    assert kept(sampled) == [2]
    delayed = process_logits(logits, DecodingConfig(temperature=0.0, min_new_tokens=1), **state)
    assert kept(delayed) == [0, 1]


def test_logprobs_are_the_models_distribution():
    logits = f32([[0.0, math.log(3.0)]])
    lp, ids, top = logprobs_of(logits, np.array([1]), 2)
    assert lp.item() == pytest.approx(math.log(0.75))
    assert ids.tolist() == [[1, 0]] and top[0, 1].item() == pytest.approx(math.log(0.25))


def test_logprobs_are_a_float32_log_softmax_with_ties_ranked_by_lower_id():
    """Within 1e-6 of a float64 log-softmax (torch's float32 one is off by up to 1e-5
    here: numpy's pairwise sum is the more exact); the top list from the largest down,
    equal logits ranked by lower id first, on a vocabulary large enough for the shortlist."""
    logits = np.random.default_rng(4).standard_normal((3, 49152)).astype(np.float32) * 3
    logits[1, [7, 300, 40000]] = 20.0  # a three-way tie at the top of row 1
    chosen = np.array([5, 300, 49151])
    lp, ids, top = logprobs_of(logits, chosen, 5)
    x = logits.astype(np.float64)
    reference = torch.from_numpy(x).log_softmax(-1).numpy()
    assert lp.dtype == top.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_allclose(lp, reference[[0, 1, 2], chosen], rtol=0, atol=1e-6)
    order = np.argsort(-logits, axis=-1, kind="stable")[:, :5]
    assert np.array_equal(ids, order) and ids[1, :3].tolist() == [7, 300, 40000]
    np.testing.assert_allclose(top, np.take_along_axis(reference, order, 1), rtol=0, atol=1e-6)
    assert logprobs_of(logits, chosen, 0)[1].shape == (3, 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 1.0}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"frequency_penalty": 3.0}, "frequency_penalty"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 5, "min_new_tokens": 6}, "min_new_tokens"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"tempreature": 0.5}, "tempreature"),
    ],
)
def test_invalid_values_are_named(kwargs, message):
    with pytest.raises(DecodingError, match=message):
        DecodingConfig.from_kwargs(**kwargs)


def test_stop_string_becomes_a_tuple():
    assert DecodingConfig.from_kwargs(stop="\n").stop == ("\n",)
    assert DecodingConfig.from_kwargs(stop=["a", "b"]).stop == ("a", "b")


# ---- transformers' logits processors as the oracle -----------------------------------------


@pytest.fixture
def random_logits():
    torch.manual_seed(3)
    return torch.randn(4, 50) * 3


def test_sampling_never_picks_a_filtered_token():
    logits = np.full((2000, 8), NEG_INF, dtype=np.float32)
    logits[:, 3], logits[:, 6] = 0.0, 1.0  # only tokens 3 and 6 are possible
    draws = choose(logits, DecodingConfig(temperature=1.0), np.random.default_rng(1))
    assert set(draws.tolist()) == {3, 6}


def test_a_draw_at_the_top_of_the_unit_interval_takes_no_masked_token():
    """u just below 1 (numpy's largest uniform): the last token with weight, not the
    masked tokens after it, even when u x total rounds up to the total."""
    from giraffe.generate.samplers import _draw

    for V in (8, 1000):
        weights = np.zeros(V, dtype=np.float32)
        weights[[1, V // 2]] = [0.3, 0.7]
        assert _draw(weights, 1 - 2**-53) == V // 2
        assert _draw(weights, 0.0) == 1


def nucleus_by_full_sort(logits: np.ndarray, p: float) -> np.ndarray:
    """The plain reference: rank the whole vocabulary, drop a token once those before it
    reach p. The same float32 softmax as the samplers' (torch's own sums to 1 +- 2.5e-6
    over 49k tokens, which moves a p = 0.999 boundary by ~10 tokens of ~1e-7 each)."""
    out = logits.copy()
    for row in out:
        order = np.argsort(-row, kind="stable")
        probs = np.exp(row - row.max())
        probs = (probs / probs.sum())[order]
        upto = np.cumsum(probs, dtype=np.float64).astype(np.float32)
        drop = upto - probs >= np.float32(p)
        drop[0] = False
        row[order[drop]] = NEG_INF
    return out


@pytest.mark.parametrize("p", [0.5, 0.9, 0.999])
@pytest.mark.parametrize("scale", [0.5, 3.0, 8.0])  # flat (full sort needed) to peaked
@pytest.mark.parametrize("V", [49152, 151936])
def test_top_p_equals_the_full_sort_on_a_real_vocabulary(p, scale, V):
    logits = np.random.default_rng(V + int(scale * 10)).standard_normal((2, V)).astype(np.float32)
    logits *= scale
    assert np.array_equal(top_p_filter(logits, p), nucleus_by_full_sort(logits, p))


@pytest.mark.parametrize("k", [1, 50, 64, 1000])
# the largest anywhere, at the first ids, at the last ids (past every block: the tail)
@pytest.mark.parametrize("order", ["random", "descending", "ascending"])
def test_top_k_equals_torchs_topk_on_a_real_vocabulary(k, order):
    logits = torch.randn(2, 151936) * 3
    if order != "random":
        logits = logits.sort(dim=-1, descending=order == "descending").values
    kth = logits.topk(k, dim=-1).values[:, -1:]
    expected = logits.masked_fill(logits < kth, NEG_INF)
    assert np.array_equal(top_k_filter(logits.numpy(), k), expected.numpy())


@pytest.mark.parametrize("layout", ["shuffled", "largest at low ids"])
def test_the_shortlist_stays_short_wherever_the_largest_logits_sit(layout):
    """The bound from interleaved block maxima lists ~k entries for top-k, also when the
    largest logits crowd the low ids (a vocabulary's frequent tokens do): contiguous
    blocks listed ~16k of 152k there, and ranking them cost more than torch's topk."""
    from giraffe.generate.samplers import _bounds, _ranked

    rng = np.random.default_rng(0)
    V = 151936
    ranks = np.arange(1, V + 1) if layout != "shuffled" else rng.permutation(V) + 1
    logits = (-1.2 * np.log(ranks) + 0.3 * rng.standard_normal(V)).astype(np.float32)[None]
    for k in (20, 64, 1024):
        listed = _ranked(logits[0], _bounds(logits, k)[0])
        assert k <= len(listed) <= 1.5 * k
        assert np.array_equal(listed[:k], np.argsort(-logits[0], kind="stable")[:k])


def test_filters_after_a_mask_keep_what_the_mask_left():
    """Rows that are -inf but for a few tokens (a grammar's mask, or top-k before top-p):
    top-k keeps every allowed token when fewer than k are, top-p finds the nucleus among
    them, without ranking the -inf ones."""
    logits = np.full((1, 151936), NEG_INF, dtype=np.float32)
    logits[0, [10, 20, 30_000, 150_000]] = [1.0, 3.0, 2.0, 0.0]
    assert kept(top_k_filter(logits, 50)) == [10, 20, 30_000, 150_000]
    assert kept(top_k_filter(logits, 2)) == [20, 30_000]
    assert kept(top_p_filter(logits, 0.8)) == [20, 30_000]


def test_top_k_top_p_min_p_match_transformers(random_logits):
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    ids = torch.zeros(4, 1, dtype=torch.long)
    logits = random_logits.numpy()
    for p in (0.1, 0.5, 0.9):
        expected = TopPLogitsWarper(p)(ids, random_logits.clone()).numpy()
        assert np.array_equal(top_p_filter(logits, p), expected)
        expected = MinPLogitsWarper(p)(ids, random_logits.clone()).numpy()
        assert np.array_equal(min_p_filter(logits, p), expected)
    for k in (1, 5, 20):
        expected = TopKLogitsWarper(k)(ids, random_logits.clone()).numpy()
        assert np.array_equal(top_k_filter(logits, k), expected)


def test_repetition_and_ngram_match_transformers(random_logits):
    from transformers.generation.logits_process import (
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
    )

    logits = random_logits.numpy()
    ids = torch.randint(0, 50, (4, 30))
    seen = torch.zeros(4, 50, dtype=torch.bool).scatter(1, ids, True).numpy()
    expected = RepetitionPenaltyLogitsProcessor(1.3)(ids, random_logits.clone()).numpy()
    np.testing.assert_allclose(apply_repetition_penalty(logits, seen, 1.3), expected, rtol=1e-6)
    ids = torch.randint(0, 4, (4, 30))  # a small alphabet so that n-grams repeat
    expected = NoRepeatNGramLogitsProcessor(2)(ids, random_logits.clone()).numpy()
    assert np.array_equal(ban_repeated_ngrams(logits, ids.tolist(), 2), expected)


def test_a_penalty_that_underflows_keeps_masked_tokens_masked_and_the_rest_finite():
    from giraffe.generate.samplers import apply_repetition_penalty

    logits = f32([[2.0, -1.0, float("-inf"), 0.5]])
    seen = np.array([[True, True, True, False]])
    out = apply_repetition_penalty(logits, seen, 5e-324)  # 0 once it meets float32
    assert np.isneginf(out[0, 2]) and np.isfinite(out[0, [0, 1, 3]]).all()
    assert out[0, 0] > 1e30 and out[0, 3] == 0.5 and out.dtype == np.float32


def test_a_seed_outside_the_safe_integers_is_a_clear_error():
    from giraffe.generate.params import DecodingConfig, DecodingError

    assert DecodingConfig(seed=2**53 - 1).seed == 2**53 - 1
    with pytest.raises(DecodingError, match=r"seed=.* must be >= -9007199254740991"):
        DecodingConfig(seed=-(2**70))


def test_a_sequences_penalty_views_follow_its_tokens_whenever_they_are_read():
    """seen (prompt + generated) and counts (generated only) are brought up to date lazily:
    read after every step, after several, or once at the end, they say the same."""
    from giraffe.generate.sequence import SequenceState

    V, prompt, forced = 10, [1, 2, 2], [5, 7, 5, 1, 5]
    cfg = DecodingConfig(max_new_tokens=8, temperature=0)
    states = [SequenceState(prompt, cfg, V, budget=8) for _ in range(3)]
    for step, token in enumerate(forced):
        logits = np.full((1, V), -1.0, dtype=np.float32)
        logits[0, token] = 1.0  # greedy takes it
        for i, state in enumerate(states):
            assert state.step(logits).token_id == token
            if i == 0 or (i == 1 and step % 2):
                state.seen_mask(), state.generated_counts()
    seen = np.zeros((1, V), dtype=bool)
    seen[0, prompt + forced] = True
    counts = np.zeros((1, V), dtype=np.int64)
    for token in forced:
        counts[0, token] += 1
    for state in states:
        assert np.array_equal(state.seen_mask(), seen)
        assert np.array_equal(state.generated_counts(), counts)  # 5 three times, prompt's 1 not


def test_greedy_choice_takes_the_first_of_equal_maxima_as_torch_does():
    from giraffe.generate.samplers import choose_rows

    logits = f32([[0.0, 3.0, 1.0, 3.0], [2.0, 2.0, -1.0, 0.5]])
    cfg = DecodingConfig(temperature=0)
    got = choose_rows(logits, cfg, [None, None])
    assert got.dtype == np.int64 and np.array_equal(got, torch.from_numpy(logits).argmax(dim=-1))
    assert got.tolist() == [1, 0]


def test_a_negative_seed_is_a_stream_of_its_own():
    """numpy takes no negative seed; the bounds allow them (as torch did): each is a
    stream of its own, the same every time."""
    from giraffe.generate.sequence import make_generator

    cfg = DecodingConfig(temperature=1.0)
    first = [make_generator(cfg, s).random() for s in (-5, -5, 5, -(2**53 - 1))]
    assert first[0] == first[1] and len(set(first)) == 3
    assert make_generator(DecodingConfig(temperature=0), 5) is None


@pytest.mark.parametrize(
    "module", ["engine", "sequence", "samplers", "constraint", "params", "stops"]
)
def test_the_generation_core_imports_no_torch(module):
    """The decoding core is numpy: a process that samples through it need not pay
    torch's start-up (a second and more). Checked in a fresh interpreter."""
    code = (
        f"import sys, giraffe.generate.{module}; "
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')); "
        "assert not bad, bad"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


# 0 in float32; x / t overflows float32; x / t fits
@pytest.mark.parametrize("temperature", [1e-300, 1e-37, 1e-30])
def test_a_temperature_near_zero_samples_the_argmax(temperature):
    """x / t past float32: the limit of softmax(x / t), the argmax (masked tokens stay
    masked), not every large logit at +inf alike."""
    logits = f32([[3.0, 5.0, -np.inf, 4.9, -2.0]])
    processed = apply_temperature(logits, temperature)
    assert np.isneginf(processed[0, 2]) and np.isfinite(processed[0, 1])
    assert not (np.isnan(processed).any() or np.isposinf(processed).any())
    assert processed[0].argmax() == 1
    cfg = DecodingConfig(temperature=temperature, top_p=0.5)
    g = np.random.default_rng(0)
    batch = np.repeat(logits, 50, axis=0)
    drawn = choose(process_logits(batch, cfg, **NO_HISTORY), cfg, g)
    assert set(drawn.tolist()) == {1}


def test_an_infinite_temperature_samples_the_allowed_tokens_alike():
    logits = f32([[3.0, 5.0, -np.inf, 4.9, -2.0]])
    processed = apply_temperature(logits, 1e300)  # inf in float32: -inf / inf would be NaN
    assert processed[0].tolist() == [0.0, 0.0, INF, 0.0, 0.0]
    drawn = choose(np.repeat(processed, 4000, axis=0), DecodingConfig(), np.random.default_rng(0))
    counts = np.bincount(drawn, minlength=5)
    assert counts[2] == 0 and np.abs(counts[[0, 1, 3, 4]] / 4000 - 0.25).max() < 0.03


# the filters meet -inf - -inf on the way (numpy warns), then the draw says what is wrong
@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_a_row_with_no_token_left_is_a_clear_error():
    from giraffe.generate.params import GenerationError

    logits = np.full((1, 6), NEG_INF, dtype=np.float32)
    cfg = DecodingConfig(temperature=0.7, top_p=0.9, top_k=3, min_p=0.1)
    with pytest.raises(GenerationError, match="no token is left"):
        choose(process_logits(logits, cfg, **NO_HISTORY), cfg, np.random.default_rng(0))
