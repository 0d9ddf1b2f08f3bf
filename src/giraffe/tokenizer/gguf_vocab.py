"""Build a `Tokenizer` from a GGUF file's vocabulary, giving llama.cpp's exact ids.

`tokenizer.ggml.model`:
- "gpt2": byte-level BPE from tokens + merges, pre-tokenized by the regexes llama.cpp
  lists for `tokenizer.ggml.pre` (src/llama-vocab.cpp, `llm_tokenizer_bpe`), e.g. SmolLM's
  "smollm" = every digit alone, then GPT-2's regex. The regexes are llama.cpp's own
  strings, applied one after another (each splits the previous pieces). An unknown pre
  type is an error, as in llama.cpp: guessing gives wrong ids without a word of warning.
  Every behaviour in PRE_TOKENIZERS is checked against llama.cpp's ids in the tests.
  Decoding removes spaces as llama.cpp's `clean_spaces` does, for the names it applies to.
- "llama": SentencePiece-style vocabulary with scores and <0xNN> byte fallback. llama.cpp
  (`llm_tokenizer_spm`) starts from single characters and keeps merging the adjacent pair
  whose joined text is a token with the highest score (ties: the leftmost); so does
  `spm_merge.ScoreMerger`, run as the pre-tokenizer, each piece it leaves looked up whole.
  Saved as tokenizer.json, it becomes `tokenizers`' BPE with every (left, right) split of
  every token as a merge ranked by that token's score (`_with_ranked_merges`, whose known
  differences are none met in real vocabularies).
Control, user-defined and unknown tokens become added tokens, parsed inside text as
llama.cpp's `parse_special=True` does. The way back, `gguf_tokenizer_fields`, hands GGUF
writers the fields of a byte-level BPE tokenizer. This module reads metadata only, never
tensors, and writes no files.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from giraffe.files.gguf_reader import FastGGUFReader
from giraffe.tokenizer.spm_merge import ScoreMerger
from giraffe.tokenizer.tokenizer import SpecialTokens, Tokenizer, TokenizerError, from_backend

# llama.cpp token types (gguf spec `tokenizer.ggml.token_type`)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# Token texts llama.cpp treats as end of generation (and as control tokens) whatever their
# type: its end-of-turn list, "</s>", and the fill-in-the-middle pad/repo/file separators
# (a code model that writes one has left the file it was asked to complete).
EOG_TEXTS = frozenset(
    ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>")
    + ("<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>", "</s>")
    + ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<|fim_repo|>", "<|repo_name|>", "<fim-repo>")
    + ("<|file_sep|>",)
)
# Fill-in-the-middle markers llama.cpp makes control tokens (parsed in text, never merged).
FIM_TEXTS = frozenset(
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<fim-prefix>", "<fim-suffix>")
    + ("<fim-middle>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>")
)
_CONTROL_TEXTS = EOG_TEXTS | FIM_TEXTS


@dataclass(frozen=True)
class PreTokenizer:
    name: str  # the tokenizer.ggml.pre value written back for this behaviour
    regexes: tuple[str, ...]  # applied in order, each splitting the pieces of the last
    ignore_merges: bool = False  # a piece that is itself a token skips BPE (Llama 3)
    add_bos: bool = False  # llama.cpp's default when the file has no add_bos_token


# The regexes are llama.cpp's strings verbatim (llama-vocab.cpp): where llama.cpp rewrote
# a tokenizer.json regex (e.g. `(?i:'s)` -> `'[sS]`), its version is the oracle.
_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DEFAULT = PreTokenizer("default", (r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"))
_GPT2 = PreTokenizer("gpt-2", (GPT2,))
_DIGITS_GPT2 = PreTokenizer("smollm", (r"\p{N}", GPT2))
_LLAMA3 = PreTokenizer("llama-bpe", (LLAMA3,), ignore_merges=True, add_bos=True)
_LLAMA3_MERGES = PreTokenizer("dbrx", (LLAMA3,))
_QWEN2 = PreTokenizer("qwen2", (QWEN2,))
_FALCON = PreTokenizer("falcon", (r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"))
_DEEPSEEK_CODER = PreTokenizer(
    "deepseek-coder", ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}")
)
# From here on, C++ string literals pasted as they are (Python reads the escapes alike).
_DEEPSEEK_V3 = PreTokenizer(
    "deepseek-v3",
    (
        "\\p{N}{1,3}",
        "[一-龥぀-ゟ゠-ヿ]+",
        "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
    ),
)
_UPPER_LOWER = (
    "((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+"  # llama.cpp's stand-in for \p{Lu}*\p{Ll}+
)
_LOWER_UPPER = "((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*"
_TEKKEN = PreTokenizer(
    "tekken",
    (
        f"[^\\r\\n\\p{{L}}\\p{{N}}]?{_UPPER_LOWER}|[^\\r\\n\\p{{L}}\\p{{N}}]?{_LOWER_UPPER}"
        "|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ),
    ignore_merges=True,
    add_bos=True,
)
_GPT4O = PreTokenizer(
    "gpt-4o",
    (
        f"[^\\r\\n\\p{{L}}\\p{{N}}]?{_UPPER_LOWER}{_CONTRACTIONS}?"
        f"|[^\\r\\n\\p{{L}}\\p{{N}}]?{_LOWER_UPPER}{_CONTRACTIONS}?"
        "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ),
)
# Qwen 3.5: QWEN2 with combining marks (\p{M}) kept with their letters.
_QWEN35 = PreTokenizer(
    "qwen35",
    (
        _CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}"
        "| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ),
)
# DeepSeek LLM: the cased letters (\p{LC}) spelled out as ranges. Some endpoints are Greek
# and letterlike symbols whose NFC form is another code point (U+1F7D, U+1FBE, U+1FD3,
# U+1FDB, U+2126, U+212A); written as escapes so that no editor's normalisation turns a
# range like U+1F5F-U+1F7D into the empty U+1F5F-U+03CE, which Oniguruma rejects.
_CASED = (
    "A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚ"
    "Ḁ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝ\u1f5f-\u1f7dᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌ\u1fd0-\u1fd3\u1fd6-\u1fdbῠ-Ῥῲ-ῴῶ-ῼ"
    "ℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212a-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ"
    "\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2"
    "\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943"
)
_DEEPSEEK_LLM = PreTokenizer(
    "deepseek-llm",
    (
        "[\r\n]",
        f"\\s?[{_CASED}]+",
        "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
        "\\s+$",
        "[一-龥ࠀ-一가-퟿]+",
        "\\p{N}+",
    ),
)
_PORO = PreTokenizer("poro-chat", (" ?[^(\\s|.,!?…。，、।۔،)]+",))
_VIKING = PreTokenizer("viking", (" ?[^(\\s|.,!?…。，、।۔،)]+", "\\p{N}"))
_SEED_CODER = PreTokenizer(
    "seed-coder",
    (
        _CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+"
        "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ),
)
_BAILINGMOE = PreTokenizer(
    "bailingmoe",
    (
        "'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
        "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+",
    ),
)
_UFAKZEKA = PreTokenizer(  # Qwen2's regex without the English contractions
    "ufakzeka",
    (
        "[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
        "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ),
)
_LAGUNA = PreTokenizer("laguna", ("[^\\n]+|[\\n]+", QWEN2))
_EXAONE_MOE = PreTokenizer(
    "exaone-moe",
    (
        _CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?(?:\\p{L}\\p{M}*(?: \\p{L}\\p{M}*)*)+"
        "|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]?|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+",
    ),
)
_MINICPM5 = PreTokenizer(
    "minicpm5",
    (
        "\\p{N}{1,3}",
        _CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}+| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
        "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ),
)
# llama.cpp splits digit runs into threes from the right with a zero-width regex,
# "(?=(\\d{3})+(?!\\d))"; `tokenizers` cannot split at empty matches, so the groups are
# matched instead ([0-9]: ECMAScript's \\d, which llama.cpp's std::regex uses here).
_SUPERBPE = PreTokenizer("superbpe", ("\\p{N}+", "[0-9]{1,3}(?=(?:[0-9]{3})*(?![0-9]))"))
# Tiny Aya: digits in threes from the right up to a word boundary (ECMAScript's \\b, ASCII
# word characters), then the tekken-style word regex with \\p{Lu}... classes.
_TINY_AYA = PreTokenizer(
    "tiny_aya",
    (
        "[0-9]{1,3}(?=(?:[0-9]{3})*(?![A-Za-z0-9_]))",
        "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
        + _CONTRACTIONS
        + "?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*"
        + _CONTRACTIONS
        + "?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ),
)
_CHAMELEON = PreTokenizer(
    "chameleon",
    (
        "<sentinel:[0-9]+>",
        "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
        "([\\t\\n]|    |  )",
        "\\p{N}",
        "[\\p{P}!-/:-@\\[-`{-~]",
        GPT2,
    ),
    add_bos=True,
)
# tokenizer.ggml.pre -> behaviour, grouped as llama.cpp's llama_vocab::impl::load groups them
PRE_TOKENIZERS = {
    "default": _DEFAULT,
    **dict.fromkeys(
        ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de")
        + ("a.x-4.0", "mellum", "modern-bert", "roberta-bpe", "jina-v1-en", "jina-v2-code")
        + ("mpt", "olmo", "jais", "trillion", "granite-docling", "exaone4"),
        _GPT2,
    ),
    **dict.fromkeys(
        ("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"),
        _DIGITS_GPT2,
    ),
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0"),
        _LLAMA3,
    ),
    **dict.fromkeys(("dbrx", "smaug-bpe", "chatglm-bpe", "glm4"), _LLAMA3_MERGES),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez", "stablelm2", "hunyuan"), _QWEN2),
    "falcon": _FALCON,
    "deepseek-coder": _DEEPSEEK_CODER,
    "deepseek-llm": _DEEPSEEK_LLM,
    "qwen35": _QWEN35,
    **dict.fromkeys(("deepseek-v3", "hunyuan-dense"), _DEEPSEEK_V3),
    "tekken": _TEKKEN,
    **dict.fromkeys(("gpt-4o", "llama4"), _GPT4O),
    **dict.fromkeys(("poro-chat", "bloom", "gpt3-finnish"), _PORO),
    "viking": _VIKING,
    **dict.fromkeys(("grok-2", "solar-open"), _QWEN2),
    "seed-coder": _SEED_CODER,
    **dict.fromkeys(("bailingmoe", "llada-moe"), _BAILINGMOE),
    "minimax-m2": _GPT4O,
    "lfm2": _LLAMA3,
    "mellum2": _DIGITS_GPT2,
    "ufakzeka": _UFAKZEKA,
    "laguna": _LAGUNA,
    "exaone-moe": _EXAONE_MOE,
    "minicpm5": _MINICPM5,
    "chameleon": _CHAMELEON,
    "superbpe": _SUPERBPE,
    "tiny_aya": _TINY_AYA,
}

# llama.cpp's detokenize removes the space before ?!., and before 's 'm 're 've, and
# around a lone ' (its `clean_spaces`, after Hugging Face's clean_up_tokenization_spaces)
# for every BPE vocabulary except these pre-tokenizer names (llama-vocab.cpp).
NO_CLEAN_SPACES = frozenset(
    ("deepseek-llm", "deepseek-coder", "deepseek-v3", "command-r", "qwen2", "qwen35")
    + ("deepseek-r1-qwen", "poro-chat", "viking", "tekken", "smollm", "gpt-4o", "llama4")
    + ("trillion", "hunyuan", "hunyuan-dense", "grok-2", "solar-open", "seed-coder")
    + ("bailingmoe", "llada-moe", "minimax-m2", "ufakzeka", "laguna", "chameleon", "superbpe")
    + ("tiny_aya",)
)
# The three passes, in llama.cpp's order, each a regex replacement on the decoded text.
_CLEAN_SPACES = ((" (?=[?!.,])", ""), (" ' ", "'"), (" (?='(?:[sm]|re|ve))", ""))


def gguf_metadata(path_or_reader) -> dict[str, object]:
    """Every key/value field of a GGUF file as plain Python values (str, int, float, bool, list)."""
    reader = _reader(path_or_reader)
    return {
        key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")
    }


def _reader(path_or_reader):
    if not isinstance(path_or_reader, (str, os.PathLike)):
        return path_or_reader  # a FastGGUFReader or gguf.GGUFReader already open
    try:
        return FastGGUFReader(path_or_reader)
    except FileNotFoundError:
        raise TokenizerError(f"{path_or_reader} not found") from None
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{path_or_reader} is not a readable GGUF file ({e})") from None


def tokenizer_from_gguf(path_or_reader) -> Tokenizer:
    """The tokenizer stored in a GGUF file (a path, or a reader already open)."""
    name = str(path_or_reader) if isinstance(path_or_reader, (str, os.PathLike)) else "GGUF"
    tok = tokenizer_from_metadata(gguf_metadata(path_or_reader), name)
    source = getattr(path_or_reader, "path", path_or_reader)
    tok.gguf_source = Path(source) if isinstance(source, (str, os.PathLike)) else None
    return tok


def tokenizer_from_metadata(meta: dict[str, object], name: str = "GGUF") -> Tokenizer:
    """The tokenizer described by GGUF key/values (as `gguf_metadata` returns them)."""
    vocab = _Vocab(meta, name)
    kind, pre, portable = vocab.get("model"), None, None
    if kind == "gpt2":
        pre = _pre_tokenizer(vocab.get("pre"), name)
        tok = _byte_level_bpe(vocab, pre, vocab.get("pre", "default") not in NO_CLEAN_SPACES)
        defaults = {"add_bos": pre.add_bos, "add_eos": False}
    elif kind == "llama":
        tok, portable = _sentencepiece_bpe(vocab)
        defaults = {"add_bos": True, "add_eos": False, "bos": 1, "eos": 2, "unk": 0}
    elif kind == "bert":
        tok = _wordpiece(vocab)
        defaults = {"add_bos": True, "add_eos": False, "add_sep": True}
        defaults |= {"bos": 101, "sep": 102, "unk": 100, "pad": 0}  # llama.cpp's WPM defaults
    elif kind == "t5":
        tok = _unigram(vocab)
        defaults = {"add_bos": False, "add_eos": True, "eos": 1, "unk": 2, "pad": 0}
    elif kind is None:
        raise TokenizerError(f"{name} has no tokenizer.ggml.model: it carries no tokenizer")
    else:
        raise TokenizerError(
            f"{name}: GGUF tokenizer model {kind!r} is not supported "
            "(giraffe reads 'gpt2' byte-level BPE, 'llama' SentencePiece, 'bert' WordPiece "
            "and 't5' Unigram vocabularies)"
        )
    _add_special(tok, vocab)
    special = _special_tokens(vocab, defaults, meta.get("tokenizer.chat_template"))
    _add_bos_eos(tok, vocab, special, defaults)
    gguf_pre = vocab.get("pre", "default") if pre else None
    return from_backend(
        tok, special, name, byte_level=pre is not None, gguf_pre=gguf_pre, portable=portable
    )


class _Vocab:
    """tokenizer.ggml.* fields, checked as llama.cpp checks them before building anything."""

    def __init__(self, meta: dict[str, object], name: str) -> None:
        self.meta, self.name = meta, name
        tokens = self.get("tokens")
        if not tokens:
            raise TokenizerError(f"{name} has no tokenizer.ggml.tokens: it carries no vocabulary")
        # (set(map(type, ...)): a third of the time of an all(isinstance) loop on 262k tokens)
        if not isinstance(tokens, list) or set(map(type, tokens)) != {str}:
            raise TokenizerError(f"{name}: tokenizer.ggml.tokens must be a list of strings")
        # llama.cpp renames empty tokens so that every id keeps a text of its own
        self.tokens = (
            [t or f"[EMPTY_{i}]" for i, t in enumerate(tokens)] if "" in tokens else tokens
        )
        self.ids = dict(zip(self.tokens, range(len(self.tokens)), strict=True))
        if len(self.ids) != len(self.tokens):
            seen: set[str] = set()
            dup = next(t for t in self.tokens if t in seen or seen.add(t))
            raise TokenizerError(f"{name}: token {dup!r} appears twice in tokenizer.ggml.tokens")
        self.types = self._per_token("token_type", NORMAL)
        self.scores = self._per_token("scores", 0.0)
        for i in self.ids_of(_CONTROL_TEXTS):  # llama.cpp makes these control tokens
            if self.types[i] not in (CONTROL, UNKNOWN):
                self.types[i] = CONTROL

    def ids_of(self, texts) -> list[int]:
        """The ids of those of `texts` the vocabulary has."""
        return [self.ids[t] for t in texts if t in self.ids]

    def get(self, key: str, default=None):
        value = self.meta.get(f"tokenizer.ggml.{key}")
        return default if value is None else value

    def _per_token(self, key: str, default) -> list:
        values = self.get(key)
        if values is None:
            return [default] * len(self.tokens)
        if not isinstance(values, list) or len(values) < len(self.tokens):
            raise TokenizerError(
                f"{self.name}: tokenizer.ggml.{key} has fewer entries than the "
                f"{len(self.tokens)} tokens; the file is damaged"
            )
        return list(values[: len(self.tokens)])

    def token_id(self, key: str, default: int | None) -> int | None:
        """A special token id field; out-of-range ids are ignored, as llama.cpp does."""
        value = self.get(f"{key}_token_id", default)
        if value is None or 0 <= value < len(self.tokens):
            return value
        warnings.warn(
            f"{self.name}: tokenizer.ggml.{key}_token_id = {value} is outside the vocabulary "
            f"({len(self.tokens)} tokens); ignored",
            stacklevel=3,
        )
        return default if default is not None and default < len(self.tokens) else None


def _pre_tokenizer(pre: str | None, name: str) -> PreTokenizer:
    if pre is None:  # old conversions; llama.cpp warns the same way and uses "default"
        warnings.warn(
            f"{name} has no tokenizer.ggml.pre: using llama.cpp's 'default' pre-tokenizer, "
            "which may split text differently from the model's training; reconvert the model",
            stacklevel=3,
        )
        return PRE_TOKENIZERS["default"]
    if pre not in PRE_TOKENIZERS:
        raise TokenizerError(
            f"{name}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported, and guessing "
            f"would give wrong ids; supported: {', '.join(sorted(PRE_TOKENIZERS))}"
        )
    return PRE_TOKENIZERS[pre]


def _byte_level_bpe(vocab: _Vocab, pre: PreTokenizer, clean_spaces: bool) -> HFTokenizer:
    merges = vocab.get("merges")
    if not merges:
        raise TokenizerError(f"{vocab.name}: a 'gpt2' vocabulary needs tokenizer.ggml.merges")
    pairs = []
    for merge in merges:
        cut = merge.find(" ", 1)  # as llama.cpp: the first space after the first character
        pairs.append((merge[:cut], merge[cut + 1 :]) if cut > 0 else (merge, ""))
    try:
        model = models.BPE(
            vocab=vocab.ids, merges=pairs, fuse_unk=False, ignore_merges=pre.ignore_merges
        )
    except Exception as e:  # tokenizers rejects merges whose parts are not tokens
        raise TokenizerError(f"{vocab.name}: tokenizer.ggml.merges is inconsistent ({e})") from None
    tok = HFTokenizer(model)
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes]
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    clean = _CLEAN_SPACES if clean_spaces else ()
    tok.decoder = decoders.Sequence(
        [decoders.ByteLevel(), *(decoders.Replace(Regex(a), b) for a, b in clean)]
    )
    return tok


def _sentencepiece_bpe(vocab: _Vocab) -> tuple[HFTokenizer, Callable[[], HFTokenizer]]:
    """llama.cpp's score merging (`spm_merge.ScoreMerger`) as the pre-tokenizer, and a BPE
    with no merges that maps each piece it leaves to its id (`ignore_merges`: a piece that
    is a token is looked up whole) or, for a character the vocabulary lacks, to its bytes;
    and how to make its tokenizer.json form when one is saved (`_with_ranked_merges`)."""
    unk_id = vocab.token_id("unknown", 0)
    unk = vocab.tokens[unk_id] if unk_id is not None else None
    tok = HFTokenizer(_spm_model(vocab.ids, unk, merges=[]))
    # llama.cpp: spaces become U+2581, and each text fragment (the whole text, or the text
    # after a special token) starts with one unless add_space_prefix is false.
    prefix = bool(vocab.get("add_space_prefix", True))
    steps = [normalizers.Prepend("\u2581")] if prefix else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "\u2581")])
    merger = ScoreMerger(dict(zip(vocab.tokens, vocab.scores, strict=True)))
    tok.pre_tokenizer = pre_tokenizers.PreTokenizer.custom(merger)
    strip = [decoders.Strip(" ", 1, 0)] if prefix else []
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), *strip]
    )
    return tok, lambda: _with_ranked_merges(tok, merger)


def _spm_model(ids: dict[str, int], unk: str | None, merges: list) -> models.BPE:
    return models.BPE(
        vocab=ids, merges=merges, unk_token=unk, byte_fallback=True, fuse_unk=True,
        ignore_merges=not merges,
    )  # fmt: skip


def _with_ranked_merges(tok: HFTokenizer, merger: ScoreMerger) -> HFTokenizer:
    """The same tokenizer with `tokenizers`' own BPE (ranked merges) in place of the
    merger, which a tokenizer.json cannot hold: what `Tokenizer.save` writes. Known
    differences from the merger, none met in real SentencePiece vocabularies: equal scores
    break ties by token id there (by position here and in llama.cpp), and a character
    missing from the vocabulary falls back to bytes at once there, while merging could
    still join it into a longer piece."""
    ids = tok.get_vocab(with_added_tokens=False)
    tokens = sorted(ids, key=ids.__getitem__)
    merges = _score_merges(tokens, [merger.score[t] for t in tokens])
    out = HFTokenizer(_spm_model(ids, tok.model.unk_token, merges))
    out.normalizer, out.decoder = tok.normalizer, tok.decoder
    out.post_processor = tok.post_processor
    added = tok.get_added_tokens_decoder()
    out.add_tokens([added[i] for i in sorted(added)])
    return out


def _score_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """SentencePiece BPE as ranked merges: every split of a piece into two pieces, ranked by
    the whole piece's score (best first; ties by id, the sort being stable). Applying the
    lowest-ranked adjacent pair first is then SentencePiece's "merge the best-scoring
    pair". Each merge holds the vocabulary's own string objects, not fresh slices (those
    took ~100 MB more for Gemma's 515k merges, and left the heap fragmented)."""
    own = {t: t for t in tokens}
    find = own.get
    merges = []
    for i in sorted(range(len(tokens)), key=scores.__getitem__, reverse=True):
        token = tokens[i]
        for cut in range(1, len(token)):
            head = find(token[:cut])
            if head is not None:
                tail = find(token[cut:])
                if tail is not None:
                    merges.append((head, tail))
    return merges


