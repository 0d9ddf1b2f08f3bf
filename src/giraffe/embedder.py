"""Sentence embeddings from giraffe's own encoder: texts -> unit vectors, (n, dim).

    enc = giraffe.load("minilm-l6")          # all-MiniLM-L6-v2, or any BERT folder
    vectors = enc.embed(["No, I am not a giraffe.", "The giraffe is tall."])  # (2, 384)

The same pipeline sentence-transformers runs for all-MiniLM-L6-v2 (Reimers & Gurevych
2019): WordPiece through the folder's `tokenizer.json` ([CLS]/[SEP] added as its
post-processor says), the encoder, the mean of the last hidden states over real (not
padding) tokens, L2 normalisation. Texts are batched sorted by length (less padding,
so less work) and come back in input order. A text longer than the model's limit is
cut to it with a warning that names it, or refused (`truncate=False`): never silently.

It reads a folder's sentence-transformers files (`sentence_bert_config.json`,
`modules.json`, the pooling config) only to learn the length limit and to refuse a
pipeline it does not reproduce (CLS or max pooling, Dense layers). It does not know
how the encoder computes (`giraffe.models.encoder`) or how weights are stored
(`giraffe.formats`).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer as WordPiece

from giraffe.config import ConfigError, InputError
from giraffe.forks import guard_forks, note_if_forked
from giraffe.formats import resolve
from giraffe.formats.hf import load_hf
from giraffe.formats.hf_config import model_kind
from giraffe.formats.registry import is_encoder  # noqa: F401 - this module's API too
from giraffe.models import Encoder
from giraffe.tokenizer.tokenizer import SpecialTokens, Tokenizer, from_backend

ST = "sentence_transformers.models."  # module type prefix in modules.json
SUPPORTED_MODULES = {ST + "Transformer", ST + "Pooling", ST + "Normalize"}


class EmbedInputError(InputError):
    """Texts the encoder cannot embed as asked (not strings, longer than its limit without
    truncate=True); the message says what to change. Any other error is giraffe's fault."""


class TruncationWarning(UserWarning):
    """Some texts were longer than the model's limit and were cut to it."""


@dataclass(frozen=True)
class Pipeline:
    """What a folder's sentence-transformers files say, as far as giraffe follows them."""

    max_tokens: int  # longest input the model sees, [CLS] and [SEP] included
    lowercase: bool = False  # sentence-transformers lowercases the text first


class SentenceEncoder:
    def __init__(
        self, model: Encoder, wordpiece: WordPiece, pipeline: Pipeline, source: str = ""
    ) -> None:
        self.model, self.source, self.pipeline = model.eval(), source, pipeline
        padding = wordpiece.padding or {}
        self.pad_id = padding.get("pad_id", wordpiece.token_to_id("[PAD]") or 0)
        # The tokenizer.json of MiniLM asks for padding and truncation at 128; like
        # transformers, pad and cut here instead, where it can be reported.
        wordpiece.no_padding()
        wordpiece.no_truncation()
        self._wordpiece = wordpiece
        processor = wordpiece.post_processor
        self._n_special = processor.num_special_tokens_to_add(False) if processor else 0
        # giraffe's Tokenizer over the same vocabulary: decode, token strings, explainers.
        self.tokenizer: Tokenizer = from_backend(
            wordpiece, SpecialTokens(pad_id=self.pad_id), source, byte_level=False
        )
        if pipeline.max_tokens <= self._n_special:
            raise ConfigError(f"{source}: a limit of {pipeline.max_tokens} tokens leaves no text")

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def max_tokens(self) -> int:
        """The longest input the model sees, special tokens included."""
        return self.pipeline.max_tokens

    def count_tokens(self, text: str) -> int:
        """Tokens the model would see for `text` if it were not cut ([CLS], [SEP] counted)."""
        (text,) = _check_texts([text])
        ids = self._wordpiece.encode(self._prepare(text), add_special_tokens=False).ids
        return len(ids) + self._n_special

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens of each text without [CLS]/[SEP], in one batch (chunking sizes pieces so)."""
        texts = _check_texts(texts)
        raw = self._wordpiece.encode_batch(
            [self._prepare(t) for t in texts], add_special_tokens=False
        )
        return [len(enc.ids) for enc in raw]

    def embed(
        self,
        texts: Iterable[str] | str,
        batch_size: int = 32,
        normalize: bool = True,
        truncate: bool = True,
    ) -> np.ndarray:
        """float32 (len(texts), dim), row i for texts[i]; a lone string counts as one text.

        texts: any iterable of str (list, tuple, generator, numpy array of str).

        normalize: unit length (cosine similarity = dot product), as all-MiniLM-L6-v2 does.
        truncate: cut texts over `max_tokens` with a `TruncationWarning` naming them;
        False raises ValueError instead.
        """
        note_if_forked()
        texts = _check_texts([texts] if isinstance(texts, str) else texts)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encoded, cut = self._encode(texts)
        self._report(cut, len(texts), truncate)
        order = sorted(range(len(texts)), key=lambda i: -len(encoded[i][0]))  # longest first
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self._embed_batch([encoded[i] for i in rows], normalize).numpy()
        return out

    def _prepare(self, text: str) -> str:
        return text.lower() if self.pipeline.lowercase else text

    def _encode(self, texts: list[str]) -> tuple[list[tuple[list[int], list[int]]], list]:
        """(ids, token types) per text, cut to the limit; and the (index, length) of cut ones."""
        limit = self.max_tokens - self._n_special  # room for the text itself
        raw = self._wordpiece.encode_batch(
            [self._prepare(t) for t in texts], add_special_tokens=False
        )
        encoded, cut = [], []
        for i, enc in enumerate(raw):
            if len(enc.ids) > limit:
                cut.append((i, len(enc.ids) + self._n_special))
                enc.truncate(limit)  # keep the start, as transformers' "longest_first" does
            full = self._wordpiece.post_process(enc)  # adds [CLS] ... [SEP]
            encoded.append((full.ids, full.type_ids))
        return encoded, cut

    def _report(self, cut: list[tuple[int, int]], n: int, truncate: bool) -> None:
        if not cut:
            return
        named = ", ".join(f"#{i} ({length} tokens)" for i, length in cut[:10])
        more = f" and {len(cut) - 10} more" if len(cut) > 10 else ""
        what = (
            f"{len(cut)} of {n} texts exceed the model's limit of {self.max_tokens} tokens: "
            f"{named}{more}"
        )
        if not truncate:
            raise EmbedInputError(f"{what}; split them (count_tokens helps) or pass truncate=True")
        warnings.warn(
            f"{what}; only their first {self.max_tokens} tokens were embedded",
            TruncationWarning,
            stacklevel=3,
        )

    @torch.inference_mode()
    def _embed_batch(self, batch: list[tuple[list[int], list[int]]], normalize: bool):
        T = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), T), self.pad_id, dtype=torch.long)  # (B, T), right-padded
        types = torch.zeros((len(batch), T), dtype=torch.long)
        key_mask = torch.zeros((len(batch), T), dtype=torch.bool)
        for row, (seq, seq_types) in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
            types[row, : len(seq)] = torch.tensor(seq_types)
            key_mask[row, : len(seq)] = True
        types = types if self.model.type_embed is not None else None
        pooled = mean_pool(self.model.hidden(ids, key_mask, types), key_mask)  # (B, C)
        return F.normalize(pooled, p=2, dim=1) if normalize else pooled

    def __repr__(self) -> str:
        c = self.model.config
        return (
            f"SentenceEncoder({self.source!r}, layers={c.n_layers}, dim={self.dim}, "
            f"max_tokens={self.max_tokens})"
        )


def mean_pool(hidden: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens: (B, T, C), (B, T) bool -> (B, C)."""
    weights = key_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    counts = weights.sum(dim=1).clamp(min=1e-9)  # (B, 1); as sentence-transformers guards it
    return (hidden * weights).sum(dim=1) / counts


