"""Chat templates: render a conversation to the exact prompt text a model was trained on.

Templates are Jinja, as in Hugging Face `tokenizer_config.json` and GGUF
`tokenizer.chat_template`, rendered in a sandbox the way transformers' `apply_chat_template`
does: trim_blocks, lstrip_blocks, `raise_exception`, `strftime_now`, a `tojson` that keeps
non-ASCII text, the loop-control extension, and transformers' `{% generation %}` block,
which marks the text the model writes and so gives the assistant-token mask for
fine-tuning. The template sees `messages`, `tools`, `documents`, `add_generation_prompt`,
`bos_token`, `eos_token` and any extra keyword (`enable_thinking`, ...). Built-in templates
cover models that ship none. Messages are checked and normalised in `chat_messages`, the
Jinja environment is built in `chat_jinja` (imported at the first template). It does not
tokenize, except to turn generation spans into a token mask on request.
"""

from __future__ import annotations

import re
from pathlib import Path

from giraffe.tokenizer.chat_messages import (
    ChatTemplateError,
    plain,
    validate_documents,
    validate_messages,
    validate_tools,
)
from giraffe.tokenizer.tokenizer import Tokenizer

__all__ = [
    "BUILTIN_TEMPLATES",
    "ChatTemplateError",
    "generation_mask",
    "has_generation_blocks",
    "render_chat",
    "render_chat_spans",
    "no_template_note",
    "resolve_template",
    "template_from_option",
    "token_mask",
    "validate_messages",
]

# Gemma 3's chat template, verbatim: the `chat_template` of google/gemma-3-270m-it (the same
# text in the 1b/4b/12b/27b -it models' tokenizer_config.json). Found with a code search as
# quoted in chat-template tests (microsoft/onnxruntime-extensions' GEMMA3_CHAT_TEMPLATE and
# several copies that agree character for character). Gemma has no system role: a system
# message is folded into the first user turn; the assistant role is called "model".
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate '
    'user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

BUILTIN_TEMPLATES = {
    # OpenAI's ChatML, used by SmolLM, Qwen and many others.
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    # Meta's Llama-2-chat format: the system prompt folds into the first [INST] block.
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}"
        "{% set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
        "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
        "{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{% if message['role'] == 'user' %}"
        "{{ bos_token + '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
        "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
    # For models without special tokens: readable role labels.
    "plain": (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'user' %}{{ '<USER>: ' + message['content'] + '\\n' }}"
        "{% else %}{{ '<ASSISTANT>: ' + message['content'] + '\\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<ASSISTANT>:' }}{% endif %}"
    ),
    "gemma3": GEMMA3_TEMPLATE,
}


def resolve_template(template: str | None) -> str:
    """None -> ChatML; a builtin name -> its text; anything else is a Jinja template."""
    if template is None:
        return BUILTIN_TEMPLATES["chatml"]
    return BUILTIN_TEMPLATES.get(template, template)


def template_from_option(value: str) -> str:
    """A chat template given by name or file (`--template`): a builtin's text, or the text
    of a Jinja file (checked by compiling it)."""
    if value in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[value]
    path = Path(value)
    if not path.is_file():
        raise ChatTemplateError(
            f"template {value!r} is neither a builtin ({', '.join(BUILTIN_TEMPLATES)}) "
            "nor a file holding a Jinja chat template"
        )
    text = path.read_text(encoding="utf-8")
    from giraffe.tokenizer.chat_jinja import compile_template

    compile_template(text)  # a syntax error is reported now, not at the first message
    return text


def no_template_note(model: str) -> str:
    """What a door that chats tells the user about a model with no chat template."""
    return (
        f"note: {model} has no chat template (a base model?): conversations are written "
        "as ChatML, which it was not trained on; `giraffe generate` continues text, and "
        f"--template picks another format ({', '.join(BUILTIN_TEMPLATES)}, or a Jinja file)"
    )


def has_generation_blocks(template: str) -> bool:
    """Whether the template marks assistant text with `{% generation %}`."""
    return re.search(r"\{%-?\s*generation\s*-?%\}", template) is not None


def _context(messages, add_generation_prompt, bos_token, eos_token, tools, documents, extra):
    reserved = {"messages", "tools", "documents"} & set(extra)
    if reserved:
        raise ChatTemplateError(f"{sorted(reserved)[0]!r} is passed by name, not as an extra")
    return dict(
        messages=validate_messages(messages),
        tools=validate_tools(tools),
        documents=validate_documents(documents),
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
        **{k: plain(v, k) for k, v in extra.items()},
    )


def render_chat(
    messages,
    template: str,
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    tools=None,
    documents=None,
    **extra,
) -> str:
    """The prompt text for OpenAI-style `messages`, equal to `apply_chat_template(tokenize=False)`.

    `tools` are JSON-schema function specs, `documents` objects with title and text; any
    other keyword (`enable_thinking=False`, ...) becomes a template variable.
    """
    from giraffe.tokenizer.chat_jinja import compile_template, template_errors

    context = _context(
        messages, add_generation_prompt, bos_token, eos_token, tools, documents, extra
    )
    with template_errors():
        return compile_template(template).render(**context)


def render_chat_spans(
    messages,
    template: str,
    *,
    add_generation_prompt: bool = False,
    bos_token: str = "",
    eos_token: str = "",
    tools=None,
    documents=None,
    **extra,
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of its `{% generation %}` blocks."""
    from giraffe.tokenizer.chat_jinja import TRACKING, compile_template, template_errors

    if not has_generation_blocks(template):
        raise ChatTemplateError(
            "the chat template has no {% generation %} blocks, so it does not say which text "
            "the assistant writes; use a template that marks assistant turns with them"
        )
    context = _context(
        messages, add_generation_prompt, bos_token, eos_token, tools, documents, extra
    )
    pieces: list[str] = []
    blocks: list[tuple[int, int, str]] = []
    token = TRACKING.set((pieces, blocks))
    try:
        with template_errors():
            for piece in compile_template(template).generate(**context):
                pieces.append(piece)
    finally:
        TRACKING.reset(token)
    text = "".join(pieces)
    # A block inside {% set %} or a macro renders before its text is placed: its span
    # would be wrong (transformers' is too), so it is refused rather than trusted.
    if any(text[a:b] != body for a, b, body in blocks):
        raise ChatTemplateError(
            "a {% generation %} block is rendered inside {% set %} or a macro, so where its "
            "text lands is unknown; put the block in the template's main flow"
        )
    return text, [(a, b) for a, b, _ in blocks]


def token_mask(offsets, spans) -> list[bool]:
    """Per token: does it overlap any span? (the rule of transformers' assistant mask)."""
    covered = sorted(spans)
    return [any(s < b and e > a for a, b in covered) for s, e in offsets]


def generation_mask(
    tokenizer: Tokenizer, messages, template: str | None = None, **kw
) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and the mask of `{% generation %}` text.

    Equals `apply_chat_template(tokenize=True, return_assistant_tokens_mask=True)`: a token
    counts when any of its characters lies inside a generation block.
    """
    template = resolve_template(template if template is not None else tokenizer.chat_template)
    kw.setdefault("bos_token", tokenizer.bos_token or "")
    kw.setdefault("eos_token", tokenizer.eos_token or "")
    text, spans = render_chat_spans(messages, template, **kw)
    ids, offsets = tokenizer.encode_with_offsets(text)
    return ids, token_mask(offsets, spans)