def _wordpiece(vocab: _Vocab) -> HFTokenizer:
    """BERT's WordPiece as llama.cpp stores and runs it (`llm_tokenizer_wpm`).

    The converter rewrites the vocabulary to a "phantom space" form: a word-initial piece
    `x` becomes `▁x`, a continuation `##x` becomes `x`. llama.cpp decomposes the text
    (NFD) and drops its combining marks, drops control characters, lowercases, splits at whitespace, punctuation, ASCII
    symbols and CJK characters, puts `▁` before each word and matches the longest piece
    from the left, again and again; a word with an unmatched rest becomes [UNK]. Here: the
    same normalisation, BERT's pre-tokenizer, `▁` prepended to each piece (Metaspace), and
    a WordPiece model whose continuation prefix is empty.
    """
    unk_id = vocab.token_id("unknown", 100)
    unk = vocab.tokens[unk_id] if unk_id is not None else "[UNK]"
    model = models.WordPiece(
        vocab=vocab.ids, unk_token=unk, continuing_subword_prefix="", max_input_chars_per_word=10**6
    )
    tok = HFTokenizer(model)
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.BertPreTokenizer(),
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=False),
        ]
    )
    # llama.cpp: each piece's text with ▁ read as a space, then its clean_spaces passes.
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("\u2581", " "),
            decoders.Fuse(),
            *(decoders.Replace(Regex(a), b) for a, b in _CLEAN_SPACES),
        ]
    )
    return tok


