"""OpenAI request bodies as pydantic models, and their translation to giraffe's decoding options.

Field names, types and defaults follow OpenAI's API reference, so that the official
clients work unchanged; giraffe's extra knobs (`top_k`, `min_p`, `repetition_penalty`,
`no_repeat_ngram_size`, `num_beams`, `ignore_eos`) are accepted as extra body fields. The
numeric bounds of the sampling fields come from `giraffe.generate.params.BOUNDS`, the
table `DecodingConfig` checks, so the published schema and the engine agree. Unknown
fields are ignored, as clients send many optional ones; a combination giraffe cannot
honour is refused by name rather than silently dropped. It does not know the model,
the scheduler or HTTP.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictStr,
    WithJsonSchema,
)
from pydantic import StrictInt as _StrictInt  # see JSONInt

from giraffe.generate.params import BOUNDS
from giraffe.serve.errors import UnsupportedField

Number = StrictFloat  # strict: no strings; an integer (1) is still a valid float


def _integral(value):
    """JSON Schema's "integer" admits 10.0 (a number with no fraction): accept it as 10."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def integer(**bounds):
    """An integer field; bounds go before the validator so the JSON schema shows them."""
    return Annotated[_StrictInt, Field(**bounds), BeforeValidator(_integral)]


JSONInt = integer()  # no strings, no 1.5
# Facts of the running server that the published document states (openapi.py fills them
# in): the vocabulary's last id, --max-tokens-limit, the model's name, --max-queue,
# whether it has fill-in-the-middle tokens.
TokenId = integer(ge=0, json_schema_extra={"x-token-id": True})
MaxTokens = integer(ge=1, json_schema_extra={"x-max-tokens": True})
ModelName = Annotated[StrictStr, Field(json_schema_extra={"x-model": "chat"})]
TokenKey = Annotated[StrictStr, Field(pattern=r"^(0|[1-9][0-9]*)$")]  # a token id, as JSON keys are
Bias = Annotated[Number, Field(ge=-100, le=100)]
# {"token id": bias}: pydantic would write patternProperties, which admit any other key
LogitBias = Annotated[
    dict[TokenKey, Bias],
    WithJsonSchema({
        "type": "object",
        "propertyNames": {"type": "string", "x-token-key": True},  # openapi.py: ids of this vocabulary
        "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
    }),
]  # fmt: skip


def bounded(name: str, kind=Number, **extra):
    """The type of a request field that sets DecodingConfig's `name`, with its bounds."""
    bounds = {**BOUNDS[name], **extra}
    return integer(**bounds) if kind is JSONInt else Annotated[kind, Field(**bounds)]


class SamplingFields(BaseModel):
    """What chat and text completions share."""

    model_config = ConfigDict(extra="ignore")

    model: ModelName
    temperature: bounded("temperature") | None = None
    top_p: bounded("top_p") | None = None
    n: integer(ge=1, le=16, json_schema_extra={"x-queue": True}) = 1  # openapi.py: <= --max-queue
    stream: StrictBool = False
    stream_options: dict | None = None
    stop: StrictStr | list[StrictStr] | None = None
    max_tokens: MaxTokens | None = None  # None: the server's limit (chat)
    presence_penalty: bounded("presence_penalty") | None = None
    frequency_penalty: bounded("frequency_penalty") | None = None
    seed: bounded("seed", JSONInt) | None = None
    logit_bias: LogitBias | None = None
    # giraffe's extras (Hugging Face names)
    top_k: bounded("top_k", JSONInt) | None = None
    min_p: bounded("min_p") | None = None
    repetition_penalty: bounded("repetition_penalty") | None = None
    no_repeat_ngram_size: bounded("no_repeat_ngram_size", JSONInt) | None = None
    num_beams: bounded("num_beams", JSONInt, le=8) | None = None  # the server's limit
    ignore_eos: StrictBool | None = None  # as llama.cpp's server: keep going past end-of-text

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    def decoding(self, max_tokens: int | None) -> dict:
        """Keyword arguments for `LanguageModel.decoding`: only what the client set."""
        if self.num_beams and self.num_beams > 1 and self.stream:
            raise UnsupportedField("num_beams", "num_beams > 1 cannot stream: set stream=false")
        kw = {}
        for name in (
            "temperature", "top_p", "presence_penalty", "frequency_penalty", "seed",
            "top_k", "min_p", "repetition_penalty", "no_repeat_ngram_size", "num_beams",
            "ignore_eos", "logit_bias",
        ):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                kw[name] = value
        if self.stop is not None:
            kw["stop"] = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if max_tokens is not None:
            kw["max_new_tokens"] = max_tokens
        return kw