def _check_texts(texts) -> list[str]:
    if not isinstance(texts, Iterable) or isinstance(texts, (bytes, bytearray, Mapping)):
        raise EmbedInputError(f"embed() takes a list of strings, got {type(texts).__name__}")
    texts = list(texts)  # a tuple, a generator, a numpy array of str all do
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise EmbedInputError(
                f"embed() takes strings; item {i} is a {type(text).__name__}: {text!r:.60}"
            )
    return texts


# ---- loading ----------------------------------------------------------------------------
def load(name_or_path: str | os.PathLike) -> SentenceEncoder:
    """A registered alias (`minilm-l6`) or a Hugging Face BERT folder -> SentenceEncoder."""
    guard_forks()  # a child forked after this process computes keeps one thread
    path = resolve(name_or_path)
    if not path.is_dir() or model_kind(path) != "encoder":
        raise ConfigError(
            f"{name_or_path}: sentence embeddings need an encoder (BERT) model folder; "
            "this is a decoder - load it with giraffe.lm.load"
        )
    model = load_hf(path)
    file = path / "tokenizer.json"
    if not file.is_file():
        raise ConfigError(f"{file} not found: the encoder folder needs its WordPiece tokenizer")
    try:
        wordpiece = WordPiece.from_file(str(file))
    except Exception as e:  # tokenizers raises plain Exception subclasses on bad JSON
        raise ConfigError(f"{file} is not a valid tokenizer.json ({e})") from None
    return SentenceEncoder(model, wordpiece, read_pipeline(path, model), str(name_or_path))


def read_pipeline(folder: Path, model: Encoder) -> Pipeline:
    """The sentence-transformers files' length limit; refuses steps giraffe does not do."""
    limit = model.config.max_position_embeddings
    modules = _json(folder / "modules.json") or []
    for module in modules:
        kind = module.get("type", "")
        if kind not in SUPPORTED_MODULES:
            raise ConfigError(
                f"{folder / 'modules.json'}: module {kind!r} is not supported; giraffe "
                "embeds with Transformer -> mean Pooling -> Normalize"
            )
        if kind == ST + "Pooling":
            _check_pooling(folder / module.get("path", "") / "config.json")
    st_config = _json(folder / "sentence_bert_config.json") or {}
    max_tokens = min(st_config.get("max_seq_length") or limit, limit)
    return Pipeline(max_tokens=max_tokens, lowercase=bool(st_config.get("do_lower_case")))


def _check_pooling(path: Path) -> None:
    config = _json(path) or {}
    modes = sorted(k for k, v in config.items() if k.startswith("pooling_mode") and v is True)
    if config.get("pooling_mode") not in (None, "mean") or modes not in (
        [],
        ["pooling_mode_mean_tokens"],
    ):
        raise ConfigError(f"{path}: giraffe pools by mean over tokens only; this asks for {modes}")


def _json(path: Path) -> dict | list | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
