"""The decoding loop against plain recomputation, batching against one-by-one, and beams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from giraffe.config import PRESETS
from giraffe.generate.beam import beam_search
from giraffe.generate.engine import DecodeSession, GenerationError
from giraffe.generate.params import DecodingConfig
from giraffe.generate.sequence import SequenceState, step_many
from giraffe.models import Decoder
from giraffe.nn import KVCache


@pytest.fixture(params=["llama-tiny", "gpt2-tiny"])
def model(request):
    torch.manual_seed(1)
    return Decoder(PRESETS[request.param]).eval()


def run(model, prompts, seeds=None, stop_ids=(), **kw):
    cfg = DecodingConfig(**kw)
    out = [[] for _ in prompts]
    for events in DecodeSession(model, prompts, cfg, stop_ids, seeds):
        for e in events:
            out[e.row].append(e.token_id)
    return out


@torch.inference_mode()
def greedy_uncached(model, prompt, n):
    """The plain path: recompute the whole sequence for every new token."""
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt) :]


def test_cached_decoding_equals_recomputation(model):
    prompt = [5, 17, 42, 99, 7]
    assert run(model, [prompt], max_new_tokens=20, temperature=0.0) == [
        greedy_uncached(model, prompt, 20)
    ]


def test_batch_of_different_lengths_equals_one_by_one(model):
    prompts = [[1, 2, 3], [9, 8, 7, 6, 5, 4, 3, 2], [42]]
    batched = run(model, prompts, max_new_tokens=12, temperature=0.0)
    single = [run(model, [p], max_new_tokens=12, temperature=0.0)[0] for p in prompts]
    assert batched == single


def test_padded_batch_logits_match_single_rows(model):
    """Left padding must be invisible: compare the raw next-token logits too."""
    prompts = [[3, 1, 4, 1, 5, 9], [2, 7]]
    cfg = DecodingConfig(max_new_tokens=1, temperature=0.0, logprobs=True, top_logprobs=5)
    batched = [e.top for events in DecodeSession(model, prompts, cfg) for e in events]
    single = [e.top for p in prompts for events in DecodeSession(model, [p], cfg) for e in events]
    for a, b in zip(batched, single, strict=True):
        assert [i for i, _ in a] == [i for i, _ in b]
        assert max(abs(x - y) for (_, x), (_, y) in zip(a, b, strict=True)) < 1e-5


def test_same_seed_same_tokens_and_batch_independent(model):
    kw = dict(max_new_tokens=15, temperature=1.0, top_k=50)
    first = run(model, [[1, 2, 3]], seeds=[7], **kw)
    assert first == run(model, [[1, 2, 3]], seeds=[7], **kw)
    assert first != run(model, [[1, 2, 3]], seeds=[8], **kw)
    in_batch = run(model, [[4, 5], [1, 2, 3]], seeds=[3, 7], **kw)
    assert in_batch[1] == first[0]


def test_stop_token_ends_row_and_min_new_tokens_delays_it(model):
    free = run(model, [[5, 6, 7]], max_new_tokens=10, temperature=0.0)[0]
    stop = free[3]
    assert (
        run(model, [[5, 6, 7]], stop_ids=[stop], max_new_tokens=10, temperature=0.0)[0][-1] == stop
    )
    cut = run(model, [[5, 6, 7]], stop_ids=[stop], max_new_tokens=10, temperature=0.0)[0]
    assert cut == free[: free.index(stop) + 1]
    late = run(
        model, [[5, 6, 7]], stop_ids=[stop], max_new_tokens=10, min_new_tokens=8, temperature=0.0
    )[0]
    assert stop not in late[:8]
    ignored = run(
        model, [[5, 6, 7]], stop_ids=[stop], max_new_tokens=10, ignore_eos=True, temperature=0.0
    )
    assert len(ignored[0]) == 10


def test_prompt_errors(model):
    cfg = DecodingConfig()
    with pytest.raises(GenerationError, match="empty"):
        DecodeSession(model, [[]], cfg)
    too_long = list(range(10)) * 30  # 300 tokens, context is 256
    with pytest.raises(GenerationError, match="context"):
        DecodeSession(model, [too_long], cfg)


def test_generation_stops_at_the_context_end(model):
    ctx = model.config.max_position_embeddings
    out = run(model, [[1] * (ctx - 3)], max_new_tokens=10, temperature=0.0)
    assert len(out[0]) == 3


def test_beam_of_one_equals_greedy(model):
    prompt = [11, 12, 13]
    greedy = run(model, [prompt], max_new_tokens=10, temperature=0.0)[0]
    beam = beam_search(
        model, prompt, DecodingConfig(max_new_tokens=10, temperature=0.0, num_beams=1)
    )
    assert beam.token_ids == greedy


class BigramModel(torch.nn.Module):
    """Next-token log-probabilities depend only on the last token: a hand-made table."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table.log()
        V = table.shape[0]
        self.config = PRESETS["llama-tiny"].replace(vocab_size=V, max_position_embeddings=64)

    def new_cache(self, batch, max_len):
        return KVCache(1, batch, 1, max_len, 1)

    def hidden(self, ids, cache=None, positions=None, key_mask=None):
        if cache is not None:
            cache.advance(ids.shape[1])
        return torch.nn.functional.one_hot(ids, self.table.shape[0]).float()  # (B, T, V)

    def head(self, h):
        return h @ self.table  # (B, T, V)

    def next_token_logits(self, ids, cache=None, positions=None, key_mask=None):
        """The generation core's door: numpy in, numpy float32 (B, V) out."""
        ids = torch.from_numpy(ids)
        return self.head(self.hidden(ids, cache, positions, key_mask)[:, -1]).numpy(), None