class TextPart(BaseModel):
    type: Literal["text"]
    text: StrictStr


class FunctionCall(BaseModel):
    name: StrictStr
    # JSON text of an object, as OpenAI sends it; the chat layer (giraffe.tokenizer) parses it
    # for the template and refuses other text: JSON Schema can only annotate that
    arguments: Annotated[
        StrictStr,
        Field(json_schema_extra={"contentMediaType": "application/json",
                                 "contentSchema": {"type": "object"}}),
    ]  # fmt: skip


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall


class Function(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    description: StrictStr | None = None
    parameters: dict | None = None
    strict: StrictBool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: Function


class NamedFunction(BaseModel):
    name: StrictStr


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: StrictStr | None = None  # which call a tool message answers
    name: StrictStr | None = None

    def as_dict(self) -> dict:
        """The message as chat templates read it (OpenAI's shape: tool_calls, tool_call_id)."""
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        role = "system" if self.role == "developer" else self.role  # OpenAI's newer name
        out = {"role": role, "content": content or ""}
        if self.tool_calls:
            out["content"] = content  # None stays None: templates test for it
            out["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.function.name, "arguments": c.function.arguments}}
                for c in self.tool_calls
            ]  # fmt: skip
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: StrictStr = "response"
    schema_: dict = Field(alias="schema")
    strict: StrictBool | None = None
    description: StrictStr | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    def as_dict(self) -> dict:
        if self.type == "json_schema":
            if self.json_schema is None:
                raise UnsupportedField(
                    "response_format.json_schema",
                    'response_format {"type": "json_schema"} needs "json_schema": '
                    '{"name": ..., "schema": {...}}',
                )
            spec = {"schema": self.json_schema.schema_, "strict": bool(self.json_schema.strict)}
            return {"type": "json_schema", "json_schema": spec}
        return {"type": self.type}


# What the server refuses for a combination of fields, said in the schema (JSON Schema's
# if/then), so that a client or a fuzzer reading /openapi.json knows it beforehand.
def _when(condition: dict, then: dict) -> dict:
    required = [k for k in condition]
    return {"if": {"required": required, "properties": condition}, "then": {"properties": then}}


EMPTY = {"anyOf": [{"type": "null"}, {"type": "object", "maxProperties": 0}]}
# beam search cannot stream, and takes no logit_bias or grammar (DecodingConfig's rule)
BEAMS = _when({"num_beams": {"type": "integer", "minimum": 2}},
              {"stream": {"const": False}, "logit_bias": EMPTY})  # fmt: skip
BEAMS_CHAT = _when(
    {"num_beams": {"type": "integer", "minimum": 2}},
    {"stream": {"const": False}, "logit_bias": EMPTY,
     "response_format": {"anyOf": [{"type": "null"}, {"properties": {"type": {"const": "text"}}}]},
     "tool_choice": {"enum": [None, "none", "auto"]}},
)  # fmt: skip
# suffix (fill-in-the-middle) needs text prompts and cannot echo them
TEXTS = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
FIM_NEEDS = _when({"suffix": {"type": "string"}}, {"prompt": TEXTS, "echo": {"const": False}})
# tool_choice "required" or a named function needs tools
TOOLS_NEEDED = {
    "if": {
        "required": ["tool_choice"],
        "properties": {"tool_choice": {"anyOf": [{"const": "required"}, {"type": "object"}]}},
    },
    "then": {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}},
}


