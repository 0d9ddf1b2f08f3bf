"""`LanguageModel`: a model + its tokenizer + chat template + generation defaults.

The public facade that the CLI, the server and users share (the three doors call the
same functions). It turns text into ids, drives `giraffe.generate`, and turns ids back
into text: streaming without half characters, stop strings, chat rendering. A model
opened on its saved compiled step (`giraffe.formats.saved_step`) generates one sequence
with no torch imported; the torch model is built from the same file the first time
something needs it (`LanguageModel.model`). It does not know file formats beyond asking
`giraffe.formats` for weights and `giraffe.tokenizer` for the vocabulary.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from giraffe.collector import collector_paused
from giraffe.forks import guard_forks
from giraffe.formats.gguf_config import open_gguf
from giraffe.formats.hf_config import model_kind, read_json
from giraffe.formats.registry import (  # noqa: F401 - load_tokenizer: the API's
    DEFAULT_CHAT_MODEL,
    load_tokenizer,
    resolve,
)
from giraffe.formats.saved_step import open_saved_step
from giraffe.generate import constraint
from giraffe.generate.engine import DecodeSession, GenerationError
from giraffe.generate.params import DecodingConfig, DecodingError
from giraffe.generate.sequence import stop_set
from giraffe.generate.stops import StopText, TextStream
from giraffe.quant import library
from giraffe.quant.step_model import StepModel
from giraffe.tokenizer import (
    Tokenizer,
    gguf_tokenizer_fields,
    load_tokenizer_file,
    tokenizer_from_gguf,
)
from giraffe.tokenizer.chat import render_chat, resolve_template

if TYPE_CHECKING:
    import torch

    from giraffe.models import Decoder
    from giraffe.quant.groupwise import GroupConfig

# Recommended sampling for registered models (their model cards); GGUF files carry none.
REGISTERED_DEFAULTS = {"smollm2-135m-instruct": {"temperature": 0.2, "top_p": 0.9}}
# Fill-in-the-middle token names (prefix, suffix, middle) by model family.
FIM_TOKENS = {
    "qwen2.5-coder": ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    "starcoder": ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
}
GENERATION_CONFIG_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "do_sample",
    "max_new_tokens",
)


@dataclass
class Completion:
    text: str  # generated text, stop string / stop token excluded
    token_ids: list[int]  # generated token ids, stop token excluded
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    logprobs: list[float] | None = None  # per generated token, when asked for
    top_logprobs: list[list[tuple[int, float]]] | None = None  # alternatives per token
    pieces: list[str] = field(default_factory=list)  # the text each token added


class LanguageModel:
    def __init__(
        self,
        model: Decoder | StepModel,
        tokenizer: Tokenizer,
        source: str = "",
        defaults: dict | None = None,
        load_module=None,
    ):
        """model: a torch Decoder, or a StepModel (the compiled step alone, no torch) with
        `load_module`, which builds the torch Decoder of the same file when something
        needs it (batches, beams, scores, saving, training, inspection)."""
        if tokenizer.vocab_size > model.config.vocab_size:
            raise GenerationError(
                f"{source}: the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                f"{model.config.vocab_size} embeddings; they do not belong together"
            )
        if isinstance(model, StepModel) and load_module is None:
            raise ValueError("a LanguageModel over a StepModel needs load_module")
        self._model = model if isinstance(model, StepModel) else model.eval()
        self._load_module = load_module
        self._building = threading.Lock()  # one build of the torch model, whoever asks first
        self.tokenizer, self.source = tokenizer, source
        self.defaults = dict(defaults or {})

    @property
    def config(self):
        return self._model.config

    @property
    def model(self) -> Decoder:
        """The torch model (built now from the file if this one was opened on its compiled
        step alone; from then on generation runs on it too, so the weights are mapped once)."""
        if isinstance(self._model, StepModel):
            with self._building:  # a server's threads may ask at once: build it once
                if isinstance(self._model, StepModel):
                    with collector_paused():
                        self._model = self._load_module().eval()
        return self._model

    @model.setter
    def model(self, model) -> None:
        """Run on another model from now on (e.g. one fine-tuned in place of this one)."""
        self._model = model

    def decoder_for(self, n_sequences: int):
        """What generation of n sequences runs on: the compiled step alone for one sequence
        when this model was opened on it (no torch), else the torch model."""
        if isinstance(self._model, StepModel) and n_sequences == 1:
            return self._model
        return self.model

    # ---- scores -------------------------------------------------------------------------
    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        """Next-token scores after every prefix: (len(ids), vocab) float32."""
        if len(ids) == 0:
            raise GenerationError("logits() needs at least one token id")
        if len(ids) > self.config.max_position_embeddings:
            raise GenerationError(
                f"{len(ids)} tokens exceed the model's context of {self.config.max_position_embeddings}"
            )
        _check_ids(ids, self.config.vocab_size)
        import torch

        with torch.inference_mode():
            return self.model(torch.tensor([list(ids)]))[0].float()

    def prompt_logprobs(self, ids: Sequence[int], top: int = 0) -> list[tuple]:
        """Each prompt token's log-probability given the tokens before it, as evaluation
        harnesses ask for: (logprob, [(id, logprob)] * top) per token, (None, None) first."""
        import torch

        logp = self.logits(ids).log_softmax(dim=-1)  # (T, V): row t predicts token t + 1
        out: list[tuple] = [(None, None)]
        targets = torch.tensor(list(ids[1:]), dtype=torch.long)  # may be empty: one token
        chosen = logp[torch.arange(len(ids) - 1), targets].tolist()
        best = logp[:-1].topk(top, dim=-1) if top > 0 else None
        for t, lp in enumerate(chosen):
            alts = None
            if best is not None:
                alts = list(zip(best.indices[t].tolist(), best.values[t].tolist(), strict=True))
            out.append((lp, alts))
        return out

    # ---- generation ---------------------------------------------------------------------
    def decoding(self, **kw) -> DecodingConfig:
        """A checked DecodingConfig: the model's defaults, then kw.

        Besides DecodingConfig's fields: `json_schema` may be a dict, JSON text or a
        pydantic model class, and `response_format` is OpenAI's ({"type": "json_object"},
        {"type": "json_schema", "json_schema": {"schema": ...}}) or a pydantic model class.
        A schema the grammar engine cannot use raises `constraint.ConstraintError` here.
        """
        kw = dict(kw)
        if "response_format" in kw:
            kw["json_schema"] = constraint.response_format_schema(kw.pop("response_format"))
        if kw.get("json_schema") is not None:
            kw["json_schema"] = constraint.schema_text(kw["json_schema"])
        cfg = DecodingConfig.from_kwargs(**{**self.defaults, **kw})
        vocab = self.config.vocab_size
        outside = [t for t, _ in cfg.logit_bias if not 0 <= t < vocab]
        if outside:
            raise DecodingError(
                f"logit_bias names token {outside[0]}, outside the vocabulary (0..{vocab - 1})",
                "logit_bias",
            )
        if cfg.json_schema is not None or cfg.grammar is not None:
            constraint.check(cfg, self.token_table)
        return cfg

    @functools.cached_property
    def token_table(self) -> constraint.TokenTable:
        """The vocabulary as token bytes for constrained decoding (built on first use, ~1 s)."""
        tok = self.tokenizer
        return constraint.TokenTable(
            [tok.token_bytes(i) for i in range(tok.vocab_size)],
            self.config.vocab_size,
            sorted(tok.stop_ids),
            sorted(tok.special_tokens.values()),
            tok.encode,
            tok.bos_id,
        )

    def table_for(self, cfg: DecodingConfig) -> constraint.TokenTable | None:
        constrained = cfg.json_schema is not None or cfg.grammar is not None
        return self.token_table if constrained else None

    def encode_prompt(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise GenerationError("the prompt is empty: give some text to continue")
            return self.tokenizer.encode(prompt, add_special_tokens=True)
        ids = [int(i) for i in prompt]
        _check_ids(ids, self.config.vocab_size)
        return ids

    def generate(self, prompt, *, stream: bool = False, **decoding):
        """Continue a prompt (text or token ids), or a list of text prompts (a batch)."""
        if _is_batch(prompt):
            if stream:
                raise GenerationError("stream=True takes one prompt, not a batch")
            return [c.text for c in self.complete_batch(prompt, **decoding)]
        if stream:
            return self.stream(prompt, **decoding)
        return self.complete(prompt, **decoding).text

    def complete(self, prompt, **decoding) -> Completion:
        return self.complete_batch([prompt], **decoding)[0]

    def complete_batch(self, prompts, seeds=None, **decoding) -> list[Completion]:
        cfg = self.decoding(**decoding)
        ids = [self.encode_prompt(p) for p in prompts]
        if cfg.num_beams > 1:
            return [self._beam(p, cfg) for p in ids]
        want = cfg.logprobs or cfg.top_logprobs > 0
        results = [
            Completion("", [], "length", len(p), [] if want else None, [] if want else None)
            for p in ids
        ]
        stop_ids = stop_set(cfg, self.tokenizer.stop_ids)
        for row, piece, event in self._events(ids, cfg, seeds):
            r = results[row]
            r.text += piece
            if event.finish_reason:
                r.finish_reason = event.finish_reason
            if event.token_id in stop_ids and event.finish_reason == "stop":
                continue  # the stop token ends the text; it is not part of it
            r.token_ids.append(event.token_id)
            r.pieces.append(piece)
            if want:
                r.logprobs.append(event.logprob)
                r.top_logprobs.append(event.top)
        return results

    def stream(self, prompt, **decoding) -> Iterator[str]:
        """Yield text pieces as they are decided (never half a character, never part of a stop string)."""
        cfg = self.decoding(**decoding)
        ids = self.encode_prompt(prompt)
        if cfg.num_beams > 1:
            yield self._beam(ids, cfg).text
            return
        for _, piece, _ in self._events([ids], cfg, None):
            if piece:
                yield piece

    def _events(self, prompts, cfg: DecodingConfig, seeds):
        """Yield (row, text piece, TokenEvent) in order; a piece may be '' (held back)."""
        session = DecodeSession(
            self.decoder_for(len(prompts)),
            prompts,
            cfg,
            self.tokenizer.stop_ids,
            seeds,
            self.table_for(cfg),
        )
        texts = [self.text_stream(cfg) for _ in prompts]
        for events in session:
            for ev in events:
                piece, hit = texts[ev.row].push(ev)
                if hit:
                    session.finish(ev.row)
                yield ev.row, piece, ev

    def text_stream(self, cfg: DecodingConfig) -> TextStream:
        stops = stop_set(cfg, self.tokenizer.stop_ids)
        return TextStream(self.tokenizer.stream_decoder(), cfg.stop, stops)

    def _beam(self, ids: list[int], cfg: DecodingConfig) -> Completion:
        from giraffe.generate.beam import beam_search

        result = beam_search(self.model, ids, cfg, self.tokenizer.stop_ids)
        text = self.tokenizer.decode(result.token_ids, skip_special_tokens=True)
        stop = StopText(cfg.stop)
        cut, hit = stop.push(text)
        text = cut if hit else cut + stop.flush()
        reason = "stop" if hit else result.finish_reason
        return Completion(text, result.token_ids, reason, len(ids))

    # ---- chat ---------------------------------------------------------------------------
    def render_chat(self, messages, add_generation_prompt: bool = True, tools=None) -> str:
        """The conversation as the model's own template writes it; tools: OpenAI-style
        function definitions, which tool-capable templates (Qwen2.5's) put in the prompt."""
        tok = self.tokenizer
        extra = {"tools": tools} if tools else {}
        return render_chat(
            messages,
            resolve_template(tok.chat_template),
            add_generation_prompt=add_generation_prompt,
            bos_token=tok.bos_token or "",
            eos_token=tok.eos_token or "",
            **extra,
        )

    def chat_ids(self, messages, tools=None) -> list[int]:
        # The template writes any special tokens itself, so none are added here.
        text = self.render_chat(messages, tools=tools)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def fill_in_middle_ids(self, prefix: str, suffix: str) -> list[int]:
        """A fill-in-the-middle prompt (code models trained with FIM tokens): the model
        writes what goes between prefix and suffix. GenerationError if it has no FIM tokens."""
        special = self.tokenizer.special_tokens
        names = FIM_TOKENS.get(self.fim_style or "", ())
        if not names:
            raise GenerationError(
                f"{self.source} has no fill-in-the-middle tokens (such as <|fim_prefix|>): "
                "suffix needs a code model trained for it, e.g. qwen2.5-coder-0.5b-instruct"
            )
        pre, suf, mid = (special[n] for n in names)
        encode = self.tokenizer.encode
        bos = [self.tokenizer.bos_id] if self.tokenizer.add_bos else []
        return [*bos, pre, *encode(prefix), suf, *encode(suffix), mid]

    @property
    def fim_style(self) -> str | None:
        special = self.tokenizer.special_tokens
        for style, names in FIM_TOKENS.items():
            if all(n in special for n in names):
                return style
        return None

    def tokenizer_info(self) -> dict:
        """What clients (evaluation harnesses) need to know about the vocabulary."""
        tok = self.tokenizer
        return {
            "vocab_size": tok.vocab_size,
            "model_vocab_size": self.config.vocab_size,
            "bos_token": tok.bos_token,
            "bos_token_id": tok.bos_id,
            "eos_token": tok.eos_token,
            "eos_token_id": tok.eos_id,
            "stop_token_ids": sorted(tok.stop_ids),
            "add_bos_token": tok.add_bos,
            "special_tokens": dict(sorted(tok.special_tokens.items(), key=lambda kv: kv[1])),
            "chat_template": tok.chat_template,
            "fill_in_middle": self.fim_style,
        }

    def chat(self, messages, *, stream: bool = False, tools=None, **decoding):
        """Answer a conversation. decoding may hold response_format= / json_schema= to
        constrain the answer (see `decoding`)."""
        ids = self.chat_ids(messages, tools)
        if stream:
            return self.stream(ids, **decoding)
        return self.complete(ids, **decoding).text

    # ---- files --------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike, group: GroupConfig | None = None) -> Path:
        """Write a Hugging Face folder: weights, config, tokenizer, generation defaults.

        group: store the projections group-wise in int8/int4 (`giraffe.quant.groupwise`).
        """
        folder = Path(folder)
        tok = self.tokenizer
        # Without these, transformers falls back to its architecture defaults (GPT-2: 50256),
        # which lie outside a small trained vocabulary.
        ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
        extra = {
            "generation_config.json": self._generation_config(),
            "config.json": {k: v for k, v in ids.items() if v is not None},
        }
        from giraffe.formats import save_hf

        save_hf(self.model, folder, extra, group)
        self.tokenizer.save(folder)
        return folder

    def save_gguf(self, path: str | os.PathLike, dtype: str = "f32") -> Path:
        """One GGUF file with weights (f32, f16 or a block type, see `giraffe.quant.ptq`) and the vocabulary."""
        from giraffe.formats.gguf import save_gguf

        fields = gguf_tokenizer_fields(self.tokenizer)
        return save_gguf(
            self.model, path, dtype=dtype, name=Path(self.source).name, tokenizer=fields
        )

    def _generation_config(self) -> dict:
        tok = self.tokenizer
        out = {k: v for k, v in self.defaults.items() if k in GENERATION_CONFIG_KEYS}
        if out.get("temperature", 0) > 0:
            out.setdefault("do_sample", True)  # transformers ignores temperature without it
        out.update(bos_token_id=tok.bos_id, eos_token_id=sorted(tok.stop_ids) or tok.eos_id)
        return out

    def __repr__(self) -> str:
        c = self.config
        return f"LanguageModel({self.source!r}, arch={c.arch}, layers={c.n_layers}, vocab={c.vocab_size})"


def _is_batch(prompt) -> bool:
    return isinstance(prompt, (list, tuple)) and len(prompt) > 0 and not isinstance(prompt[0], int)


def _check_ids(ids, vocab: int) -> None:
    bad = [i for i in ids if not 0 <= int(i) < vocab]
    if bad:
        raise GenerationError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")


def load(
    name_or_path: str | os.PathLike = DEFAULT_CHAT_MODEL, packed: bool | None = None
) -> LanguageModel:
    """A registered alias, a .gguf file or a Hugging Face folder -> LanguageModel.

    packed: keep GGUF Q8_0/Q4_0/Q4_1 weights in their blocks and multiply with the
    compiled kernel (about 3x faster decoding, a fraction of the memory); None = when
    the kernel is available. packed=False dequantizes everything to float32, the
    reference that `transformers` also computes.
    """
    guard_forks()  # a child forked after this process computes keeps one thread
    with collector_paused():  # (already, when giraffe.load called this)
        return _load(name_or_path, packed)


def _load(name_or_path, packed: bool | None) -> LanguageModel:
    path = resolve(name_or_path)
    if model_kind(path) == "encoder":  # giraffe.load (the package's) sends these to embedder
        raise GenerationError(
            f"{name_or_path} is an encoder (sentence embeddings), not a language model; "
            "load it with giraffe.load or giraffe.embedder.load (a SentenceEncoder)"
        )
    if model_kind(path) == "encoder-decoder":
        raise GenerationError(
            f"{name_or_path} is an encoder-decoder (T5); giraffe's generation engine runs "
            "decoder-only models: load it with giraffe.formats.load_hf and call .generate()"
        )
    model, tokenizer, load_module = _model_and_tokenizer(path, packed)
    _return_freed_heap()  # the header and the tokenizer's build are garbage by now
    defaults = dict(REGISTERED_DEFAULTS.get(str(name_or_path), {}))
    if path.is_dir() and (path / "generation_config.json").exists():
        raw = read_json(path / "generation_config.json")
        defaults.update({k: raw[k] for k in GENERATION_CONFIG_KEYS if k in raw})
    return LanguageModel(model, tokenizer, str(name_or_path), defaults, load_module)


def _model_and_tokenizer(path: Path, packed: bool | None) -> tuple:
    """(model, tokenizer, how to build the torch model or None). A packed GGUF file or
    group-wise folder whose compiled step an earlier load saved opens on that step alone:
    no torch imported."""
    if path.is_file() and path.suffix.lower() == ".gguf":
        reader = open_gguf(path)  # parse the header once for weights and vocabulary
        packed = library.available() if packed is None else packed

        def load_module():
            from giraffe.formats.gguf import load_gguf  # (torch)

            return load_gguf(path, reader, packed)

        step = open_saved_step(path, reader) if packed else None
        if step is not None:
            return step, tokenizer_from_gguf(reader), load_module
        return load_module(), tokenizer_from_gguf(reader), None

    def load_folder():
        from giraffe.formats import load_weights  # (torch)

        return load_weights(path, packed)

    step = open_saved_step(path) if path.is_dir() and packed is not False else None
    if step is not None:
        return step, load_tokenizer_file(path), load_folder
    return load_folder(), load_tokenizer_file(path), None


def _return_freed_heap() -> None:
    """Hand back to the system the heap a load freed (the header's strings, the tokenizer's
    build): glibc keeps freed chunks mapped, and they would count in every later peak -
    measured 2026-12-07 on SmolLM2 Q4_1: resident after loading 273 -> 265 MiB, the peak
    of a 512-token prompt 390 -> 386. Only glibc has malloc_trim; elsewhere nothing is done."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)
