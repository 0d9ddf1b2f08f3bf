"""Constrained decoding: a token mask per step, so the output matches a JSON Schema or a grammar.

A `DecodingConfig` may carry `json_schema` (JSON text) or `grammar` (a Lark grammar in
llguidance's dialect, which can embed JSON Schemas with `%json {...}`). Each sequence
gets its own `Constraint`: before sampling it removes every token the grammar cannot
accept next (its logit becomes -inf), after sampling it advances by the chosen token.
Once the grammar is complete only the stop tokens remain allowed, so the sequence ends
with "stop" exactly where the JSON ends. A sequence that runs out of tokens first ends
with "length" and its text is cut short, as OpenAI's does.

The engine is llguidance (Microsoft, MIT licence, no dependencies, abi3 CPU wheels):
measured against xgrammar and outlines-core in `bench/grammar_engines.py`, see
docs/serving.md for the numbers and the reasons. It compiles a schema in about a
millisecond, computes a mask in tens of microseconds on a 152k vocabulary, and refuses
JSON-Schema keywords it does not implement by name instead of ignoring them.

It sees the vocabulary only as token bytes (`TokenTable`, built once per tokenizer by
`giraffe.lm`); it does not know models, HTTP or chat templates.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np

from giraffe.generate.params import DecodingConfig, GenerationError

JSON_OBJECT = '{"type": "object"}'  # OpenAI's response_format {"type": "json_object"}
# Whitespace between JSON tokens: what models write (a newline and an indent, or a space),
# but no more, so that a model cannot spend its budget on blank lines the grammar allows.
JSON_OPTIONS = {"whitespace_pattern": r"\x0A?\x20{0,16}"}
SAFE_INTEGER = 2**53 - 1  # the largest integer every JSON reader holds exactly


class ConstraintError(GenerationError):
    """The schema or grammar cannot be used: invalid, unsatisfiable, or a keyword not implemented.

    `keyword` names the schema keyword when the engine said which one.
    """

    def __init__(self, message: str, keyword: str | None = None) -> None:
        super().__init__(message)
        self.keyword = keyword


def _llguidance():
    try:
        import llguidance
    except ImportError as e:  # a declared dependency; only a broken install lacks it
        raise ConstraintError(
            "constrained decoding needs the llguidance package: pip install llguidance"
        ) from e
    return llguidance


class _Wrapped:
    """What llguidance's TokenizerWrapper reads: token bytes, special ids, an encoder."""

    def __init__(self, tokens, bos_id, eos_id, special_ids, encode) -> None:
        self.tokens, self.bos_token_id, self.eos_token_id = tokens, bos_id, eos_id
        self.special_token_ids = special_ids
        self.encode = encode

    def __call__(self, text: str) -> list[int]:
        return self.encode(text)


class TokenTable:
    """The vocabulary as the grammar engine needs it; building it takes ~0.3-1.5 s, so once per model.

    tokens: the bytes of every token id below the tokenizer's size; ids up to `n_vocab`
    (the model's embedding rows, often padded) get no bytes and are never allowed.
    stop_ids: the tokens that end a sequence; allowed exactly when the grammar is complete.
    """

    def __init__(
        self,
        tokens: Sequence[bytes],
        n_vocab: int,
        stop_ids: Sequence[int],
        special_ids: Sequence[int],
        encode: Callable[[str], list[int]],
        bos_id: int | None = None,
    ) -> None:
        ll = _llguidance()
        if not stop_ids:
            raise ConstraintError(
                "constrained decoding needs a stop token; this tokenizer has none"
            )
        padded = list(tokens) + [b""] * (n_vocab - len(tokens))
        stops = sorted(stop_ids)
        wrapper = ll.TokenizerWrapper(
            _Wrapped(padded, bos_id, stops[0], sorted(special_ids), encode)
        )
        self.n_vocab = n_vocab
        self.stop_ids = frozenset(stops)
        self.lltok = ll.LLTokenizer(wrapper, n_vocab=n_vocab, eos_token=stops)


def strict(schema):
    """OpenAI's strict mode: objects admit no properties beyond those listed, unless they say so.

    JSON Schema's own default is the opposite (any extra property is fine), which lets a
    small model wander off into invented keys and run out of tokens mid-string.
    """
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) if k in _SUBSCHEMAS else v for k, v in schema.items()}
    for k in ("properties", "$defs", "definitions", "patternProperties"):
        if isinstance(schema.get(k), dict):
            out[k] = {name: strict(v) for name, v in schema[k].items()}
    is_object = schema.get("type") == "object" or "properties" in schema
    if is_object and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


_SUBSCHEMAS = ("items", "prefixItems", "anyOf", "allOf", "oneOf", "additionalProperties", "not")


