"""Real models' chat templates, tools, documents, extra variables and generation blocks.

The oracle is transformers' `apply_chat_template` on the same template text: Qwen2.5's from
its GGUF, Gemma 3's from giraffe's builtin copy of the official one.
"""

from __future__ import annotations

import json

import pytest

from giraffe.tokenizer import load_tokenizer_file
from giraffe.tokenizer.chat import (
    BUILTIN_TEMPLATES,
    ChatTemplateError,
    generation_mask,
    render_chat,
    render_chat_spans,
    token_mask,
)

SYSTEM = {"role": "system", "content": "You are a giraffe. Answer briefly."}
TURNS = [
    {"role": "user", "content": "Hi! Who are you?"},
    {"role": "assistant", "content": "A giraffe, 5.5 m tall."},
    {"role": "user", "content": "What do you eat? Ünïcödé 🦒"},
    {"role": "assistant", "content": "  Acacia leaves.\n"},
    {"role": "user", "content": "Thanks."},
]
CONVERSATIONS = {
    f"{n}-turn{'+system' if sys else ''}": ([SYSTEM] if sys else []) + TURNS[: 2 * n - 1]
    for n in (1, 2, 3)
    for sys in (False, True)
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_height",
            "description": "Height of an animal in metres.",
            "parameters": {
                "type": "object",
                "properties": {"animal": {"type": "string", "description": "its name"}},
                "required": ["animal"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "convert",
            "description": "Convert metres to feet.",
            "parameters": {"type": "object", "properties": {"metres": {"type": "number"}}},
        },
    },
]
CALL = {"animal": "giraffe", "note": "größte"}
TOOL_ROUND_TRIP = [
    {"role": "user", "content": "How tall is a giraffe, in feet?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_height", "arguments": CALL}},
            {"id": "c2", "type": "function", "function": {"name": "convert", "arguments": {}}},
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "name": "get_height", "content": "5.5"},
    {"role": "tool", "tool_call_id": "c2", "name": "convert", "content": "18.0"},
    {"role": "assistant", "content": "About 18 feet."},
    {"role": "user", "content": "And in metres?"},
]


