"""Pretraining objectives: BERT's masking statistics, T5's span corruption round trip, and
the loss of an untrained model (about ln(vocab): it knows nothing yet)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from giraffe.config import PRESETS, ConfigError
from giraffe.models import build_model
from giraffe.models.seq2seq import shift_right
from giraffe.train.objectives import (
    ObjectiveError,
    SpecialTokens,
    loss_for,
    mask_tokens,
    objective_name,
    span_corrupt,
    span_counts,
    span_uncorrupt,
    t5_sentinels,
)

PAD, CLS, SEP, MASK = 0, 1, 2, 3
V = 1000


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def bert_batch(rows: int = 64, T: int = 512) -> torch.Tensor:
    """[CLS] text [SEP] [PAD]...: rows padded to different lengths, text ids from 4."""
    ids = torch.randint(4, V, (rows, T), generator=gen(1))
    ids[:, 0] = CLS
    for r in range(rows):
        end = T - 7 * (r % 9) - 1
        ids[r, end] = SEP
        ids[r, end + 1 :] = PAD
    return ids


def test_masking_statistics_on_a_large_batch():
    ids = bert_batch()
    special = {PAD, CLS, SEP}
    inputs, labels = mask_tokens(
        ids, mask_id=MASK, vocab_size=V, special_ids=special, generator=gen()
    )
    is_special = torch.isin(ids, torch.tensor(sorted(special)))
    chosen = labels != -100
    # Never a special token; exactly round(15 %) of each row's other tokens.
    assert not (chosen & is_special).any()
    eligible = (~is_special).sum(1)
    assert torch.equal(chosen.sum(1), (eligible * 0.15).round().long())
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])  # untouched where not chosen
    n = int(chosen.sum())  # about 4,800 chosen tokens
    masked = (inputs == MASK) & chosen
    kept = (inputs == ids) & chosen
    replaced = chosen & ~masked & ~kept
    # 80/10/10 within 4.5 standard deviations (sd of 0.8 over 4,800 draws: 0.0058).
    # A random draw equal to the original counts as kept: 1 in 996 of the 10 %.
    assert abs(masked.sum() / n - 0.8) < 0.026
    assert abs(replaced.sum() / n - 0.1) < 0.02
    assert abs(kept.sum() / n - 0.1) < 0.02
    # Random replacements are ordinary tokens, never [MASK], [PAD], [CLS] or [SEP].
    assert not torch.isin(inputs[replaced], torch.tensor([PAD, CLS, SEP, MASK])).any()
    # Chosen positions spread over the whole row (first vs second half of the text).
    first, second = chosen[:, 1:200].sum(), chosen[:, 200:399].sum()
    assert abs(first - second) < 0.15 * (first + second)


def test_masking_is_reproducible_and_needs_a_valid_batch():
    ids = bert_batch(4, 64)
    a = mask_tokens(ids, mask_id=MASK, vocab_size=V, special_ids={PAD}, generator=gen(7))
    b = mask_tokens(ids, mask_id=MASK, vocab_size=V, special_ids={PAD}, generator=gen(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    short = torch.tensor([[CLS, 9, SEP]])  # one maskable token: it is chosen (never zero)
    _, labels = mask_tokens(
        short, mask_id=MASK, vocab_size=V, special_ids={CLS, SEP}, generator=gen()
    )
    assert labels.tolist() == [[-100, 9, -100]]
    with pytest.raises(ObjectiveError, match="outside the vocabulary"):
        mask_tokens(ids + V, mask_id=MASK, vocab_size=V, special_ids={PAD}, generator=gen())
    with pytest.raises(ObjectiveError, match="mask_id"):
        mask_tokens(ids, mask_id=V, vocab_size=V, special_ids={PAD}, generator=gen())
    with pytest.raises(ObjectiveError, match="rate"):
        mask_tokens(ids, mask_id=MASK, vocab_size=V, special_ids={PAD}, generator=gen(), rate=1.5)


SENTINELS = t5_sentinels(V, 100)


@pytest.mark.parametrize("T", [2, 3, 20, 64, 511])
def test_span_corruption_round_trips_exactly(T):
    ids = torch.randint(0, V - 100, (8, T), generator=gen(T))
    encoder, targets = span_corrupt(ids, sentinel_ids=SENTINELS, generator=gen())
    noise, spans = span_counts(T)
    assert encoder.shape == (8, T - noise + spans) and targets.shape == (8, noise + spans + 1)
    assert torch.equal(span_uncorrupt(encoder, targets, sentinel_ids=SENTINELS), ids)
    # Sentinels appear in order: <extra_id_0>, <extra_id_1>, ... in both halves.
    for row_in, row_out in zip(encoder.tolist(), targets.tolist(), strict=True):
        assert [t for t in row_in if t in SENTINELS] == list(SENTINELS[:spans])
        assert [t for t in row_out if t in SENTINELS] == list(SENTINELS[: spans + 1])
        assert row_out[0] == SENTINELS[0] and row_out[-1] == SENTINELS[spans]


def test_span_corruption_of_ragged_rows_and_its_statistics():
    rows = [torch.randint(0, V - 100, (n,), generator=gen(n)).tolist() for n in range(5, 300, 7)]
    encoder, targets = span_corrupt(rows, sentinel_ids=SENTINELS, generator=gen())
    back = span_uncorrupt(encoder, targets, sentinel_ids=SENTINELS)
    assert [b.tolist() for b in back] == rows
    # Over many rows of 512: 15 % noise, spans of mean length 3 (T5's defaults).
    ids = torch.randint(0, V - 100, (64, 512), generator=gen(3))
    _, targets = span_corrupt(ids, sentinel_ids=SENTINELS, generator=gen())
    noise, spans = span_counts(512)
    assert (noise, spans) == (77, 26)  # round(512 x 0.15), round(77 / 3)
    assert targets.shape[1] - spans - 1 == noise


def test_span_corruption_refuses_ambiguous_input():
    ids = torch.randint(0, V - 100, (2, 40), generator=gen())
    with pytest.raises(ObjectiveError, match="sentinel id"):
        span_corrupt(
            ids.index_fill(1, torch.tensor([5]), SENTINELS[3]),
            sentinel_ids=SENTINELS,
            generator=gen(),
        )
    with pytest.raises(ObjectiveError, match="needs 3 sentinel"):
        span_corrupt(ids, sentinel_ids=SENTINELS[:2], generator=gen())
    with pytest.raises(ObjectiveError, match="cannot take 600 sentinels"):
        t5_sentinels(512, 600)
    with pytest.raises(ObjectiveError, match="at least 2 tokens"):
        span_corrupt([[5]], sentinel_ids=SENTINELS, generator=gen())


def test_shift_right():
    targets = torch.tensor([[7, 8, 9], [5, -100, -100]])
    assert shift_right(targets, 0).tolist() == [[0, 7, 8], [0, 5, 0]]


ARCHS = ["gpt2", "llama", "bert", "t5"]


def specials(vocab: int) -> SpecialTokens:
    return SpecialTokens(
        pad_id=PAD, mask_id=MASK, never_mask=(CLS, SEP), sentinel_ids=t5_sentinels(vocab, 50)
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_untrained_loss_is_about_ln_vocab(arch):
    torch.manual_seed(0)
    cfg = PRESETS[f"{arch}-tiny"]
    model = build_model(cfg)
    ids = torch.randint(4, cfg.vocab_size - 50, (8, 64), generator=gen())
    with torch.no_grad():
        loss = loss_for(arch)(model, ids, gen(), specials(cfg.vocab_size))
    # N(0, 0.02) weights give near-uniform predictions: cross-entropy ln(512) = 6.24.
    assert abs(float(loss) - math.log(cfg.vocab_size)) < 0.05


def test_causal_loss_is_next_token_cross_entropy():
    model = build_model(PRESETS["llama-tiny"])
    ids = torch.randint(4, 500, (2, 16), generator=gen())
    with torch.no_grad():
        logits = model(ids[:, :-1])
        want = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        got = loss_for("llama")(model, ids, gen(), SpecialTokens())
    assert torch.allclose(got, want)


def test_objectives_by_arch_and_their_errors():
    assert [objective_name(a) for a in ARCHS] == ["causal", "causal", "masked", "span"]
    with pytest.raises(ConfigError, match="not supported"):
        loss_for("rnn")
    bert, t5 = build_model(PRESETS["bert-tiny"]), build_model(PRESETS["t5-tiny"])
    ids = torch.randint(4, 400, (2, 16), generator=gen())
    with pytest.raises(ObjectiveError, match="mask_id"):
        loss_for("bert")(bert, ids, gen(), SpecialTokens(pad_id=PAD))
    with pytest.raises(ObjectiveError, match="only special tokens"):
        loss_for("bert")(bert, torch.full((2, 8), CLS), gen(), specials(512))
    with pytest.raises(ObjectiveError, match="sentinel_ids"):
        loss_for("t5")(t5, ids, gen(), SpecialTokens())


@pytest.mark.parametrize("arch", ARCHS)
def test_losses_take_a_distributed_model_and_narrow_ids(arch, tmp_path):
    """DistributedDataParallel hides `.config`; shards hand out int32/uint16-sized ids."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = build_model(PRESETS[f"{arch}-tiny"])
        ids = torch.randint(4, 400, (2, 32), generator=gen(), dtype=torch.int32)
        plain = loss_for(arch)(model, ids, gen(3), specials(512))
        wrapped = loss_for(arch)(DistributedDataParallel(model), ids, gen(3), specials(512))
        assert torch.allclose(plain, wrapped)
    finally:
        dist.destroy_process_group()