def bounded(schema):
    """Integers without bounds get JSON's safe range (+-2**53-1): every such value is valid
    for the schema as written, and a model can no longer write digits until it runs out
    of tokens (SmolLM2 does, greedily: "population": 1111111...)."""
    if isinstance(schema, list):
        return [bounded(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bounded(v) if k in _SUBSCHEMAS else v for k, v in schema.items()}
    for k in ("properties", "$defs", "definitions", "patternProperties"):
        if isinstance(schema.get(k), dict):
            out[k] = {name: bounded(v) for name, v in schema[k].items()}
    if schema.get("type") == "integer":
        out.setdefault("minimum", -SAFE_INTEGER)
        out.setdefault("maximum", SAFE_INTEGER)
    return out


def schema_text(schema) -> str:
    """A JSON Schema given as a dict, JSON text or a pydantic model class -> JSON text.

    A pydantic model is made strict (`strict`), as OpenAI's client does for `parse`.
    """
    if isinstance(schema, str):
        return schema
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        schema = strict(schema.model_json_schema())  # a pydantic model class
    if not isinstance(schema, (dict, bool)):
        raise ConstraintError(
            f"json_schema must be a JSON Schema (a dict), JSON text or a pydantic model, "
            f"not {type(schema).__name__}"
        )
    return json.dumps(schema)


def response_format_schema(response_format) -> str | None:
    """OpenAI's response_format -> the JSON Schema text the output must match, or None for text."""
    rf = response_format
    if rf is None:
        return None
    if isinstance(rf, type) and hasattr(rf, "model_json_schema"):
        return schema_text(rf)
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT
    if kind == "json_schema":
        spec = rf.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise ConstraintError(
                'response_format {"type": "json_schema"} needs "json_schema": {"name": ..., '
                '"schema": {...}}',
                "json_schema",
            )
        schema = spec["schema"]
        return schema_text(strict(schema) if spec.get("strict") else schema)
    raise ConstraintError(
        f"response_format type {kind!r} is not supported: use 'text', 'json_object' or "
        "'json_schema'",
        "type",
    )


def grammar_of(cfg: DecodingConfig) -> str | None:
    """The llguidance grammar for a config's json_schema / grammar, or None when unconstrained."""
    ll = _llguidance()
    if cfg.json_schema is not None:
        try:
            schema = json.loads(cfg.json_schema)
        except json.JSONDecodeError as e:
            raise ConstraintError(f"json_schema is not valid JSON: {e}") from None
        if not isinstance(schema, (dict, bool)):
            raise ConstraintError("json_schema must be a JSON object (a JSON Schema)")
        return ll.LLMatcher.grammar_from_json_schema(bounded(schema), defaults=JSON_OPTIONS)
    if cfg.grammar is not None:
        return ll.LLMatcher.grammar_from_lark(cfg.grammar)
    return None


def check(cfg: DecodingConfig, table: TokenTable) -> None:
    """Raise ConstraintError (naming the keyword) if the config's constraint cannot be used."""
    grammar = grammar_of(cfg)
    if grammar is None:
        return
    if cfg.ignore_eos or cfg.min_new_tokens:
        raise ConstraintError(
            "ignore_eos and min_new_tokens cannot be combined with a schema or grammar: "
            "the grammar decides where the output ends"
        )
    failed, messages = _llguidance().LLMatcher.validate_grammar_with_warnings(grammar, table.lltok)
    if failed:
        raise _error(messages[0])


def _error(message: str) -> ConstraintError:
    keyword = None
    if "Unimplemented keys:" in message:  # e.g. 'Unimplemented keys: ["uniqueItems"]'
        try:
            keyword = json.loads(message.split("Unimplemented keys:", 1)[1].strip())[0]
        except (ValueError, IndexError):
            keyword = None
    if keyword:
        return ConstraintError(
            f"the JSON schema keyword {keyword!r} is not supported by constrained decoding: "
            "remove it from the schema",
            keyword,
        )
    return ConstraintError(f"the schema or grammar cannot be used: {message}")


class Constraint:
    """One sequence's matcher: which tokens may come next, and the state after each token."""

    def __init__(self, grammar: str, table: TokenTable) -> None:
        ll = _llguidance()
        self.table = table
        self.matcher = ll.LLMatcher(table.lltok, grammar, log_level=0)
        if self.matcher.is_error():
            raise _error(self.matcher.get_error())

    @classmethod
    def for_config(cls, cfg: DecodingConfig, table: TokenTable | None) -> Constraint | None:
        grammar = grammar_of(cfg)
        if grammar is None:
            return None
        if table is None:
            raise ConstraintError("this model has no token table for constrained decoding")
        return cls(grammar, table)

    def fill(self, words: np.ndarray) -> None:
        """Write the allowed-token bitmask (bit t of word t // 32) into words (int32, C order)."""
        self.matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)

    def allowed(self) -> np.ndarray:
        """(V,) bool: the tokens the grammar accepts next."""
        words = np.empty((self.table.n_vocab + 31) // 32, dtype=np.int32)
        self.fill(words)
        return np.unpackbits(words.view(np.uint8), bitorder="little")[: self.table.n_vocab].view(
            bool
        )

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            # the mask allowed only tokens the matcher accepts, so this is our fault
            raise RuntimeError(f"grammar matcher refused token {token}: {self.matcher.get_error()}")


def mask_rows(logits: np.ndarray, constraints: Sequence[Constraint | None]) -> np.ndarray:
    """logits (k, V) float32 with every token a row's constraint forbids set to -inf (a
    new array; the same one when no row is constrained).

    One bitmask for all constrained rows, unpacked once: a handful of full-vocabulary
    passes per step, whatever the number of rows (per-row work on a busy CPU cost more
    than the grammar itself, measured in bench/constrained.py).
    """
    rows = [i for i, c in enumerate(constraints) if c is not None]
    if not rows:
        return logits
    V = logits.shape[1]
    width = max((constraints[i].table.n_vocab + 31) // 32 for i in rows)
    words = np.zeros((len(rows), width), dtype=np.int32)  # (r, W)
    for j, i in enumerate(rows):
        constraints[i].fill(words[j, : (constraints[i].table.n_vocab + 31) // 32])
    bits = np.unpackbits(words.view(np.uint8), axis=1, bitorder="little")[:, :V]  # (r, V) 0/1
    allowed = bits.view(bool)  # one np.where for all rows: ~3x a row loop
    if len(rows) == logits.shape[0]:
        return np.where(allowed, logits, np.float32(-np.inf))
    out = logits.copy()
    out[rows] = np.where(allowed, logits[rows], np.float32(-np.inf))
    return out
