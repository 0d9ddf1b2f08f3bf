"""Chat templates rendered by us equal transformers' apply_chat_template; the sandbox holds."""

from __future__ import annotations

import pytest

from giraffe.tokenizer.chat import (
    BUILTIN_TEMPLATES,
    ChatTemplateError,
    render_chat,
    resolve_template,
)

SYSTEM = {"role": "system", "content": "You are a giraffe. Answer briefly."}
TURNS = [
    {"role": "user", "content": "Hi! Who are you?"},
    {"role": "assistant", "content": "A giraffe, 5.5 m tall."},
    {"role": "user", "content": "What do you eat? Ünïcödé 🦒"},
    {"role": "assistant", "content": "Acacia leaves."},
    {"role": "user", "content": "Thanks."},
]
CONVERSATIONS = {
    f"{n}-turn{'+system' if sys else ''}": ([SYSTEM] if sys else []) + TURNS[: 2 * n - 1]
    for n in (1, 2, 3)
    for sys in (False, True)
}


@pytest.fixture(scope="module")
def smollm2_template(smollm2_gguf):
    import gguf

    reader = gguf.GGUFReader(str(smollm2_gguf))
    return reader.fields["tokenizer.chat_template"].contents()


def hf_render(template, messages, add_generation_prompt, bos="<s>", eos="</s>"):
    """transformers' own renderer, on a tokenizer built offline."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<s>": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>"))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token="<unk>"
    )
    return tok.apply_chat_template(
        messages,
        chat_template=template,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("gen", [True, False])
def test_smollm2_template_equals_transformers(smollm2_template, name, gen):
    messages = CONVERSATIONS[name]
    ours = render_chat(messages, smollm2_template, add_generation_prompt=gen)
    assert ours == hf_render(smollm2_template, messages, gen)
    if not any(m["role"] == "system" for m in messages):
        assert "You are a helpful AI assistant named SmolLM" in ours  # the template's default


@pytest.mark.parametrize("builtin", sorted(BUILTIN_TEMPLATES))
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_builtin_templates_equal_transformers(builtin, name):
    template = BUILTIN_TEMPLATES[builtin]
    messages = CONVERSATIONS[name]
    ours = render_chat(
        messages, template, add_generation_prompt=True, bos_token="<s>", eos_token="</s>"
    )
    assert ours == hf_render(template, messages, True)


def test_llama2_format_by_hand():
    text = render_chat(
        [SYSTEM, TURNS[0], TURNS[1], TURNS[2]],
        BUILTIN_TEMPLATES["llama2"],
        bos_token="<s>",
        eos_token="</s>",
    )
    assert text == (
        "<s>[INST] <<SYS>>\nYou are a giraffe. Answer briefly.\n<</SYS>>\n\nHi! Who are you? [/INST]"
        " A giraffe, 5.5 m tall. </s><s>[INST] What do you eat? Ünïcödé 🦒 [/INST]"
    )


def test_resolve_template():
    assert resolve_template(None) == BUILTIN_TEMPLATES["chatml"]
    assert resolve_template("plain") == BUILTIN_TEMPLATES["plain"]
    assert resolve_template("{{ 1 }}") == "{{ 1 }}"


def test_raise_exception_reaches_the_user():
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        render_chat([TURNS[0], TURNS[0]], BUILTIN_TEMPLATES["llama2"])


@pytest.mark.parametrize(
    "messages, match",
    [
        ([], "non-empty"),
        ("hello", "non-empty"),
        ([{"content": "no role"}], "message 0"),
        ([{"role": "user", "content": 5}], "strings"),
    ],
)
def test_bad_messages(messages, match):
    with pytest.raises(ChatTemplateError, match=match):
        render_chat(messages, BUILTIN_TEMPLATES["chatml"])


def test_syntax_error_and_sandbox():
    with pytest.raises(ChatTemplateError, match="syntax error"):
        render_chat(TURNS[:1], "{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="unsafe"):
        render_chat(TURNS[:1], "{{ ''.__class__.__mro__[1].__subclasses__() }}")
