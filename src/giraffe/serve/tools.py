"""Tool calling: OpenAI's `tools` / `tool_choice` in, the model's own call syntax out, `tool_calls` back.

A chat request with tools becomes a `ToolPlan`:
- the tools go to the model's chat template (Qwen2.5's writes them into the system
  prompt); a template that ignores them gets a system message that lists them and asks
  for a JSON call (the generic format), so any chat model can call functions;
- `tool_choice` "required" or a named function constrains the output with a grammar
  (`giraffe.generate.constraint`): the call syntax of the model's family around JSON
  arguments that must match the function's `parameters` schema, so even a small model
  emits a valid call; "auto" lets the model choose and parses what it wrote; "none"
  still renders the tools (the conversation may hold earlier calls, and the prompt stays
  the same as in the turns that offered them) but parses nothing: the text is the answer;
- the answer is parsed back into `tool_calls` for the families in use: Qwen/Hermes
  `<tool_call>{...}</tool_call>` (or the bare object, as Qwen2.5-Coder writes it), Llama 3.x `{"name", "parameters"}`, Mistral
  `[TOOL_CALLS] [...]`, and the generic JSON object or list.
Streaming holds back text that may be the start of a call; a call leaves as OpenAI's
tool-call deltas (the id and name, then the arguments) once it is complete.

It does not know HTTP, the scheduler or sampling: text in, message dicts out.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from giraffe.generate.constraint import strict
from giraffe.serve.errors import UnsupportedField


@dataclass(frozen=True)
class CallFormat:
    name: str
    open: str  # text before each call (before all calls when `listed`)
    close: str  # text after each call (after all calls when `listed`)
    separator: str  # between two calls
    arguments_key: str  # "arguments" (Hermes, Mistral) or "parameters" (Llama 3.x)
    listed: bool = False  # all calls in one JSON list: [call, call]


HERMES = CallFormat("hermes", "<tool_call>\n", "\n</tool_call>", "\n", "arguments")
MISTRAL = CallFormat("mistral", "[TOOL_CALLS] [", "]", ", ", "arguments", listed=True)
LLAMA3 = CallFormat("llama3", "", "", "; ", "parameters")
GENERIC = CallFormat("generic", "", "", ", ", "arguments")
GENERIC_LIST = CallFormat("generic", "[", "]", ", ", "arguments", listed=True)

GENERIC_PROMPT = (
    "You can call these functions:\n{tools}\n"
    "To call one, reply with only a JSON object of the form "
    '{{"name": <function name>, "arguments": <an object of its parameters>}}. '
    "Otherwise answer normally."
)


def format_of(template: str | None) -> CallFormat:
    """The call syntax a chat template teaches its model (read from the template's text)."""
    t = template or ""
    if "<tool_call>" in t:
        return HERMES
    if "[TOOL_CALLS]" in t:
        return MISTRAL
    if "<|python_tag|>" in t or ("ipython" in t and "parameters" in t):
        return LLAMA3
    return GENERIC


def plan(body, lm) -> ToolPlan:
    """The tool plan of a ChatRequest (a plain one when it has no tools)."""
    tools = [t.function.model_dump(exclude_none=True) for t in body.tools or []]
    choice = body.tool_choice or ("auto" if tools else "none")
    if not tools:
        if choice not in ("none", "auto"):
            raise UnsupportedField("tool_choice", "tool_choice needs tools: give 'tools'")
        return ToolPlan()
    if choice == "none":  # no call, but the model still sees which tools exist (as OpenAI's)
        shown = [{"type": "function", "function": t} for t in tools]
        return ToolPlan(template_tools=shown if _renders_tools(lm, tools) else None)
    names = [t["name"] for t in tools]
    if len(set(names)) != len(names):
        raise UnsupportedField("tools", "two tools have the same name: names must be unique")
    if not isinstance(choice, str):  # {"type": "function", "function": {"name": ...}}
        wanted = choice.function.name
        if wanted not in names:
            raise UnsupportedField(
                "tool_choice", f"tool_choice names {wanted!r}, which is not among the tools"
            )
        tools_allowed = [t for t in tools if t["name"] == wanted]
        choice = "named"
    else:
        tools_allowed = tools
    if body.response_format is not None and body.response_format.type != "text":
        if choice != "auto":
            raise UnsupportedField(
                "response_format",
                "response_format cannot be combined with tool_choice 'required' or a named "
                "function: the call's arguments already follow the function's schema",
            )
    renders = _renders_tools(lm, tools)
    fmt = format_of(lm.tokenizer.chat_template) if renders else GENERIC
    parallel = body.parallel_tool_calls and choice != "named"
    if fmt is GENERIC and parallel and choice != "auto":
        fmt = GENERIC_LIST
    openai_tools = [{"type": "function", "function": t} for t in tools]
    return ToolPlan(
        template_tools=openai_tools if renders else None,
        system_note=None if renders else GENERIC_PROMPT.format(tools=json.dumps(tools)),
        grammar=call_grammar(fmt, tools_allowed, parallel) if choice != "auto" else None,
        fmt=fmt,
        names=frozenset(names),
    )


def _renders_tools(lm, tools: list[dict]) -> bool:
    """Whether the model's template writes the tools into the prompt (else: the generic note)."""
    probe = [{"role": "user", "content": "hi"}]
    openai_tools = [{"type": "function", "function": t} for t in tools]
    try:
        return lm.render_chat(probe, tools=openai_tools) != lm.render_chat(probe)
    except ValueError:  # a template that breaks on tools does not support them
        return False


def call_schema(tools: list[dict], arguments_key: str) -> dict:
    """A JSON Schema for one call: {"name": one of the tools, arguments_key: its parameters}.

    The parameters are taken strictly (no properties beyond those declared), as OpenAI's
    strict function calling does: a small model otherwise invents keys until it runs out.
    """
    options = []
    for t in tools:
        params = strict(t.get("parameters") or {"type": "object", "properties": {}})
        options.append({
            "type": "object",
            "properties": {"name": {"const": t["name"]}, arguments_key: params},
            "required": ["name", arguments_key],
            "additionalProperties": False,
        })  # fmt: skip
    return options[0] if len(options) == 1 else {"anyOf": options}


def call_grammar(fmt: CallFormat, tools: list[dict], parallel: bool) -> str:
    """A Lark grammar (llguidance's dialect) for one or more calls in the model's syntax."""
    schema = json.dumps(call_schema(tools, fmt.arguments_key))
    many = f"({_lark(fmt.separator)} call)*" if parallel else ""
    if fmt.listed:
        body = f"{_lark(fmt.open)} call {many} {_lark(fmt.close)}"
    else:
        one = f"{_lark(fmt.open)} call {_lark(fmt.close)}"
        body = f"{one} ({_lark(fmt.separator)} {one})*" if parallel else one
        if not fmt.open and not fmt.close:
            body = f"call {many}"
    return f"start: {body}\ncall: %json {schema}\n"


def _lark(text: str) -> str:
    return json.dumps(text) if text else ""


@dataclass
class ToolPlan:
    template_tools: list[dict] | None = None  # given to the chat template
    system_note: str | None = None  # the generic format's instructions, when the template has none
    grammar: str | None = None  # required / named: the output is constrained to calls
    fmt: CallFormat | None = None  # None: no tools, the text is the answer
    names: frozenset[str] = field(default_factory=frozenset)

    @property
    def constrains(self) -> bool:
        return self.grammar is not None

    def decoding(self, kw: dict) -> dict:
        if self.grammar is not None:
            kw["grammar"] = self.grammar
        return kw

    def messages(self, messages: list[dict]) -> list[dict]:
        """The conversation with the generic note in the system message, when needed."""
        if self.system_note is None:
            return messages
        if messages and messages[0]["role"] == "system":
            first = dict(messages[0], content=f"{messages[0]['content']}\n\n{self.system_note}")
            return [first, *messages[1:]]
        return [{"role": "system", "content": self.system_note}, *messages]

    def message(self, text: str, finish_reason: str) -> tuple[dict, str]:
        """The assistant message for a finished answer, and the finish reason OpenAI gives."""
        if self.fmt is None:
            return {"role": "assistant", "content": text}, finish_reason
        content, calls = parse_calls(text, self.fmt, self.names)
        if not calls:
            return {"role": "assistant", "content": text}, finish_reason
        message = {"role": "assistant", "content": content or None, "tool_calls": calls}
        return message, "tool_calls" if finish_reason == "stop" else finish_reason

    def stream(self) -> ToolStream:
        return ToolStream(self)


def parse_calls(text: str, fmt: CallFormat, names: frozenset[str]) -> tuple[str, list[dict]]:
    """(the text outside the calls, OpenAI tool_calls) from a model's answer."""
    if fmt is HERMES and "<tool_call>" in text:
        found, rest = [], []
        last = 0
        for m in re.finditer(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", text, re.S):
            rest.append(text[last : m.start()])
            last = m.end()
            found.append(m.group(1))
        rest.append(text[last:])
        calls = [c for c in (_call(_json(f), names) for f in found) if c]
        return "".join(rest).strip(), calls
    stripped = text.strip()
    if fmt is MISTRAL:
        if not stripped.startswith("[TOOL_CALLS]"):
            return text, []
        stripped = stripped[len("[TOOL_CALLS]") :].strip()
    stripped = stripped.removeprefix("<|python_tag|>").strip()
    value = _json(stripped)
    items = value if isinstance(value, list) else [value]
    calls = [_call(v, names) for v in items]
    if value is None or not calls or not all(calls):
        return text, []
    return "", calls


def _json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def _call(value, names: frozenset[str]) -> dict | None:
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    args = value.get("arguments", value.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as JSON text already
        args = _json(args) if _json(args) is not None else args
    arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    call_id = "call_" + uuid.uuid4().hex[:24]
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": value["name"], "arguments": arguments},
    }


class ToolStream:
    """Streamed text -> OpenAI chat deltas: content at once, calls when they are complete.

    Text that could still become a call (it starts like one) is held back; at the end
    the held text is parsed like a non-streamed answer.
    """

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.held = ""
        self.passing = plan.fmt is None  # no tools: everything is content
        self.called = False

    def push(self, text: str) -> list[dict]:
        if self.passing:
            return [{"content": text}]
        self.held += text
        head = self.held.lstrip()
        starts = _call_starts(self.plan.fmt)
        if not head or any(s.startswith(head) or head.startswith(s) for s in starts):
            return []  # may be (the start of) a call: wait
        self.passing, out = True, self.held
        self.held = ""
        return [{"content": out}]

    def finish(self) -> list[dict]:
        if self.passing or not self.held:
            return []
        content, calls = parse_calls(self.held, self.plan.fmt, self.plan.names)
        if not calls:
            return [{"content": self.held}]
        self.called = True
        out = [{"content": content}] if content else []
        for i, c in enumerate(calls):
            name = {"index": i, "id": c["id"], "type": "function",
                    "function": {"name": c["function"]["name"], "arguments": ""}}  # fmt: skip
            args = {"index": i, "function": {"arguments": c["function"]["arguments"]}}
            out += [{"tool_calls": [name]}, {"tool_calls": [args]}]
        return out

    def finish_reason(self, reason: str) -> str:
        return "tool_calls" if self.called and reason == "stop" else reason


def _call_starts(fmt: CallFormat) -> tuple[str, ...]:
    if fmt is HERMES:  # Qwen2.5-Coder often writes the bare JSON, without the tags
        return ("<tool_call>", "{")
    if fmt is MISTRAL:
        return ("[TOOL_CALLS]",)
    return ("{", "[", "<|python_tag|>")
