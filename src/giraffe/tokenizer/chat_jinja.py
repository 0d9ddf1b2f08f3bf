"""The Jinja side of chat templates: the sandboxed environment transformers renders in.

`compile_template` builds it as `apply_chat_template` does (trim_blocks, lstrip_blocks,
`raise_exception`, `strftime_now`, a `tojson` that keeps non-ASCII text, loop controls and
the `{% generation %}` block, whose spans `TRACKING` collects while `chat.render_chat_spans`
runs); `template_errors` turns what a template raises into one-line ChatTemplateErrors.
Apart from `giraffe.tokenizer.chat` so that jinja2 (~0.06 s) is imported at the first
template, not at every start. It does not know messages or tokens.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from giraffe.tokenizer.chat_messages import ChatTemplateError


def _raise(message: str):
    raise ChatTemplateError(f"the chat template refused the conversation: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Hugging Face overrides jinja's tojson so that it does not HTML-escape.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


# While `render_chat_spans` runs: (pieces rendered so far, (start, end, text) per block).
TRACKING: ContextVar[tuple[list[str], list[tuple[int, int, str]]] | None] = ContextVar(
    "giraffe_generation_tracking", default=None
)


class GenerationBlocks(Extension):
    """`{% generation %}...{% endgeneration %}`: renders its body and notes where it lands.

    transformers' extension for the text the model writes (assistant turns). Outside
    `render_chat_spans` the block renders its body and records nothing.
    """

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_note", []), [], [], body).set_lineno(lineno)

    def _note(self, caller) -> str:
        text = caller()
        tracking = TRACKING.get()
        if tracking is not None:
            # Output is streamed piece by piece, so what came before is all of `pieces`.
            pieces, spans = tracking
            start = sum(len(p) for p in pieces)
            spans.append((start, start + len(text), text))
        return text


@lru_cache(maxsize=32)
def compile_template(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlocks, loopcontrols]
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


class template_errors:
    """Template failures become one-line ChatTemplateErrors."""

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if e is None or isinstance(e, ChatTemplateError):
            return False
        if isinstance(e, jinja2.exceptions.SecurityError):
            raise ChatTemplateError(f"the chat template tried something unsafe: {e}") from None
        if isinstance(e, (jinja2.TemplateError, TypeError, KeyError, IndexError)):
            raise ChatTemplateError(f"the chat template failed: {e}") from None
        return False
