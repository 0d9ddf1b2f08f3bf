"""OpenAI request bodies as pydantic models, and their translation to giraffe's decoding options.

Field names, types and defaults follow OpenAI's API reference, so that the official
clients work unchanged; giraffe's extra knobs (`top_k`, `min_p`, `repetition_penalty`,
`no_repeat_ngram_size`, `num_beams`, `ignore_eos`) are accepted as extra body fields. Unknown fields
are ignored, as clients send many optional ones; fields giraffe cannot honour (tools,
logit_bias, echo, suffix) are refused by name rather than silently dropped. It does
not know the model, the scheduler or HTTP.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

Penalty = Annotated[StrictFloat, Field(ge=-2, le=2)]


class UnsupportedField(ValueError):
    """A field the client set that giraffe does not implement; `param` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class SamplingFields(BaseModel):
    """What chat and text completions share."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr
    temperature: Annotated[StrictFloat, Field(ge=0, le=2)] | None = None
    top_p: Annotated[StrictFloat, Field(gt=0, le=1)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=16)] = 1
    stream: StrictBool = False
    stream_options: dict | None = None
    stop: StrictStr | list[StrictStr] | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    seed: StrictInt | None = None
    logit_bias: dict | None = None
    # giraffe's extras (Hugging Face names)
    top_k: Annotated[StrictInt, Field(ge=0)] | None = None
    min_p: Annotated[StrictFloat, Field(ge=0, lt=1)] | None = None
    repetition_penalty: Annotated[StrictFloat, Field(gt=0)] | None = None
    no_repeat_ngram_size: Annotated[StrictInt, Field(ge=0)] | None = None
    num_beams: Annotated[StrictInt, Field(ge=1, le=8)] | None = None
    ignore_eos: StrictBool | None = None  # as llama.cpp's server: keep going past end-of-text

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    def decoding(self, max_tokens: int | None) -> dict:
        """Keyword arguments for `LanguageModel.decoding`: only what the client set."""
        if self.logit_bias:
            raise UnsupportedField("logit_bias", "logit_bias is not supported by giraffe")
        if self.num_beams and self.num_beams > 1 and self.stream:
            raise UnsupportedField("num_beams", "num_beams > 1 cannot stream: set stream=false")
        kw = {}
        for name in (
            "temperature", "top_p", "presence_penalty", "frequency_penalty", "seed",
            "top_k", "min_p", "repetition_penalty", "no_repeat_ngram_size", "num_beams",
            "ignore_eos",
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


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None

    def as_dict(self) -> dict:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        role = "system" if self.role == "developer" else self.role  # OpenAI's newer name
        return {"role": role, "content": content or ""}


class ChatRequest(SamplingFields):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    logprobs: StrictBool = False
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    tools: list | None = None

    def decoding_kwargs(self) -> dict:
        if self.tools:
            raise UnsupportedField("tools", "tools / function calling is not supported by giraffe")
        kw = self.decoding(self.max_completion_tokens or self.max_tokens)
        if self.logprobs:
            kw.update(logprobs=True, top_logprobs=self.top_logprobs or 0)
        elif self.top_logprobs:
            raise UnsupportedField("top_logprobs", "top_logprobs needs logprobs=true")
        return kw


PromptIds = list[StrictInt]


class CompletionRequest(SamplingFields):
    prompt: StrictStr | list[StrictStr] | PromptIds | list[PromptIds]
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = 16  # OpenAI's default here
    logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    echo: StrictBool = False
    suffix: StrictStr | None = None

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        if not p:
            raise UnsupportedField("prompt", "the prompt is empty: give some text to continue")
        return list(p)

    def decoding_kwargs(self) -> dict:
        if self.echo:
            raise UnsupportedField("echo", "echo is not supported by giraffe")
        if self.suffix:
            raise UnsupportedField("suffix", "suffix (fill-in-the-middle) is not supported")
        kw = self.decoding(self.max_tokens)
        if self.logprobs is not None:
            kw.update(logprobs=True, top_logprobs=self.logprobs)
        return kw


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr
    input: StrictStr | list[StrictStr]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None

    def texts(self) -> list[str]:
        texts = [self.input] if isinstance(self.input, str) else list(self.input)
        if not texts:
            raise UnsupportedField("input", "input is empty: give a string or a list of strings")
        return texts


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: StrictStr | None = None
    messages: list[Message] | None = None
    add_special_tokens: StrictBool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    tokens: list[StrictInt]


class InsideRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: StrictStr
