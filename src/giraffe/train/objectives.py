"""Pretraining objectives: what a model is asked to predict from a batch of token ids.

- causal LM (GPT-2, Llama): predict every next token from the ones before it.
- masked LM (BERT; Devlin et al. 2019, arXiv:1810.04805, section 3.1): 15 % of the
  tokens are chosen; of those 80 % become [MASK], 10 % a random token, 10 % stay as they
  are; the model predicts the original token at each chosen position only.
- span corruption (T5; Raffel et al. 2020, arXiv:1910.10683, section 3.1.4): about 15 %
  of the tokens, in spans of mean length 3, are each replaced by one sentinel in the
  encoder's input; the decoder writes every dropped span after its sentinel, and a
  last sentinel ends the target ("Thank you <X> me to your party <Y> week." ->
  "<X> for inviting <Y> last <Z>").

Everything random is drawn from the `torch.Generator` passed in (on the CPU), so the
same generator state gives the same batch: a resumed run sees what an uninterrupted
one would. `loss_for(arch)` gives the trainer one function per architecture.

This module does not know files, tokenizers, optimisers or the training loop: the
trainer looks the special tokens' ids up in its tokenizer and passes them in a
`SpecialTokens`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from giraffe.config import ARCHITECTURES, ConfigError
from giraffe.models.seq2seq import shift_right

IGNORE = -100  # label of a position that does not count in the loss (F.cross_entropy's default)


class ObjectiveError(ValueError):
    """A batch or a token id does not fit the objective (e.g. no [MASK] id for BERT)."""


@dataclass(frozen=True)
class SpecialTokens:
    """The token ids the objectives need; the trainer fills them from its tokenizer.

    What each objective reads:
    - "causal": `pad_id` only, and only when batches are padded: targets equal to it are
      ignored. Leave it None for packed shards (documents joined by an end-of-text
      token), or the model would never learn to predict that token when pad == eos.
    - "masked": `mask_id` (required, BERT's "[MASK]"); `pad_id` and `never_mask` (e.g.
      "[CLS]", "[SEP]", "<|bos|>", "<|eos|>") are never chosen for masking nor drawn as
      random replacements; padding, when present, is hidden from attention.
    - "span": `sentinel_ids` (required): T5's <extra_id_0>, <extra_id_1>, ... in that
      order, one more than the spans of a row (`span_counts`; 100 covers rows up to
      about 1,900 tokens). A tokenizer without sentinel tokens can leave room for them:
      build the model with vocab_size = tokenizer's + n and pass
      `t5_sentinels(model vocab_size, n)`, T5's own layout (counting down from the top
      of the vocabulary). The sentinel ids must never occur in the data. The decoder's
      start token is the model's `config.decoder_start_id`.
    """

    pad_id: int | None = None
    mask_id: int | None = None
    never_mask: tuple[int, ...] = ()
    sentinel_ids: tuple[int, ...] = ()

    def unmaskable(self) -> set[int]:
        """Ids the masked LM never chooses: padding, [MASK] itself and `never_mask`."""
        ids = {self.pad_id, self.mask_id, *self.never_mask}
        return {i for i in ids if i is not None}


def t5_sentinels(vocab_size: int, count: int = 100) -> tuple[int, ...]:
    """T5's sentinel ids: <extra_id_0> = vocab_size - 1, <extra_id_1> = vocab_size - 2, ..."""
    if not 0 < count < vocab_size:
        raise ObjectiveError(f"cannot take {count} sentinels from a vocabulary of {vocab_size}")
    return tuple(range(vocab_size - 1, vocab_size - 1 - count, -1))


# ---- masked LM ------------------------------------------------------------------------