class ChatRequest(SamplingFields):
    model_config = ConfigDict(json_schema_extra={"allOf": [BEAMS_CHAT, TOOLS_NEEDED]})

    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: MaxTokens | None = None
    logprobs: StrictBool = False
    top_logprobs: bounded("top_logprobs", JSONInt) | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool = True

    def decoding_kwargs(self) -> dict:
        kw = self.decoding(self.max_completion_tokens or self.max_tokens)
        if self.logprobs:
            kw.update(logprobs=True, top_logprobs=self.top_logprobs or 0)
        elif self.top_logprobs:
            raise UnsupportedField("top_logprobs", "top_logprobs needs logprobs=true")
        if self.response_format is not None:
            kw["response_format"] = self.response_format.as_dict()
        return kw


Text = Annotated[StrictStr, Field(min_length=1)]  # "" encodes to no token: nothing to continue
PromptIds = Annotated[list[TokenId], Field(min_length=1)]


class CompletionRequest(SamplingFields):
    # x-prompts: openapi.py adds how many prompts each n allows (prompts x n <= --max-queue)
    model_config = ConfigDict(json_schema_extra={"allOf": [BEAMS, FIM_NEEDS], "x-prompts": True})

    prompt: (
        Text
        | Annotated[list[Text], Field(min_length=1)]
        | PromptIds
        | Annotated[list[PromptIds], Field(min_length=1)]
    )
    # OpenAI's default is 16; the route lowers it to --max-tokens-limit when that is smaller
    max_tokens: Annotated[
        integer(ge=0, json_schema_extra={"x-max-tokens": True}) | None,
        Field(json_schema_extra={"x-default-within-limit": True}),
    ] = 16
    logprobs: bounded("top_logprobs", JSONInt) | None = None
    echo: StrictBool = False
    suffix: Annotated[StrictStr, Field(json_schema_extra={"x-fim": True})] | None = None

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        if not p:
            raise UnsupportedField("prompt", "the prompt is empty: give some text to continue")
        return list(p)

    def decoding_kwargs(self) -> dict:
        if self.suffix is not None and self.echo:
            raise UnsupportedField(
                "echo", "echo cannot be combined with suffix (fill-in-the-middle)"
            )
        # max_tokens=0 generates nothing (echo scores the prompt); the engine needs >= 1
        kw = self.decoding(max(self.max_tokens, 1) if self.max_tokens is not None else None)
        if self.logprobs is not None:
            kw.update(logprobs=True, top_logprobs=self.logprobs)
        return kw


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Annotated[StrictStr, Field(json_schema_extra={"x-model": "embedding"})]
    input: StrictStr | Annotated[list[StrictStr], Field(min_length=1)]
    encoding_format: Literal["float", "base64"] = "float"
    # the embedder's one width (openapi.py states it): another is refused by name
    dimensions: Annotated[JSONInt, Field(json_schema_extra={"x-embed-dim": True})] | None = None

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


# Exactly one of text, prompt, messages, and not null (the route checks the same).
ONE_INPUT = [
    {"required": ["text"], "properties": {"text": {"type": "string"}}},
    {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
    {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
]


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", json_schema_extra={"oneOf": ONE_INPUT})

    text: StrictStr | None = None
    prompt: StrictStr | None = None  # vLLM's name for `text` (lm-eval's remote tokenizer)
    messages: Annotated[list[Message], Field(min_length=1)] | None = None
    add_special_tokens: StrictBool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    tokens: list[TokenId]


class InsideRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: Annotated[StrictStr, Field(min_length=1)]  # an empty text has no token to look at