def _unigram(vocab: _Vocab) -> HFTokenizer:
    """T5's Unigram model as llama.cpp runs it (`llm_tokenizer_ugm`).

    Text is normalised by the SentencePiece charsmap the file carries, spaces become `▁`,
    and with `remove_extra_whitespaces` runs of spaces collapse and the ends are trimmed;
    a `▁` goes before the text when `add_space_prefix` is on (or spaces are merged). Then
    the best-scoring segmentation (Viterbi) over the pieces, an unknown character scoring
    the lowest normal score minus 10, consecutive unknowns fused: the same rules as
    `tokenizers`' Unigram. User-defined pieces score 0, as in llama.cpp.
    """
    if vocab.get("treat_whitespace_as_suffix", False):
        raise TokenizerError(
            f"{vocab.name}: tokenizer.ggml.treat_whitespace_as_suffix is not supported"
        )
    scores = [
        float(s) if k in (NORMAL, UNUSED) else 0.0
        for s, k in zip(vocab.scores, vocab.types, strict=True)
    ]
    unk_id = vocab.token_id("unknown", 2)
    model = models.Unigram(list(zip(vocab.tokens, scores, strict=True)), unk_id, False)
    tok = HFTokenizer(model)
    merge = bool(vocab.get("remove_extra_whitespaces", False))
    prefix = bool(vocab.get("add_space_prefix", False))
    charsmap = vocab.get("precompiled_charsmap")
    steps = [normalizers.Precompiled(bytes(charsmap))] if charsmap else []
    if merge:  # (\A, \z: Oniguruma's ^ and $ also match at line breaks)
        steps += [
            normalizers.Replace(Regex(" +"), " "),
            normalizers.Replace(Regex("\\A | \\z"), ""),
        ]
    if merge or prefix:
        # llama.cpp puts the ▁ before the first non-space character: text of spaces only
        # gets none. Prepend (which leaves an empty text empty), then take it back there.
        steps += [normalizers.Prepend(" "), normalizers.Replace(Regex("\\A (?= *\\z)"), "")]
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "\u2581")])
    strip = [decoders.Strip(" ", 1, 0)] if prefix else []
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.Fuse(), *strip])
    return tok