def mask_tokens(
    ids: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Iterable[int] | torch.Tensor,
    generator: torch.Generator,
    rate: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of a batch: ids (B, T) -> (inputs (B, T), labels (B, T)).

    Each row gets exactly round(rate x its maskable tokens) chosen positions (at least
    one when it has any), picked uniformly without replacement as BERT's
    create_pretraining_data does; special ids (and `mask_id`) are never chosen. A chosen
    position becomes `mask_id` with probability 0.8, a random non-special token with
    0.1 (BERT draws from the whole vocabulary; drawing a [CLS] or [PAD] there would only
    add noise), and stays unchanged with 0.1. labels hold the original token at chosen
    positions and -100 elsewhere.
    """
    _check_ids(ids, vocab_size, "ids")
    if not 0.0 < rate < 1.0:
        raise ObjectiveError(f"the masking rate must be between 0 and 1, got {rate}")
    if not 0 <= mask_id < vocab_size:
        raise ObjectiveError(f"mask_id {mask_id} is outside the vocabulary (0..{vocab_size - 1})")
    special = torch.as_tensor(sorted({int(i) for i in special_ids} | {mask_id}), dtype=torch.long)
    cpu_ids = ids.detach().to("cpu", torch.long)
    eligible = ~torch.isin(cpu_ids, special)  # (B, T)
    per_row = eligible.sum(dim=1)
    count = torch.where(per_row > 0, (per_row * rate).round().long().clamp(min=1), 0)  # (B,)
    scores = torch.rand(cpu_ids.shape, generator=generator).masked_fill(~eligible, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)  # (B, T): 0 = the lowest score of its row
    chosen = rank < count[:, None]
    action = torch.rand(cpu_ids.shape, generator=generator)
    allowed = _complement(special, vocab_size)
    drawn = allowed[torch.randint(len(allowed), cpu_ids.shape, generator=generator)]
    inputs = torch.where(chosen & (action < 0.8), mask_id, cpu_ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), drawn, inputs)
    labels = torch.where(chosen, cpu_ids, IGNORE)
    return inputs.to(ids.device), labels.to(ids.device)


def _complement(special: torch.Tensor, vocab_size: int) -> torch.Tensor:
    keep = torch.ones(vocab_size, dtype=torch.bool)
    keep[special[(special >= 0) & (special < vocab_size)]] = False
    if not keep.any():
        raise ObjectiveError("every token of the vocabulary is special: nothing to draw from")
    return keep.nonzero().flatten()


# ---- span corruption -------------------------------------------------------------------


def span_counts(length: int, noise_density: float = 0.15, mean_span_length: float = 3.0):
    """(noise tokens N, spans S) for a row of `length`, fixed by the length alone as in T5.

    The encoder input then has length - N + S tokens, the target N + S + 1 (a
    sentinel before each span and one at the end), so equal rows stay equal.
    """
    if length < 2:
        raise ObjectiveError(f"span corruption needs rows of at least 2 tokens, got {length}")
    if not 0.0 < noise_density < 1.0 or mean_span_length < 1.0:
        raise ObjectiveError(
            f"noise_density must be in (0, 1) and mean_span_length >= 1 "
            f"(got {noise_density} and {mean_span_length})"
        )
    noise = min(max(round(length * noise_density), 1), length - 1)
    spans = min(max(round(noise / mean_span_length), 1), noise, length - noise)
    return noise, spans


def span_corrupt(
    ids: torch.Tensor | Sequence[Sequence[int] | torch.Tensor],
    *,
    sentinel_ids: Sequence[int],
    generator: torch.Generator,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
):
    """T5's span corruption: ids -> (encoder_inputs, decoder_targets).

    ids: a (B, T) tensor (then both results are tensors, (B, T - N + S) and
    (B, N + S + 1), see `span_counts`) or a list of sequences of any lengths (then
    both are lists of 1-D tensors). Spans are laid out as T5's random_spans_noise_mask
    does: the row alternates kept and noise stretches, starting with a kept one, and
    the lengths of each kind are a uniformly random composition of their totals.
    `span_uncorrupt` turns the pair back into the ids exactly.
    """
    sentinels = torch.as_tensor(list(sentinel_ids), dtype=torch.long)
    rows = _rows(ids)
    pairs = [_corrupt_row(r, sentinels, generator, noise_density, mean_span_length) for r in rows]
    encoder_inputs, targets = [p[0] for p in pairs], [p[1] for p in pairs]
    if isinstance(ids, torch.Tensor):
        device = ids.device
        return torch.stack(encoder_inputs).to(device), torch.stack(targets).to(device)
    return encoder_inputs, targets


def span_uncorrupt(encoder_inputs, decoder_targets, *, sentinel_ids: Sequence[int]):
    """The original ids from `span_corrupt`'s output (a tensor or a list, as it returned)."""
    if len(encoder_inputs) != len(decoder_targets):
        raise ObjectiveError(
            f"{len(encoder_inputs)} encoder rows but {len(decoder_targets)} target rows"
        )
    index = {int(s): k for k, s in enumerate(sentinel_ids)}
    rows = [
        _uncorrupt_row(e.tolist(), t.tolist(), index)
        for e, t in zip(_rows(encoder_inputs), _rows(decoder_targets), strict=True)
    ]
    if isinstance(encoder_inputs, torch.Tensor):
        return torch.stack(rows).to(encoder_inputs.device)
    return rows


def _rows(ids) -> list[torch.Tensor]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 2:
            raise ObjectiveError(f"expected ids of shape (B, T), got {tuple(ids.shape)}")
        return list(ids.detach().to("cpu", torch.long))
    return [torch.as_tensor(r, dtype=torch.long).flatten() for r in ids]


def _corrupt_row(row, sentinels, generator, density, mean_span):
    noise, spans = span_counts(len(row), density, mean_span)
    if len(sentinels) < spans + 1:
        raise ObjectiveError(
            f"a row of {len(row)} tokens needs {spans + 1} sentinel ids, {len(sentinels)} given"
        )
    clash = torch.isin(row, sentinels)
    if clash.any():
        raise ObjectiveError(
            f"the data contains sentinel id {int(row[clash][0])}: sentinels must be ids "
            "that never occur in the text (reserve them in the vocabulary)"
        )
    kept = _random_segmentation(len(row) - noise, spans, generator)
    noisy = _random_segmentation(noise, spans, generator)
    lengths = torch.stack([kept, noisy], dim=1).flatten()  # kept0, noise0, kept1, noise1, ...
    is_noise = torch.arange(2 * spans).remainder(2).bool().repeat_interleave(lengths)  # (T,)
    starts = is_noise & ~torch.cat([torch.tensor([False]), is_noise[:-1]])  # first of a span
    span_of = starts.cumsum(0) - 1  # (T,) index of the span a noise token belongs to
    encoder = torch.where(starts, sentinels[span_of.clamp(min=0)], row)[~is_noise | starts]
    dropped, first = row[is_noise], starts[is_noise]
    where = torch.arange(noise) + first.cumsum(0)  # each dropped token after its sentinel
    target = torch.empty(noise + spans + 1, dtype=torch.long)
    target[where] = dropped
    target[where[first] - 1] = sentinels[:spans]
    target[-1] = sentinels[spans]
    return encoder, target


def _random_segmentation(total: int, parts: int, generator: torch.Generator) -> torch.Tensor:
    """`parts` positive lengths summing to `total`, every such composition equally likely."""
    cuts = (torch.randperm(total - 1, generator=generator)[: parts - 1] + 1).sort().values
    bounds = torch.cat([torch.tensor([0]), cuts, torch.tensor([total])])
    return bounds.diff()


def _uncorrupt_row(encoder: list[int], target: list[int], index: dict[int, int]):
    spans: dict[int, list[int]] = {}
    current = None
    for token in target:
        if token in index:
            current = index[token]
            spans[current] = []
        elif current is None:
            raise ObjectiveError("a decoder target must start with a sentinel id")
        else:
            spans[current].append(token)
    out = []
    for token in encoder:
        if token in index:
            if index[token] not in spans:
                raise ObjectiveError(f"sentinel {token} of the input is missing from the target")
            out.extend(spans[index[token]])
        else:
            out.append(token)
    return torch.tensor(out, dtype=torch.long)


# ---- losses ------------------------------------------------------------------------------

LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Generator, SpecialTokens], torch.Tensor]


