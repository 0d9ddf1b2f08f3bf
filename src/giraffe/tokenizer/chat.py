"""Chat templates: render a conversation to the exact prompt text a model was trained on.

Templates are Jinja, as in Hugging Face `tokenizer_config.json` and GGUF
`tokenizer.chat_template`, rendered in a sandbox the way `apply_chat_template` does:
trim_blocks, lstrip_blocks, `raise_exception`, `strftime_now`, a `tojson` that keeps
non-ASCII text, and the loop-control extension. Built-in templates cover models that
ship none. It does not tokenize: callers encode the rendered text.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

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
}


class ChatTemplateError(ValueError):
    """The conversation or the template cannot be rendered; the message says why."""


def _raise(message: str):
    raise ChatTemplateError(f"the chat template refused the conversation: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Hugging Face overrides jinja's tojson so that it does not HTML-escape.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


@lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(
            f"chat template syntax error at line {e.lineno}: {e.message}"
        ) from None


def resolve_template(template: str | None) -> str:
    """None -> ChatML; a builtin name -> its text; anything else is a Jinja template."""
    if template is None:
        return BUILTIN_TEMPLATES["chatml"]
    return BUILTIN_TEMPLATES.get(template, template)


def validate_messages(messages) -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatTemplateError("messages must be a non-empty list of {'role', 'content'} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ChatTemplateError(f"message {i} must be an object with 'role' and 'content'")
        if not isinstance(m["role"], str) or not isinstance(m["content"], str):
            raise ChatTemplateError(f"message {i}: 'role' and 'content' must be strings")
    return [dict(m) for m in messages]


def render_chat(
    messages,
    template: str,
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    **extra,
) -> str:
    messages = validate_messages(messages)
    compiled = _compile(template)
    try:
        return compiled.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **extra,
        )
    except ChatTemplateError:
        raise
    except jinja2.exceptions.SecurityError as e:
        raise ChatTemplateError(f"the chat template tried something unsafe: {e}") from None
    except (jinja2.TemplateError, TypeError, KeyError, IndexError) as e:
        raise ChatTemplateError(f"the chat template failed: {e}") from None