def hf_render(template, messages, bos="<s>", eos="</s>", **kw):
    """transformers' own renderer, on a tokenizer built offline."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<s>": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>"))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token="<unk>"
    )
    return tok.apply_chat_template(messages, chat_template=template, tokenize=False, **kw)


@pytest.fixture(scope="module")
def qwen_template(qwen_gguf):
    import gguf

    return gguf.GGUFReader(str(qwen_gguf)).fields["tokenizer.chat_template"].contents()


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("gen", [True, False])
def test_qwen25_template_equals_transformers(qwen_template, name, gen):
    messages = CONVERSATIONS[name]
    ours = render_chat(messages, qwen_template, add_generation_prompt=gen)
    assert ours == hf_render(qwen_template, messages, add_generation_prompt=gen)
    assert ours.startswith("<|im_start|>system\n")  # Qwen's default system prompt or ours


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("gen", [True, False])
def test_gemma3_template_equals_transformers(name, gen):
    template = BUILTIN_TEMPLATES["gemma3"]
    messages = CONVERSATIONS[name]
    ours = render_chat(messages, template, add_generation_prompt=gen, bos_token="<bos>")
    assert ours == hf_render(template, messages, bos="<bos>", add_generation_prompt=gen)
    assert ours.startswith("<bos><start_of_turn>user\n")
    assert "<start_of_turn>model\nA giraffe" in ours or len(messages) < 3


def test_gemma3_folds_the_system_prompt_and_trims():
    text = render_chat([SYSTEM, *TURNS[:4]], BUILTIN_TEMPLATES["gemma3"], bos_token="<bos>")
    assert text.startswith(
        "<bos><start_of_turn>user\nYou are a giraffe. Answer briefly.\n\nHi! Who are you?"
        "<end_of_turn>\n"
    )
    assert "<start_of_turn>model\nAcacia leaves.<end_of_turn>\n<start_of_turn>model\n" in text


def test_gemma3_refuses_roles_out_of_order():
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        render_chat([TURNS[0], TURNS[0]], BUILTIN_TEMPLATES["gemma3"])


@pytest.mark.parametrize("system", [False, True])
@pytest.mark.parametrize("gen", [True, False])
def test_qwen25_tools_and_tool_call_round_trip(qwen_template, system, gen):
    messages = ([SYSTEM] if system else []) + TOOL_ROUND_TRIP
    ours = render_chat(messages, qwen_template, tools=TOOLS, add_generation_prompt=gen)
    assert ours == hf_render(qwen_template, messages, tools=TOOLS, add_generation_prompt=gen)
    assert "# Tools" in ours and '"name": "get_height"' in ours
    assert '<tool_call>\n{"name": "get_height", "arguments": {"animal": "giraffe"' in ours
    assert "<|im_start|>user\n<tool_response>\n5.5\n</tool_response>\n<tool_response>" in ours
    # No tools offered, the history alone: still equal.
    plain_history = render_chat(messages, qwen_template, add_generation_prompt=gen)
    assert plain_history == hf_render(qwen_template, messages, add_generation_prompt=gen)


def test_openai_string_arguments_render_as_objects(qwen_template):
    as_string = json.loads(json.dumps(TOOL_ROUND_TRIP))
    for call in as_string[1]["tool_calls"]:
        call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
    as_string[1]["tool_calls"][1]["function"]["arguments"] = ""  # OpenAI's "no arguments"
    ours = render_chat(as_string, qwen_template, tools=TOOLS)
    assert ours == render_chat(TOOL_ROUND_TRIP, qwen_template, tools=TOOLS)
    assert TOOL_ROUND_TRIP[1]["tool_calls"][0]["function"]["arguments"] is CALL  # not mutated


@pytest.mark.parametrize(
    "arguments, match",
    [("{not json", "not valid JSON"), ("[1, 2]", "must be a JSON object"), (7, "JSON object")],
)
def test_bad_tool_call_arguments(qwen_template, arguments, match):
    bad = [
        TURNS[0],
        {
            "role": "assistant",
            "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": arguments}}],
        },
    ]
    with pytest.raises(ChatTemplateError, match=f"message 1: tool call 0.*{match}"):
        render_chat(bad, qwen_template)


@pytest.mark.parametrize(
    "messages, match",
    [
        ([{"role": "assistant", "content": None}], "only an assistant message with tool_calls"),
        ([{"role": "user", "content": [{"text": "no type"}]}], "content part"),
        ([{"role": "tool", "content": "x", "tool_call_id": 3}], "tool_call_id"),
        ([{"role": "assistant", "tool_calls": [{"function": {}}]}], "function 'name'"),
        ([{"role": "user", "content": "x", "extra": object()}], r"message 0\.extra is a object"),
    ],
)
def test_bad_messages_name_the_message(messages, match):
    with pytest.raises(ChatTemplateError, match=match):
        render_chat(messages, BUILTIN_TEMPLATES["chatml"])


EXTRAS = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    "{% if documents %}{% for d in documents %}[{{ loop.index }}] {{ d.title }}: {{ d.text }}\n"
    "{% endfor %}{% endif %}"
    "{% if add_generation_prompt %}<|assistant|>"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n{% endif %}"
    "{% endif %}"
)


@pytest.mark.parametrize("thinking", [None, True, False])
def test_documents_and_extra_variables_equal_transformers(thinking):
    docs = [{"title": "Giraffes", "text": "They are tall."}, {"title": "Acacia", "text": "Thorny."}]
    kw = {} if thinking is None else {"enable_thinking": thinking}
    ours = render_chat(TURNS[:1], EXTRAS, documents=docs, **kw)
    assert ours == hf_render(EXTRAS, TURNS[:1], documents=docs, add_generation_prompt=True, **kw)
    assert "[2] Acacia: Thorny." in ours
    assert ("<think>" in ours) == (thinking is False)


def test_bad_tools_and_documents():
    with pytest.raises(ChatTemplateError, match="tool 0 must be a JSON-schema object"):
        render_chat(TURNS[:1], EXTRAS, tools=["get_height"])
    with pytest.raises(ChatTemplateError, match="documents must be a list"):
        render_chat(TURNS[:1], EXTRAS, documents="a text")


# ChatML with transformers' {% generation %} marks around what the assistant writes.
CHATML_GENERATION = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}<|im_start|>assistant\n"
    "{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_generation_blocks_render_and_mask_as_transformers(tiny_folder, name):
    from transformers import PreTrainedTokenizerFast

    messages = CONVERSATIONS[name]
    ours = load_tokenizer_file(tiny_folder)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tiny_folder / "tokenizer.json"))
    want = hf.apply_chat_template(
        messages,
        chat_template=CHATML_GENERATION,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids, mask = generation_mask(ours, messages, CHATML_GENERATION)
    assert ids == list(want["input_ids"])
    assert [int(m) for m in mask] == list(want["assistant_masks"])
    text, spans = render_chat_spans(messages, CHATML_GENERATION)
    assert text == render_chat(messages, CHATML_GENERATION, add_generation_prompt=False)
    assert [text[a:b] for a, b in spans] == [
        m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"
    ]


def test_generation_spans_inside_loops_and_filters():
    template = (
        "{% for m in messages %}{% if m.role == 'assistant' %}A: {% generation %}"
        "{{ m.content | upper }}{% endgeneration %};{% else %}U: {{ m.content }};{% endif %}"
        "{% endfor %}"
    )
    text, spans = render_chat_spans(TURNS[:4], template)
    assert [text[a:b] for a, b in spans] == ["A GIRAFFE, 5.5 M TALL.", "  ACACIA LEAVES.\n"]


def test_generation_block_inside_set_is_refused():
    # {% set %} renders the block before its text is placed: the span would be wrong.
    template = (
        "{% for m in messages %}{% set body %}{% generation %}{{ m.content }}"
        "{% endgeneration %}{% endset %}[{{ m.role }}] {{ body }}\n{% endfor %}"
    )
    with pytest.raises(ChatTemplateError, match="inside \\{% set %\\} or a macro"):
        render_chat_spans(TURNS[:2], template)
    assert (
        render_chat(TURNS[:2], template)
        == "[user] Hi! Who are you?\n[assistant] A giraffe, 5.5 m tall.\n"
    )


def test_token_mask_overlap_rule():
    # A token counts when any of its characters is inside a span.
    offsets = [(0, 2), (2, 5), (5, 6), (6, 9)]
    assert token_mask(offsets, [(3, 6)]) == [False, True, True, False]
    assert token_mask(offsets, []) == [False] * 4


def test_mask_needs_generation_blocks():
    with pytest.raises(ChatTemplateError, match="no \\{% generation %\\} blocks"):
        render_chat_spans(TURNS[:2], BUILTIN_TEMPLATES["chatml"])