def causal_lm_loss(model, ids: torch.Tensor, generator, special: SpecialTokens) -> torch.Tensor:
    """Mean next-token cross-entropy: the model reads ids[:, :-1] and predicts ids[:, 1:].

    `model` may be wrapped (DistributedDataParallel, torch.compile) in every loss here:
    the loss calls it, so gradients synchronise as the wrapper intends.

    `Decoder.forward(ids, targets)` aligns targets with ids (targets[t] is the token after
    ids[t]), so a row of T tokens gives T - 1 predictions. The generator is not used.
    """
    ids = ids.long()
    targets = ids[:, 1:]
    if special.pad_id is not None:
        targets = targets.masked_fill(targets == special.pad_id, IGNORE)
    return model(ids[:, :-1], targets=targets)


def masked_lm_loss(model, ids: torch.Tensor, generator, special: SpecialTokens) -> torch.Tensor:
    """Mean cross-entropy over the positions `mask_tokens` chose (BERT's MLM)."""
    if special.mask_id is None:
        raise ObjectiveError("the masked-LM objective needs SpecialTokens.mask_id ([MASK])")
    inputs, labels = mask_tokens(
        ids,
        mask_id=special.mask_id,
        vocab_size=config_of(model).vocab_size,
        special_ids=special.unmaskable(),
        generator=generator,
    )
    if (labels == IGNORE).all():
        raise ObjectiveError("this batch holds only special tokens: there is nothing to mask")
    key_mask = None
    if special.pad_id is not None and (ids == special.pad_id).any():
        key_mask = ids != special.pad_id
    return model(inputs, targets=labels, key_mask=key_mask)


