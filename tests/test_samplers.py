"""Each sampler and penalty on hand-made logits, and against transformers' logits processors."""

from __future__ import annotations

import math

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


def kept(logits):
    return (logits[0] != INF).nonzero().flatten().tolist()


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    assert kept(top_k_filter(logits, 2)) == [1, 3]
    assert torch.equal(top_k_filter(logits, 0), logits)


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log()
    assert kept(top_p_filter(logits, 0.75)) == [0, 1]
    assert kept(top_p_filter(logits, 0.5)) == [0]
    assert kept(top_p_filter(logits, 0.01)) == [0]  # never empty
    assert kept(top_p_filter(logits, 1.0)) == [0, 1, 2]


def test_min_p_scales_with_the_top_probability():
    logits = torch.tensor([[0.6, 0.25, 0.1, 0.05]]).log()
    assert kept(min_p_filter(logits, 0.2)) == [0, 1]  # threshold 0.12
    assert kept(min_p_filter(logits, 0.1)) == [0, 1, 2]  # threshold 0.06


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 2.0, -2.0]]


def test_frequency_and_presence_arithmetic():
    logits = torch.zeros(1, 3)
    counts = torch.tensor([[0, 1, 3]])
    out = apply_frequency_presence(logits, counts, frequency=0.5, presence=1.0)
    assert out.tolist() == [[0.0, -1.5, -2.5]]


def test_no_repeat_ngram_bans_exactly_the_completing_token():
    logits = torch.zeros(1, 10)
    out = ban_repeated_ngrams(logits, [[1, 2, 3, 1, 2]], 3)  # "1 2 3" seen; now "1 2" again
    assert (out[0] == INF).nonzero().flatten().tolist() == [3]
    assert ban_repeated_ngrams(logits, [[1, 2, 3, 1, 4]], 3).eq(0).all()


def test_suppress_and_temperature():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    assert kept(suppress(logits, [2])) == [0, 1]
    assert apply_temperature(logits, 0.5).tolist() == [[2.0, 4.0, 6.0]]


def test_greedy_takes_the_argmax_and_ignores_filters():
    logits = torch.tensor([[1.0, 9.0, 3.0], [7.0, 0.0, 1.0]])
    cfg = DecodingConfig(temperature=0.0, top_k=1)
    assert choose(logits, cfg, None).tolist() == [1, 0]


def test_seeded_sampling_is_reproducible():
    logits = torch.randn(1, 1000)
    cfg = DecodingConfig(temperature=1.0)

    def draws(seed):
        g = torch.Generator().manual_seed(seed)
        return [int(choose(logits, cfg, g)) for _ in range(20)]

    assert draws(1) == draws(1) and draws(1) != draws(2)


def test_sampled_frequencies_follow_the_tempered_softmax():
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    cfg = DecodingConfig(temperature=0.5)
    processed = apply_temperature(logits, 0.5)
    g = torch.Generator().manual_seed(0)
    n = 20000
    draws = choose(processed.expand(n, -1), cfg, g)  # (n,): one draw per row
    expected = processed.softmax(-1)[0]
    observed = torch.bincount(draws, minlength=3).float() / n
    assert (observed - expected).abs().max() < 0.01


def test_process_logits_only_filters_when_sampling():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    state = dict(
        seen_mask=torch.zeros(1, 3, dtype=torch.bool),
        counts=torch.zeros(1, 3, dtype=torch.long),
        sequences=[[0]],
        n_generated=0,
        eos_ids=[2],
    )
    greedy = process_logits(logits, DecodingConfig(temperature=0.0, top_k=1), **state)
    assert torch.equal(greedy, logits)
    sampled = process_logits(logits, DecodingConfig(temperature=1.0, top_k=1), **state)
    assert kept(sampled) == [2]
    delayed = process_logits(logits, DecodingConfig(temperature=0.0, min_new_tokens=1), **state)
    assert kept(delayed) == [0, 1]


