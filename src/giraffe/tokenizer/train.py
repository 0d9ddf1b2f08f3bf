"""Train a tokenizer on text: character-level, word-level (with an unknown token) or
byte-level BPE, on the `tokenizers` library's trainers.

Every trained tokenizer carries the same special tokens at the start of its vocabulary
(ids 0..): <|pad|>, <|bos|>, <|eos|>, [MASK], <|unk|> and the chat tokens <|im_start|> /
<|im_end|> (ChatML), so one tokenizer serves GPT-style, BERT-style and chat training.
`save` writes tokenizer.json and tokenizer_config.json, which both giraffe's loader and
`transformers.AutoTokenizer` read.

It does not know where the text comes from (the caller passes an iterator of strings)
nor models: a model's vocab_size is set from `len(tokenizer)` by the trainer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from giraffe.tokenizer.tokenizer import SpecialTokens, Tokenizer, TokenizerError, from_backend

PAD, BOS, EOS, MASK, UNK = "<|pad|>", "<|bos|>", "<|eos|>", "[MASK]", "<|unk|>"
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, MASK, UNK, *CHAT_TOKENS)
KINDS = ("char", "word", "bpe")
# ChatML, the format of the chat tokens above (as SmolLM2 and Qwen2 write it).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class TokenizerTrainingError(TokenizerError):
    """The requested tokenizer cannot be trained (unknown kind, vocabulary too small, no text)."""


def train_tokenizer(texts: Iterable[str], kind: str = "bpe", vocab_size: int = 8192) -> Tokenizer:
    """A tokenizer of `kind` trained on `texts`, with at most `vocab_size` entries.

    char: one token per character seen (vocab_size caps how many, the rarest map to
    <|unk|>); word: whitespace/punctuation-split words, the most frequent vocab_size of
    them, the rest <|unk|>; bpe: GPT-2's byte-level BPE (256 byte tokens + merges, so
    nothing is ever unknown).
    """
    if kind not in KINDS:
        raise TokenizerTrainingError(f"--kind {kind!r} is not known; choose one of {KINDS}")
    least = len(SPECIAL_TOKENS) + (256 if kind == "bpe" else 1)
    if vocab_size < least:
        raise TokenizerTrainingError(
            f"--vocab-size {vocab_size} is too small for a {kind} tokenizer: its "
            f"{len(SPECIAL_TOKENS)} special tokens {', '.join(SPECIAL_TOKENS)}"
            + (" and 256 byte tokens" if kind == "bpe" else " and at least one token")
            + f" need {least}; give --vocab-size {least} or more"
        )
    tok, trainer = _blank(kind, vocab_size)
    seen = _Counted(texts)
    tok.train_from_iterator(seen, trainer=trainer)
    if seen.count == 0:
        raise TokenizerTrainingError("no text to train the tokenizer on (every input was empty)")
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    special = SpecialTokens(
        bos_id=ids[BOS],
        eos_id=ids[EOS],
        pad_id=ids[PAD],
        chat_template=CHATML_TEMPLATE,
        stop_ids=frozenset({ids[EOS], ids["<|im_end|>"]}),
    )
    return from_backend(tok, special, f"{kind} tokenizer ({tok.get_vocab_size()} tokens)")


def _specials() -> list[AddedToken]:
    # [MASK] takes the space before it (lstrip, as RoBERTa's <mask>): in "the [MASK] loop"
    # the masked word is " break" with its space, the form the model saw in training.
    return [AddedToken(t, special=True, lstrip=t == MASK, normalized=False) for t in SPECIAL_TOKENS]


def _blank(kind: str, vocab_size: int):
    if kind == "bpe":
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=_specials(),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif kind == "word":
        tok = HFTokenizer(models.WordLevel(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
        )
        tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
        trainer = trainers.WordLevelTrainer(
            vocab_size=vocab_size, special_tokens=_specials(), show_progress=False
        )
    else:  # char: BPE with no merges is exactly a character vocabulary
        tok = HFTokenizer(models.BPE(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
        tok.decoder = decoders.Fuse()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=_specials(),
            limit_alphabet=vocab_size - len(SPECIAL_TOKENS),
            show_progress=False,
        )
    return tok, trainer


class _Counted:
    """An iterator over texts that counts the non-empty ones it handed out."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts, self.count = texts, 0

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            if text:
                self.count += 1
                yield text