def span_corruption_loss(model, ids: torch.Tensor, generator, special: SpecialTokens):
    """Mean cross-entropy of the decoder writing back the spans `span_corrupt` dropped.

    The decoder reads the target shifted right behind the model's start token (T5's
    teacher forcing), so decoder_ids[t] = target[t - 1] and it predicts target[t].
    """
    if not special.sentinel_ids:
        raise ObjectiveError("the span-corruption objective needs SpecialTokens.sentinel_ids")
    encoder_ids, targets = span_corrupt(ids, sentinel_ids=special.sentinel_ids, generator=generator)
    decoder_ids = shift_right(targets, config_of(model).decoder_start_id)
    return model(encoder_ids, decoder_ids, targets=targets)


def config_of(model: torch.nn.Module):
    """The `ModelConfig` of a model, also when wrapped by DistributedDataParallel
    (`.module`) or torch.compile (`._orig_mod`), which do not pass `.config` through."""
    while not hasattr(model, "config"):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise ObjectiveError(f"{type(model).__name__} carries no giraffe ModelConfig")
        model = inner
    return model.config


OBJECTIVES: dict[str, LossFn] = {
    "causal": causal_lm_loss,
    "masked": masked_lm_loss,
    "span": span_corruption_loss,
}
# The objective each kind of model pretrains with.
OBJECTIVE_OF_KIND = {"decoder": "causal", "encoder": "masked", "encoder-decoder": "span"}


def objective_name(arch: str) -> str:
    """ "causal" (gpt2, llama), "masked" (bert) or "span" (t5)."""
    if arch not in ARCHITECTURES:
        raise ConfigError(
            f"--arch {arch!r} is not supported; choose one of {', '.join(ARCHITECTURES)}"
        )
    return OBJECTIVE_OF_KIND[ARCHITECTURES[arch]]


def loss_for(arch: str) -> LossFn:
    """The loss function `(model, ids (B, T), generator, special) -> scalar` for an arch."""
    return OBJECTIVES[objective_name(arch)]


def _check_ids(ids: torch.Tensor, vocab_size: int, name: str) -> None:
    if ids.dim() != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ObjectiveError(
            f"{name} must be integer token ids of shape (B, T), got {ids.dtype} {tuple(ids.shape)}"
        )
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ObjectiveError(
            f"{name} holds ids outside the vocabulary (0..{vocab_size - 1}): "
            "the tokenizer and the model's vocab_size disagree"
        )
