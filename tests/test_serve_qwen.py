"""Tool calling and fill-in-the-middle with Qwen2.5-Coder-0.5B-Instruct, through the real `openai` client.

Qwen's own chat template writes the tools into its system prompt and the earlier calls
and tool results into the history (`<tool_call>`, `<tool_response>`); the server parses
the model's call back into `tool_calls`. Answers are kept to a few tokens: this model
decodes slowly on a shared CPU.
"""

from __future__ import annotations

import json

import openai
import pytest
from serve_process import running_server
from weather_tool import WEATHER

pytestmark = pytest.mark.slow

MODEL = "qwen2.5-coder-0.5b-instruct"
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(qwen_gguf):  # qwen_gguf: skips when the model is not installed
    with running_server(MODEL, "--ctx", "1024", "--max-tokens-limit", "64") as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=900)


CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
}
RESULT = '{"temperature": 31, "sky": "sunny"}'


def history(call: dict) -> list[dict]:
    """The question, the model's call (arguments as JSON text, as clients send them), its result."""
    return QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": RESULT},
    ]


def answer_with(client, call_id: str, name: str, arguments: str) -> str:
    """Send the tool's result back; the model's final answer (tools still shown, no call allowed).

    The user asks again after the result: without that turn this 0.5B coder model writes
    its call again (then the tool's result) instead of answering. Measured on
    2026-12-06, greedy and at temperature 0.7 (8 seeds), with the tools rendered or not,
    the result as JSON or as text, with a system prompt asking to use it: every answer
    began with the same call; llama.cpp, given the same token ids, writes the same text
    greedily; the prompt equals transformers' rendering (test below). So the model, not
    the rendering: docs/serving.md.
    """
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    messages = history(call) + [
        {"role": "user", "content": "Thanks. In one sentence, how warm is it in Paris?"}
    ]
    r = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER], tool_choice="none", max_tokens=24,
        temperature=0,
    )  # fmt: skip
    return r.choices[0].message.content


def test_the_round_trip_renders_as_transformers_does(qwen_gguf):
    """The server's messages (tool_calls' arguments as JSON text) + tools, rendered by giraffe,
    equal transformers' rendering of Qwen2.5's own template (the GGUF's) with the arguments as
    an object, as transformers expects them (given the text, it would write a quoted string)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from giraffe.lm import load_tokenizer
    from giraffe.serve.schema import Message
    from giraffe.tokenizer.chat import render_chat, resolve_template

    tok = load_tokenizer(MODEL)
    wire = history(CALL)
    as_object = json.loads(json.dumps(wire))
    as_object[1]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris", "unit": "celsius"}
    ends = {"bos_token": tok.bos_token or "", "eos_token": tok.eos_token or ""}
    for tools in ([WEATHER], None):
        ours = render_chat([Message(**m).as_dict() for m in wire],
                           resolve_template(tok.chat_template), tools=tools, **ends)  # fmt: skip
        theirs, _ = render_jinja_template([as_object], tools=tools, chat_template=tok.chat_template,
                                          add_generation_prompt=True, **ends)  # fmt: skip
        assert ours == theirs[0]
        assert '"arguments": {"city": "Paris", "unit": "celsius"}' in ours
        assert ours.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_tool_choice_none_still_shows_the_tools(client):
    def prompt_tokens(**kw) -> int:
        r = client.chat.completions.create(
            model=MODEL, messages=history(CALL), max_tokens=1, temperature=0, **kw
        )
        return r.usage.prompt_tokens

    shown = prompt_tokens(tools=[WEATHER], tool_choice="none")
    assert shown == prompt_tokens(tools=[WEATHER], tool_choice="auto") > prompt_tokens()


def test_weather_round_trip(client):
    r = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER], max_tokens=40, temperature=0
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert args["city"] == "Paris" and args["unit"] in ("celsius", "fahrenheit")
    assert "31" in answer_with(client, call.id, call.function.name, call.function.arguments)


def test_weather_round_trip_streamed(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER], max_tokens=40, temperature=0,
        stream=True,
    )  # fmt: skip
    calls: dict[int, dict] = {}
    reasons = []
    for chunk in stream:
        for c in chunk.choices:
            reasons.append(c.finish_reason)
            for d in c.delta.tool_calls or []:
                call = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = d.id or call["id"]
                call["name"] += (d.function.name or "") if d.function else ""
                call["arguments"] += (d.function.arguments or "") if d.function else ""
    assert "tool_calls" in reasons and list(calls) == [0]
    call = calls[0]
    assert call["name"] == "get_weather" and json.loads(call["arguments"])["city"] == "Paris"
    assert "31" in answer_with(client, call["id"], call["name"], call["arguments"])


def test_fill_in_the_middle_completes_a_function(client):
    r = client.completions.create(
        model=MODEL,
        prompt="def add(a, b):\n    return ",
        suffix="\n\n\nprint(add(2, 3))\n",
        max_tokens=6,
        temperature=0,
    )
    assert "a + b" in r.choices[0].text