def _add_special(tok: HFTokenizer, vocab: _Vocab) -> None:
    # Control and unknown tokens vanish from decode(skip_special_tokens=True), as in
    # llama.cpp's token_to_piece(special=False); user-defined ones are ordinary text there.
    added = [
        AddedToken(t, special=k != USER_DEFINED, normalized=False)
        for t, k in zip(vocab.tokens, vocab.types, strict=True)
        if k in (CONTROL, USER_DEFINED, UNKNOWN)
    ]
    tok.add_tokens(added)


def _special_tokens(vocab: _Vocab, defaults: dict, template) -> SpecialTokens:
    eos = vocab.token_id("eos", defaults.get("eos"))
    stops = {vocab.token_id("eot", None), vocab.token_id("eom", None), eos}
    stops |= set(vocab.ids_of(EOG_TEXTS))
    return SpecialTokens(
        bos_id=vocab.token_id("bos", defaults.get("bos")),
        eos_id=eos,
        pad_id=vocab.token_id("padding", defaults.get("pad")),
        stop_ids=frozenset(i for i in stops if i is not None),
        add_bos=bool(vocab.get("add_bos_token", defaults["add_bos"])),
        chat_template=template if isinstance(template, str) else None,
    )


def _add_bos_eos(tok: HFTokenizer, vocab: _Vocab, special: SpecialTokens, defaults: dict):
    """encode(add_special_tokens=True) adds bos/eos as the file's add_*_token flags say."""
    add_eos = bool(vocab.get("add_eos_token", defaults["add_eos"]))
    add_sep = bool(vocab.get("add_sep_token", defaults.get("add_sep", False)))
    sep_id = vocab.token_id("seperator", defaults.get("sep"))  # the GGUF key's spelling
    ends = [
        ("bos", "bos", special.bos_id, special.add_bos),
        ("eos", "eos", special.eos_id, add_eos),
    ]
    ends.append(("sep", "seperator", sep_id, add_sep))
    for flag, key, token_id, wanted in ends:
        if wanted and token_id is None:
            raise TokenizerError(
                f"{vocab.name}: tokenizer.ggml.add_{flag}_token is true, "
                f"but tokenizer.ggml.{key}_token_id is not set"
            )
    bos = [vocab.tokens[special.bos_id]] if special.add_bos else []
    eos = [vocab.tokens[special.eos_id]] if add_eos else []
    eos += [vocab.tokens[sep_id]] if add_sep else []
    if bos or eos:
        tok.post_processor = processors.TemplateProcessing(
            single=[*bos, "$A", *eos],
            pair=[*bos, "$A", *eos, *bos, "$B:1", *eos],
            special_tokens=[(t, vocab.ids[t]) for t in dict.fromkeys(bos + eos)],
        )


