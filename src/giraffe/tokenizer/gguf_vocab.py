"""Build a `Tokenizer` from a GGUF file's vocabulary, giving llama.cpp's exact ids.

`tokenizer.ggml.model`:
- "gpt2": byte-level BPE from tokens + merges, pre-tokenized by the regexes llama.cpp
  uses for `tokenizer.ggml.pre` (llama-vocab.cpp), e.g. SmolLM's "smollm" = every digit
  alone, then GPT-2's regex. An unknown pre type is an error: guessing gives wrong ids.
- "llama": SentencePiece-style vocabulary with scores and <0xNN> byte fallback. llama.cpp
  merges the adjacent pair whose joined text has the highest score; a BPE whose merges
  are ranked by that score does the same, so that is what is built here. (One known
  difference: a character missing from the vocabulary falls back to bytes at once here,
  while llama.cpp could still merge it into a longer piece; real SentencePiece
  vocabularies contain every character of their pieces.)
Control and user-defined tokens become added tokens, parsed inside text as llama.cpp's
`parse_special=True` does. This module reads metadata only, never tensors.
"""

from __future__ import annotations

import os

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from giraffe.files.gguf_reader import FastGGUFReader
from giraffe.tokenizer.tokenizer import (
    STOP_TOKEN_TEXTS,
    SpecialTokens,
    Tokenizer,
    TokenizerError,
    from_backend,
)

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> regexes applied one after another (each splits the previous pieces)
PRE_TOKENIZER_REGEXES = {
    **dict.fromkeys(
        ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"),
        [r"\p{N}", GPT2_REGEX],
    ),
    **dict.fromkeys(("gpt-2", "gpt2", "mpt", "olmo", "jais", "trillion"), [GPT2_REGEX]),
    **dict.fromkeys(("llama-bpe", "llama3", "dbrx", "smaug-bpe"), [LLAMA3_REGEX]),
    **dict.fromkeys(("qwen2", "stablelm2", "hunyuan"), [QWEN2_REGEX]),
    "default": [r"[\p{P}\$\+<=>\^~\|]+", GPT2_REGEX, r"\p{N}+", "[0-9][0-9][0-9]"],
}
CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types


def gguf_metadata(path_or_reader) -> dict[str, object]:
    """Every key/value field of a GGUF file as plain Python values."""
    reader = _reader(path_or_reader)
    return {
        key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")
    }


def _reader(path_or_reader):
    if not isinstance(path_or_reader, (str, os.PathLike)):
        return path_or_reader
    try:
        return FastGGUFReader(path_or_reader)
    except FileNotFoundError:
        raise TokenizerError(f"{path_or_reader} not found") from None
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{path_or_reader} is not a readable GGUF file ({e})") from None


def tokenizer_from_gguf(path_or_reader) -> Tokenizer:
    reader = _reader(path_or_reader)
    name = str(path_or_reader) if isinstance(path_or_reader, (str, os.PathLike)) else "GGUF"

    def get(key, default=None):
        field = reader.fields.get(f"tokenizer.ggml.{key}")
        return default if field is None else field.contents()

    kind = get("model")
    tokens = get("tokens")
    if not tokens:
        raise TokenizerError(f"{name} has no tokenizer.ggml.tokens: it carries no vocabulary")
    if kind == "gpt2":
        tok = _byte_level_bpe(tokens, get("merges") or [], get("pre", "default"), name)
    elif kind == "llama":
        tok = _sentencepiece_bpe(tokens, get("scores"), get("add_space_prefix", True))
    else:
        raise TokenizerError(
            f"{name}: GGUF tokenizer model {kind!r} is not supported (giraffe reads 'gpt2' and 'llama')"
        )
    types = get("token_type") or [1] * len(tokens)
    _add_special(tok, tokens, types)
    bos, eos = get("bos_token_id"), get("eos_token_id")
    add_bos = bool(get("add_bos_token", kind == "llama"))
    if add_bos and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A",
            pair=f"{tokens[bos]} $A $B",
            special_tokens=[(tokens[bos], bos)],
        )
    stops = {get("eot_token_id"), get("eom_token_id")}
    stops |= {
        i
        for i, (t, k) in enumerate(zip(tokens, types, strict=True))
        if k == CONTROL and t in STOP_TOKEN_TEXTS
    }
    template = reader.fields.get("tokenizer.chat_template")
    special = SpecialTokens(
        bos_id=bos,
        eos_id=eos,
        pad_id=get("padding_token_id"),
        stop_ids=frozenset(i for i in stops if i is not None),
        add_bos=add_bos,
        chat_template=template.contents() if template is not None else None,
    )
    return from_backend(tok, special, name)


def _byte_level_bpe(tokens: list[str], merges: list[str], pre: str, name: str) -> HFTokenizer:
    if pre not in PRE_TOKENIZER_REGEXES:
        raise TokenizerError(
            f"{name}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported; "
            f"known: {', '.join(sorted(PRE_TOKENIZER_REGEXES))}"
        )
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    splits = [
        pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZER_REGEXES[pre]
    ]
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece_bpe(tokens: list[str], scores, add_space_prefix: bool) -> HFTokenizer:
    vocab = {t: i for i, t in enumerate(tokens)}
    scores = scores or [0.0] * len(tokens)
    merges = []
    for token in sorted(vocab, key=lambda t: -scores[vocab[t]]):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                merges.append((left, right))
    unk = next((t for t in ("<unk>",) if t in vocab), None)
    tok = HFTokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True, fuse_unk=True)
    )
    steps = [normalizers.Prepend("\u2581")] if add_space_prefix else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "\u2581")])
    strip = [decoders.Strip(" ", 1, 0)] if add_space_prefix else []
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), *strip]
    )
    return tok


def _add_special(tok: HFTokenizer, tokens: list[str], types: list[int]) -> None:
    added = [
        AddedToken(
            t, special=k == CONTROL, normalized=False, lstrip=False, rstrip=False, single_word=False
        )
        for t, k in zip(tokens, types, strict=True)
        if k in (CONTROL, USER_DEFINED)
    ]
    tok.add_tokens(added)
