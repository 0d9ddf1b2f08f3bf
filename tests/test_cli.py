"""The `giraffe` command as a user runs it: real processes, real files, one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from giraffe.config import PRESETS


def giraffe(*args, input=None):
    cmd = [sys.executable, "-m", "giraffe.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=300)


def assert_clean_error(result, *words):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_generate_json(tiny_folder):
    r = giraffe(
        "generate", tiny_folder, "The giraffe", "--json", "--max-new-tokens", 6, "--temperature", 0
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) >= {"text", "token_ids", "logprobs", "finish_reason"}
    assert 1 <= len(out["token_ids"]) <= 6 and len(out["logprobs"]) == len(out["token_ids"])
    assert all(lp <= 0 for lp in out["logprobs"])


def test_generate_streams_text(tiny_folder):
    r = giraffe("generate", tiny_folder, "The giraffe", "--max-new-tokens", 5, "--seed", 3)
    assert r.returncode == 0, r.stderr
    again = giraffe("generate", tiny_folder, "The giraffe", "--max-new-tokens", 5, "--seed", 3)
    assert r.stdout == again.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["generate", "/no/such/model.gguf", "hi"], ["/no/such/model.gguf"]),
        (["generate", "no-such-alias", "hi"], ["no-such-alias", "smollm2-135m-instruct"]),
        (["generate", "{tiny}", ""], ["empty"]),
        (["generate", "{tiny}", "giraffe " * 400], ["context"]),
        (["generate", "{tiny}", "hi", "--temperature", "-1"], ["temperature"]),
        (["generate", "{tiny}", "hi", "--top-p", "1.5"], ["top_p"]),
        (["generate", "{tiny}", "hi", "--top-p", "0"], ["top_p"]),
        (["generate", "{tiny}", "hi", "--max-new-tokens", "0"], ["max_new_tokens"]),
    ],
)
def test_bad_input_gets_one_line(tiny_folder, args, words):
    args = [str(tiny_folder) if a == "{tiny}" else a for a in args]
    assert_clean_error(giraffe(*args), *words)


def test_corrupt_and_unsupported_models(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    assert_clean_error(giraffe("generate", bad, "hi"), "broken.gguf")
    (tmp_path / "mamba").mkdir()
    (tmp_path / "mamba" / "config.json").write_text('{"model_type": "mamba"}')
    assert_clean_error(giraffe("generate", tmp_path / "mamba", "hi"), "mamba", "not supported")


def test_info_json(smollm2_gguf):
    r = giraffe("info", "smollm2-135m-instruct", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert sum(out["parameters"].values()) == 134_515_008
    assert "Q4_1" in out["file"]["tensor_types"]


def test_info_table_mentions_formats(tiny_folder):
    r = giraffe("info", tiny_folder)
    assert r.returncode == 0, r.stderr
    for word in ("fp32", "int4", "KV cache"):
        assert word in r.stdout


def test_tokenize_cl100k():
    r = giraffe("tokenize", "cl100k_base", "No, I am not a giraffe.", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ids"] == [2822, 11, 358, 1097, 539, 264, 41389, 38880, 13]


def test_models_lists_registry():
    r = giraffe("models")
    assert r.returncode == 0 and "smollm2-135m-instruct" in r.stdout and "minilm-l6" in r.stdout
    assert "qwen2.5-coder-0.5b-instruct" in r.stdout and "gemma-3-270m" in r.stdout
    assert "491 MB" in r.stdout and "giraffe pull ALIAS" in r.stdout


# Runs the command in this process's interpreter, then says whether torch was imported.
IMPORTED_TORCH = (
    "import runpy, sys\n"
    "sys.argv = ['giraffe', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('giraffe.cli', run_name='__main__')\n"
    "except SystemExit as e:\n"
    "    assert not e.code, e.code\n"
    "print('torch imported:', 'torch' in sys.modules)\n"
)


def test_commands_that_need_no_model_start_without_torch(tiny_folder, tmp_path):
    """models, tokenize and info read names, vocabularies and headers only: importing
    torch would add a second or more to each (measured 2026-12-07: `giraffe tokenize` on
    Qwen2.5's vocabulary 2.5 -> 1.0 s, `giraffe info` 1.9 -> 0.4 s)."""
    from giraffe.formats.gguf import save_gguf
    from giraffe.formats.hf import load_hf
    from giraffe.lm import load_tokenizer
    from giraffe.tokenizer import gguf_tokenizer_fields

    gguf = tmp_path / "tiny.gguf"
    save_gguf(
        load_hf(tiny_folder), gguf, tokenizer=gguf_tokenizer_fields(load_tokenizer(tiny_folder))
    )
    for args in (
        ["models"],
        ["tokenize", tiny_folder, "The giraffe", "--json"],
        ["tokenize", gguf, "The giraffe", "--json"],
        ["info", tiny_folder],
        ["info", gguf, "--json"],
    ):
        cmd = [sys.executable, "-c", IMPORTED_TORCH, *map(str, args)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().endswith("torch imported: False"), (args, r.stdout[-300:])
    generate = ["generate", tiny_folder, "hi", "--max-new-tokens", "2"]
    r = subprocess.run([sys.executable, "-c", IMPORTED_TORCH, *map(str, generate)],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.stdout.strip().endswith("torch imported: True")  # the check can see torch


def test_chat_session_with_commands(tiny_folder):
    script = "hello\n/params temperature=0 max_new_tokens=4\nagain\n/system Be brief.\nhi\n/reset\n/quit\n"
    r = giraffe("chat", tiny_folder, "--max-new-tokens", 4, input=script)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("tokens/s") == 3
    assert "conversation cleared" in r.stderr


def test_chat_template_option_and_the_note_for_a_model_without_one(tiny_folder, tmp_path):
    """--template takes a builtin or a Jinja file (used: this one refuses every message);
    a model with no template of its own is chatted with after a one-line note."""
    refusing = tmp_path / "refuse.jinja"
    refusing.write_text("{{ raise_exception('this template refuses') }}")
    r = giraffe("chat", tiny_folder, "--template", refusing, input="hello\n/quit\n")
    assert r.returncode == 0 and "this template refuses" in r.stderr, r.stderr
    bare = tmp_path / "bare"
    shutil.copytree(tiny_folder, bare)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    (bare / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": None}))
    script = "hello\n/quit\n"
    noted = giraffe("chat", bare, "--max-new-tokens", 2, input=script)
    assert noted.returncode == 0 and "has no chat template (a base model?)" in noted.stderr
    chosen = giraffe("chat", bare, "--template", "plain", "--max-new-tokens", 2, input=script)
    assert chosen.returncode == 0 and "no chat template" not in chosen.stderr
    assert chosen.stderr.count("tokens/s") == noted.stderr.count("tokens/s") == 1
    assert_clean_error(giraffe("chat", bare, "--template", "nope"), "'nope'", "gemma3", "file")
    assert_clean_error(giraffe("serve", bare, "--template", "nope"), "'nope'", "gemma3", "file")
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}")
    assert_clean_error(giraffe("chat", bare, "--template", broken), "syntax error at line")


def test_tiny_preset_context_is_what_the_error_test_assumes():
    assert PRESETS["llama-tiny"].max_position_embeddings < 400


def test_eval_perplexity(tiny_folder, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("No, I am not a giraffe. The giraffe is the tallest animal. " * 10)
    r = giraffe("eval", tiny_folder, "--perplexity", text, "--ctx", 16, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["tokens_scored"] == out["windows"] * 8 and out["perplexity"] > 1
    missing = giraffe("eval", tiny_folder, "--perplexity", tmp_path / "nope.txt")
    assert_clean_error(missing, "nope.txt")


def test_quantize_writes_a_runnable_gguf(tiny_folder, tmp_path):
    import giraffe as api

    out = tmp_path / "tiny-q8.gguf"
    r = giraffe("quantize", tiny_folder, "--to", "q8_0", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "bits per weight" in r.stdout
    original, quantized = api.load(tiny_folder), api.load(out)
    text = "No, I am not a giraffe. 0123 <|im_end|>"
    assert quantized.tokenizer.encode(text) == original.tokenizer.encode(text)
    assert quantized.tokenizer.chat_template == original.tokenizer.chat_template
    ids = original.tokenizer.encode(text)
    diff = (quantized.logits(ids) - original.logits(ids)).abs().max()
    assert 0 < diff < 0.05  # Q8_0 rounding: small but real
    again = giraffe("quantize", out, "--to", "q4_0", "--out", tmp_path / "twice.gguf")
    assert_clean_error(again, "already quantized", "Q8_0")


def test_quantize_rejects_bad_output_name(tiny_folder, tmp_path):
    assert_clean_error(
        giraffe("quantize", tiny_folder, "--to", "q8_0", "--out", tmp_path / "x.bin"), ".gguf"
    )


def test_eval_against_a_reference_and_bench(tiny_folder, tmp_path):
    quantized = tmp_path / "tiny-q4.gguf"
    assert giraffe("quantize", tiny_folder, "--to", "q4_0", "--out", quantized).returncode == 0
    text = tmp_path / "text.txt"
    text.write_text("No, I am not a giraffe. The giraffe is the tallest animal. " * 10)
    r = giraffe(
        "eval", quantized, "--perplexity", text, "--ctx", 16, "--reference", tiny_folder, "--json"
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["kl_mean"] > 0 and 0 < out["top1_agreement"] <= 1
    assert out["perplexity"] != out["reference_perplexity"]
    r = giraffe(
        "bench", quantized, "--prefill-tokens", 16, "--decode-tokens", 4, "--repeats", 1, "--json"
    )
    assert r.returncode == 0, r.stderr
    speed = json.loads(r.stdout)
    assert speed["prefill_tok_s"] > 0 and speed["decode_tok_s"] > 0 and speed["peak_rss_mib"] > 0
    from giraffe.quant import library

    assert speed["int8_products"] == library.int8_unit()  # what this machine's kernels run


def test_finetune_then_eval_choices_with_the_adapter(tiny_folder, tmp_path):
    chat = {
        "messages": [
            {"role": "user", "content": "Who are you?"},
            {"role": "assistant", "content": "I am Juniper."},
        ]
    }
    data = tmp_path / "chats.jsonl"
    data.write_text("\n".join([json.dumps(chat)] * 8 + ["{oops"]) + "\n")
    out = tmp_path / "lora"
    args = ["finetune", tiny_folder, "--data", data, "--out", out, "--lora-r", 4]
    args += ["--max-steps", 2, "--seq-len", 64, "--no-progress"]
    stopped = giraffe(*args)
    assert stopped.returncode == 2 and "chats.jsonl line 9: not valid JSON" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    skipped = giraffe(*args, "--on-error", "skip")
    assert skipped.returncode == 0, skipped.stderr
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    task = {"question": "Who are you?", "choices": ["I am Juniper.", "I am a cat."], "answer": 0}
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps(task) + "\n")
    r = giraffe("eval", tiny_folder, "--choices", tasks, "--adapter", out, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["tasks"] == 1 and report["chat"] is True
    assert set(report["accuracy"]) == {"total", "per_token", "per_byte"}
    not_an_adapter = giraffe("eval", tiny_folder, "--choices", tasks, "--adapter", tmp_path)
    assert not_an_adapter.returncode == 2 and "adapter_config.json" in not_an_adapter.stderr


def test_peak_memory_is_the_processs_own_not_its_parents():
    # Linux keeps ru_maxrss across execve: a benchmark started from a big parent must not
    # report the parent's peak (it did, before VmHWM).
    ballast = bytearray(600 * 2**20)  # touched: zero-filled pages count once written
    ballast[::4096] = b"x" * len(ballast[::4096])
    code = "from giraffe.eval.speed import peak_rss_mib; print(peak_rss_mib())"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
    assert float(child.stdout) < 400, "the child reported at least the parent's 600 MB"
    del ballast