# The tokenizer keys a GGUF vocabulary may carry, with their GGUF value types: what a
# writer needs to copy a vocabulary read from GGUF back out as llama.cpp wrote it.
GGUF_TOKENIZER_KEYS = {
    "tokenizer.ggml.model": "str", "tokenizer.ggml.pre": "str",
    "tokenizer.ggml.tokens": "str[]", "tokenizer.ggml.scores": "f32[]",
    "tokenizer.ggml.token_type": "i32[]", "tokenizer.ggml.merges": "str[]",
    "tokenizer.ggml.precompiled_charsmap": "u8[]", "tokenizer.ggml.token_type_count": "u32",
    **{f"tokenizer.ggml.{name}_token_id": "u32" for name in (
        "bos", "eos", "unknown", "seperator", "padding", "mask", "eot", "eom", "cls",
        "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep")},
    **{f"tokenizer.ggml.{name}": "bool" for name in (
        "add_bos_token", "add_eos_token", "add_sep_token", "add_space_prefix",
        "remove_extra_whitespaces")},
    "tokenizer.chat_template": "str",
}  # fmt: skip


def gguf_tokenizer_fields(tok: Tokenizer) -> dict:
    """What a GGUF file needs to carry this tokenizer, for writers.

    A byte-level BPE tokenizer is described from its tokenizer.json; any other kind
    must have come from a GGUF file, whose tokenizer keys are copied as they were
    (`{"copy": [(key, type, value), ...]}`, types as in `GGUF_TOKENIZER_KEYS`).
    """
    data = tok.backend_json()
    model = data["model"]
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(data.get("decoder")):
        source = getattr(tok, "gguf_source", None)
        if source is not None:
            return {"copy": _gguf_tokenizer_keys(source, tok)}
        raise TokenizerError(
            f"{tok.name}: only byte-level BPE tokenizers, or vocabularies read from a GGUF "
            f"file, can be written to GGUF (this one is {model.get('type')} from a "
            "tokenizer.json): keep the original GGUF, or convert with llama.cpp"
        )
    if data.get("normalizer") is not None:  # llama.cpp's BPE has no normalizer step
        raise TokenizerError(
            f"{tok.name}: its tokenizer.json normalizes text first, which llama.cpp would not "
            "do; it cannot be written to GGUF faithfully"
        )
    tokens: list[str | None] = [None] * tok.vocab_size
    types = [NORMAL] * tok.vocab_size
    for text, i in model["vocab"].items():
        tokens[i] = text
    for added in data.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    if None in tokens:
        raise TokenizerError(
            f"{tok.name}: token id {tokens.index(None)} has no text; the vocabulary has holes"
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {
        "model": "gpt2",
        "pre": tok.gguf_pre or _pre_name(data, tok.name),
        "tokens": tokens,
        "token_types": types,
        "merges": merges,
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
        "pad_token_id": tok.pad_id,
        "add_bos_token": tok.add_bos,
        "chat_template": tok.chat_template,
    }


def _as_llama_cpp(regex: str | None) -> str | None:
    """A tokenizer.json regex in llama.cpp's spelling: its C++ regexes have no (?i:...),
    so the case-insensitive contractions Hugging Face writes are spelled out by case."""
    hf_contractions = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    return regex.replace(hf_contractions, _CONTRACTIONS) if regex else regex


def _pre_name(data: dict, name: str) -> str:
    """llama.cpp's tokenizer.ggml.pre for a tokenizer.json pre-tokenizer (PRE_TOKENIZERS inverted)."""
    pre = data.get("pre_tokenizer")
    steps = (pre or {}).get("pretokenizers") or ([pre] if pre else [])
    kinds = [s.get("type") for s in steps]
    if kinds[-1:] == ["ByteLevel"] and not steps[-1].get("add_prefix_space"):
        if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
            return "gpt-2"  # ByteLevel's own regex is GPT-2's
        if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
            return "smollm"
        splits = tuple(_as_llama_cpp(s.get("pattern", {}).get("Regex")) for s in steps[:-1])
        behaviour = (splits, bool(data["model"].get("ignore_merges")))
        for known in dict.fromkeys(PRE_TOKENIZERS.values()):
            if (known.regexes, known.ignore_merges) == behaviour:
                return known.name
    raise TokenizerError(
        f"{name}: its pre-tokenizer ({' + '.join(map(str, kinds))}) has no llama.cpp name; "
        "it cannot be written to GGUF faithfully"
    )


def _gguf_tokenizer_keys(source: Path, tok: Tokenizer) -> list[tuple[str, str, object]]:
    try:
        meta = gguf_metadata(source)
    except TokenizerError as e:
        raise TokenizerError(
            f"{tok.name}: its vocabulary is copied from {source} when writing GGUF, "
            f"and that file cannot be read now ({e})"
        ) from None
    keys = [(k, GGUF_TOKENIZER_KEYS[k], meta[k]) for k in GGUF_TOKENIZER_KEYS if k in meta]
    if tok.chat_template and "tokenizer.chat_template" not in meta:  # one set on the tokenizer
        keys.append(("tokenizer.chat_template", "str", tok.chat_template))
    return keys
