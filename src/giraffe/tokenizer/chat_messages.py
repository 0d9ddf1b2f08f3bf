"""What a chat template sees: OpenAI-style messages, tools and documents as plain data.

A template is untrusted code run in a sandbox, so everything handed to it is rebuilt from
plain JSON types (dicts, lists, strings, numbers, booleans), as transformers'
`apply_chat_template` does. The rules follow transformers too, so that a conversation
renders to the same text in both:

- keys whose value is None are dropped (OpenAI clients send `content: null` beside
  `tool_calls`; templates test for a missing key, not for None);
- a message's reasoning given as `reasoning_content`, `thinking` or `reasoning` is offered
  under both names templates read (`reasoning_content`, and `thinking` for gpt-oss);
- a tool call's `function.arguments` given as a JSON string (the OpenAI wire form) is parsed
  to an object, since templates write it with `tojson` and expect an object there.

It checks shapes only (what a template cannot be expected to survive) and says which
message is wrong; it does not know any template.
"""

from __future__ import annotations

import json
from collections.abc import Mapping


class ChatTemplateError(ValueError):
    """The conversation or the template cannot be rendered; the message says why."""


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def plain(value, where: str = "value"):
    """A deep copy made only of JSON types; anything else is refused by name."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    # Subclasses (enums, numpy scalars...) carry methods the sandbox does not know.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if callable(getattr(value, "model_dump", None)):  # pydantic objects (the openai client)
        return plain(value.model_dump(), where)
    raise ChatTemplateError(
        f"{where} is a {type(value).__name__}; chat templates take JSON data only "
        "(dicts, lists, strings, numbers)"
    )


def validate_messages(messages) -> list[dict]:
    """Checked, plain copies of OpenAI-style messages, normalised as transformers does."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatTemplateError("messages must be a non-empty list of {'role', 'content'} objects")
    return [_message(m, i) for i, m in enumerate(messages)]


def _message(m, i: int) -> dict:
    if not isinstance(m, Mapping) or "role" not in m:
        raise ChatTemplateError(f"message {i} must be an object with 'role' and 'content'")
    m = {k: v for k, v in plain(m, f"message {i}").items() if v is not None}
    if not isinstance(m["role"], str):
        raise ChatTemplateError(f"message {i}: 'role' and 'content' must be strings")
    if "tool_calls" in m:
        m["tool_calls"] = _tool_calls(m["tool_calls"], i)
    content = m.get("content")
    if content is None and not m.get("tool_calls"):
        raise ChatTemplateError(
            f"message {i} must be an object with 'role' and 'content' "
            "(only an assistant message with tool_calls may leave content out)"
        )
    if content is not None and not isinstance(content, (str, list)):
        raise ChatTemplateError(
            f"message {i}: 'role' and 'content' must be strings (or content a list of parts)"
        )
    if isinstance(content, list) and not all(isinstance(p, dict) and "type" in p for p in content):
        raise ChatTemplateError(f"message {i}: each content part must be an object with a 'type'")
    for key in ("tool_call_id", "name"):
        if key in m and not isinstance(m[key], str):
            raise ChatTemplateError(f"message {i}: {key!r} must be a string")
    return _alias_reasoning(m)


def _tool_calls(calls, i: int) -> list[dict]:
    if not isinstance(calls, list):
        raise ChatTemplateError(f"message {i}: 'tool_calls' must be a list")
    out = []
    for k, call in enumerate(calls):
        if not isinstance(call, dict):
            raise ChatTemplateError(f"message {i}: tool call {k} must be an object")
        fn = call.get("function", call)  # OpenAI nests {name, arguments} under "function"
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ChatTemplateError(f"message {i}: tool call {k} needs a function 'name'")
        fn = dict(fn, arguments=_arguments(fn.get("arguments", {}), i, k))
        out.append(dict(call, function=fn) if "function" in call else fn)
    return out


def _arguments(args, i: int, k: int) -> dict:
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise ChatTemplateError(
                f"message {i}: tool call {k} has arguments that are not valid JSON ({e.msg} "
                f"at character {e.pos}); send a JSON object"
            ) from None
    if not isinstance(args, dict):
        raise ChatTemplateError(
            f"message {i}: tool call {k} arguments must be a JSON object, not {type(args).__name__}"
        )
    return args


def _alias_reasoning(m: dict) -> dict:
    reasoning = next((m[key] for key in _REASONING_FIELDS if m.get(key) is not None), None)
    if reasoning is None:
        return m
    return {"thinking": reasoning, **m, "reasoning_content": reasoning}


def validate_tools(tools) -> list[dict] | None:
    """JSON-schema function specs, as transformers passes them to templates."""
    if tools is None:
        return None
    if not isinstance(tools, (list, tuple)):
        raise ChatTemplateError("tools must be a list of JSON-schema function specs")
    for k, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise ChatTemplateError(
                f"tool {k} must be a JSON-schema object such as "
                '{"type": "function", "function": {"name": ..., "parameters": {...}}}'
            )
    return plain(list(tools), "tools")


def validate_documents(documents) -> list[dict] | None:
    """Retrieved documents for RAG templates: objects, typically {'title', 'text'}."""
    if documents is None:
        return None
    if not isinstance(documents, (list, tuple)) or not all(
        isinstance(d, Mapping) for d in documents
    ):
        raise ChatTemplateError("documents must be a list of objects with 'title' and 'text'")
    return plain(list(documents), "documents")