def test_beam_search_beats_greedy_on_a_constructed_case():
    # From token 0: greedy takes 2 (0.6) but then faces a flat 0.25 split; token 1 (0.4)
    # leads to a near-certain token 3 (0.9): 0.4*0.9 = 0.36 > 0.6*0.25 = 0.15.
    V = 5
    table = torch.full((V, V), 0.25)
    table[0] = torch.tensor([0.0, 0.4, 0.6, 0.0, 0.0]) + 1e-9
    table[1] = torch.tensor([0.0, 0.05, 0.05, 0.9, 0.0]) + 1e-9
    table[2] = torch.tensor([0.0, 0.25, 0.25, 0.25, 0.25]) + 1e-9
    model = BigramModel(table / table.sum(-1, keepdim=True))
    cfg = DecodingConfig(max_new_tokens=2, temperature=0.0, num_beams=2, length_penalty=0.0)
    greedy = run(model, [[0]], max_new_tokens=2, temperature=0.0)[0]
    beam = beam_search(model, [0], cfg)
    assert greedy[0] == 2 and beam.token_ids == [1, 3]

    def logp(seq):
        return sum(model.table[a, b].item() for a, b in zip([0] + seq, seq, strict=False))

    assert logp(beam.token_ids) > logp(greedy)
    assert beam.score == pytest.approx(logp(beam.token_ids), abs=1e-5)


def test_beam_search_prefers_finished_hypothesis_when_it_scores_best():
    V = 4  # token 3 is the stop token; from 0 it is very likely
    table = torch.full((V, V), 0.1)
    table[0] = torch.tensor([0.05, 0.05, 0.1, 0.8])
    model = BigramModel(table / table.sum(-1, keepdim=True))
    cfg = DecodingConfig(max_new_tokens=5, temperature=0.0, num_beams=3)
    result = beam_search(model, [0], cfg, stop_ids=[3])
    assert result.finish_reason == "stop" and result.token_ids == []


def test_sliding_window_cached_equals_recomputation():
    torch.manual_seed(2)
    model = Decoder(PRESETS["llama-tiny"].replace(sliding_window=4)).eval()
    prompt = [5, 17, 42, 99, 7, 3, 8]
    assert run(model, [prompt], max_new_tokens=10, temperature=0.0) == [
        greedy_uncached(model, prompt, 10)
    ]
    padded = run(model, [prompt, [1, 2]], max_new_tokens=6, temperature=0.0)
    assert padded[1] == greedy_uncached(model, [1, 2], 6)


def test_rotary_roll_form_equals_rotate_half():
    from giraffe.nn.positions import Rotary, apply_rotary, rotate_half

    rotary = Rotary(16, 10000.0)
    cos, signed_sin = rotary(torch.arange(7)[None])
    freqs = torch.arange(7)[:, None].float() * rotary.inv_freq
    sin = torch.cat((freqs, freqs), -1).sin()[None, None]
    x = torch.randn(2, 3, 7, 16)
    assert torch.equal(apply_rotary(x, cos, signed_sin), x * cos + rotate_half(x) * sin)