def test_logprobs_are_the_models_distribution():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    lp, ids, top = logprobs_of(logits, torch.tensor([1]), 2)
    assert lp.item() == pytest.approx(math.log(0.75))
    assert ids.tolist() == [[1, 0]] and top[0, 1].item() == pytest.approx(math.log(0.25))


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
    logits = torch.full((2000, 8), NEG_INF)
    logits[:, 3], logits[:, 6] = 0.0, 1.0  # only tokens 3 and 6 are possible
    draws = choose(logits, DecodingConfig(temperature=1.0), torch.Generator().manual_seed(1))
    assert set(draws.tolist()) == {3, 6}


def nucleus_by_full_sort(logits, p):
    """The plain reference: sort everything, drop a token once those before it reach p."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    drop = (probs.cumsum(dim=-1) - probs) >= p
    drop[:, 0] = False
    return logits.masked_fill(drop.scatter(1, order, drop), NEG_INF)


@pytest.mark.parametrize("p", [0.5, 0.9, 0.999])
@pytest.mark.parametrize("scale", [0.5, 3.0, 8.0])  # flat (full sort needed) to peaked
def test_top_p_equals_the_full_sort_on_a_real_vocabulary(p, scale):
    logits = torch.randn(2, 49152) * scale
    assert torch.equal(top_p_filter(logits, p), nucleus_by_full_sort(logits, p))


def test_top_k_top_p_min_p_match_transformers(random_logits):
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    ids = torch.zeros(4, 1, dtype=torch.long)
    for p in (0.1, 0.5, 0.9):
        assert torch.equal(
            top_p_filter(random_logits, p), TopPLogitsWarper(p)(ids, random_logits.clone())
        )
        assert torch.equal(
            min_p_filter(random_logits, p), MinPLogitsWarper(p)(ids, random_logits.clone())
        )
    for k in (1, 5, 20):
        assert torch.equal(
            top_k_filter(random_logits, k), TopKLogitsWarper(k)(ids, random_logits.clone())
        )


def test_repetition_and_ngram_match_transformers(random_logits):
    from transformers.generation.logits_process import (
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
    )

    ids = torch.randint(0, 50, (4, 30))
    seen = torch.zeros(4, 50, dtype=torch.bool).scatter(1, ids, True)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(ids, random_logits.clone())
    assert torch.allclose(apply_repetition_penalty(random_logits, seen, 1.3), expected)
    ids = torch.randint(0, 4, (4, 30))  # a small alphabet so that n-grams repeat
    expected = NoRepeatNGramLogitsProcessor(2)(ids, random_logits.clone())
    assert torch.equal(ban_repeated_ngrams(random_logits, ids.tolist(), 2), expected)


def test_a_penalty_that_underflows_keeps_masked_tokens_masked_and_the_rest_finite():
    from giraffe.generate.samplers import apply_repetition_penalty

    logits = torch.tensor([[2.0, -1.0, float("-inf"), 0.5]])
    seen = torch.tensor([[True, True, True, False]])
    out = apply_repetition_penalty(logits, seen, 5e-324)  # 0 once it meets float32
    assert torch.isneginf(out[0, 2]) and torch.isfinite(out[0, [0, 1, 3]]).all()
    assert out[0, 0] > 1e30 and out[0, 3] == 0.5


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
        logits = torch.full((1, V), -1.0)
        logits[0, token] = 1.0  # greedy takes it
        for i, state in enumerate(states):
            assert state.step(logits).token_id == token
            if i == 0 or (i == 1 and step % 2):
                state.seen_mask(), state.generated_counts()
    seen = torch.zeros(1, V, dtype=torch.bool)
    seen[0, prompt + forced] = True
    counts = torch.zeros(1, V, dtype=torch.long)
    for token in forced:
        counts[0, token] += 1
    for state in states:
        assert torch.equal(state.seen_mask(), seen)
        assert torch.equal(
            state.generated_counts(), counts
        )  # 5 three times, prompt's 1 not counted


def test_greedy_choice_takes_the_first_of_equal_maxima_as_torch_does():
    from giraffe.generate.samplers import choose_rows

    logits = torch.tensor([[0.0, 3.0, 1.0, 3.0], [2.0, 2.0, -1.0, 0.5]])
    cfg = DecodingConfig(temperature=0)
    got = choose_rows(logits, cfg, [None, None])
    assert got.dtype == torch.int64 and torch.equal(got, logits.argmax(dim=-1))
    assert got.tolist() == [1, 0]