@pytest.mark.parametrize(
    "change, token",
    [
        ({}, 1),  # plain greedy: the model's argmax (planted wrong here, to be seen)
        ({"repetition_penalty": 1.3}, 2),
        ({"frequency_penalty": 0.5}, 2),
        ({"presence_penalty": 0.5}, 2),
        ({"no_repeat_ngram_size": 2}, 2),
        ({"logit_bias": {3: 50.0}}, 3),
        ({"min_new_tokens": 2}, 2),
        ({"logprobs": True}, 2),
        ({"top_logprobs": 2}, 2),
        ({"temperature": 0.7, "seed": 0}, 2),
    ],
)
def test_a_row_takes_the_models_argmax_only_when_nothing_changes_its_logits(change, token):
    """A compiled step may hand each row's argmax with the logits (`next_token_logits`): a
    greedy row whose logits nothing changes takes it without an array op; any penalty, ban,
    bias, held-back stop token, log-probability or sampling goes through the samplers.
    The argmax handed in here is deliberately not the logits' (1 against 2), so which one
    a row took shows."""
    cfg = DecodingConfig.from_kwargs(**{"max_new_tokens": 4, "temperature": 0.0, **change})
    state = SequenceState([0, 1], cfg, vocab_size=5, budget=4, stop_ids=[4], seed=0)
    logits = np.array([[0.0, 0.0, 30.0, 0.0, 0.0]], dtype=np.float32)
    assert state.takes_argmax() == (token == 1)
    assert step_many([state], logits, argmax=[1])[0].token_id == token


class Spy:
    """A model that records what the session hands it, then lets the decoder answer."""

    def __init__(self, model) -> None:
        self.model, self.config, self.calls = model, model.config, []

    def new_cache(self, batch, max_len):
        return self.model.new_cache(batch, max_len)

    def next_token_logits(self, ids, *, cache, positions=None, key_mask=None):
        self.calls.append((ids, positions, key_mask, ids.copy(), positions.copy()))
        return self.model.next_token_logits(
            ids, cache=cache, positions=positions, key_mask=key_mask
        )


def test_the_session_speaks_numpy_and_reuses_its_step_arrays(model):
    """ids and positions (B, L) int64, key mask (B, S) bool over the padded rows; every
    decode step hands the same two (B, 1) arrays, rewritten in place."""
    spy = Spy(model)
    prompts = [[3, 1, 4, 1, 5], [9, 2]]
    cfg = DecodingConfig(max_new_tokens=4, temperature=0.7, seed=1)
    steps = [[e.token_id for e in events] for events in DecodeSession(spy, prompts, cfg)]
    (ids, positions, key_mask, *_), *decode = spy.calls
    assert all(isinstance(a, np.ndarray) and a.dtype == np.int64 for a in (ids, positions))
    assert ids.tolist() == [[3, 1, 4, 1, 5], [0, 0, 0, 9, 2]]
    assert positions.tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 0, 1]]
    assert key_mask.dtype == bool and key_mask.tolist() == [[True] * 5, [False] * 3 + [True] * 2]
    assert len(decode) == 3 and len({id(c[0]) for c in decode}) == 1
    assert len({id(c[1]) for c in decode}) == 1
    for step, (_, _, mask, fed, at) in enumerate(decode):
        assert fed[:, 0].tolist() == steps[step] and at[:, 0].tolist() == [5 + step, 2 + step]
        assert mask.shape == (2, 6 + step) and mask[1, :3].tolist() == [False] * 3


def test_next_token_logits_takes_numpy_or_tensors_and_hands_numpy(model):
    """float32 (B, V) numpy logits of the last position, with gradients on around it and
    a cache made outside inference mode; numpy and torch arguments give the same numbers."""
    prompt = [[5, 17, 42, 99, 7]]
    with torch.inference_mode():
        expected = model(torch.tensor(prompt))[0, -1]
    got = []
    for ids in (np.array(prompt), torch.tensor(prompt)):
        logits, argmax = model.next_token_logits(ids, cache=model.new_cache(1, 8))
        assert isinstance(logits, np.ndarray) and logits.dtype == np.float32
        assert logits.shape == (1, model.config.vocab_size) and argmax is None
        got.append(logits)
    assert np.array_equal(got[0], got[1])
    torch.testing.assert_close(torch.from_numpy(got[0][0]), expected, rtol=1e-5, atol=1e-5)
