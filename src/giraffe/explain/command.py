"""`giraffe explain ...`: the command-line door onto the explainers.

`add_explain_parser(subparsers)` adds `explain {attention,next,lens,embeddings,sizes,
decode}`; `run_explain(args)` runs the chosen view and prints it with rich (or JSON with
`--json`). The logic lives in the explainer modules; this file parses, loads and prints.
Bad input raises ValueError with a full sentence, which the CLI prints as one line.
Models are loaded with `packed=False`: explainers read float weights and the reference
attention path, the numbers `transformers` computes too.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from rich.console import Console
from rich.table import Table
from rich.text import Text

from giraffe.explain import sizes


def add_explain_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "explain",
        help="see inside a model: attention, next token, logit lens, embeddings, sizes, decoding",
    )
    sub = p.add_subparsers(dest="explain_command", required=True, metavar="VIEW")
    _attention_parser(sub)
    _next_parser(sub)
    _lens_parser(sub)
    _embeddings_parser(sub)
    _sizes_parser(sub)
    _decode_parser(sub)
    return p


def _model_and_text(p, what: str = "text") -> None:
    p.add_argument("model", help="alias, .gguf file or Hugging Face folder")
    p.add_argument(what, help=f"the {what} to look at")


def _attention_parser(sub) -> None:
    a = sub.add_parser("attention", help="attention maps of every layer and head (HTML + PNG)")
    _model_and_text(a)
    a.add_argument("--out", default="attention.html", help="standalone HTML page to write")
    a.add_argument("--png", default=None, help="also write one head's heatmap to this PNG")
    a.add_argument("--layer", type=int, default=0, help="layer of the PNG heatmap (from 0)")
    a.add_argument("--head", type=int, default=0, help="head of the PNG heatmap (from 0)")


def _next_parser(sub) -> None:
    n = sub.add_parser("next", help="top-k next tokens at every position; sampling reshaped")
    _model_and_text(n)
    n.add_argument("--top-k", type=int, default=5, help="candidates shown per position")
    n.add_argument(
        "--step", type=int, default=-1, help="position whose distribution is reshaped (-1 = last)"
    )
    n.add_argument(
        "--try",
        dest="settings",
        action="append",
        metavar="SETTINGS",
        help="a reshaping to show, e.g. 'temperature=0.7,top_p=0.9' (repeatable)",
    )
    n.add_argument("--png", default=None, help="write the reshaped distributions side by side")
    n.add_argument("--json", action="store_true")


def _lens_parser(sub) -> None:
    lens = sub.add_parser("lens", help="logit lens: each layer's prediction (table + heatmap)")
    _model_and_text(lens)
    lens.add_argument(
        "--columns", type=int, default=10, help="positions shown in the terminal (the last ones)"
    )
    lens.add_argument("--png", default=None, help="write the layers x positions heatmap")
    lens.add_argument("--json", action="store_true")


def _embeddings_parser(sub) -> None:
    e = sub.add_parser("embeddings", help="cosine similarity, neighbours, 2-D PCA of words")
    e.add_argument("model", help="alias, .gguf file or Hugging Face folder")
    e.add_argument("words", nargs="+", help="words (or sentences, with --sentences) to compare")
    e.add_argument("--neighbours", type=int, default=8, help="nearest vocabulary tokens per word")
    e.add_argument(
        "--exact", action="store_true", help="do not also try each word with a leading space"
    )
    e.add_argument(
        "--sentences",
        action="store_true",
        help="the words are sentences: embed each whole with an encoder model (e.g. minilm-l6)",
    )
    e.add_argument("--png", default=None, help="write the 2-D PCA plot")
    e.add_argument("--json", action="store_true")


def _sizes_parser(sub) -> None:
    s = sub.add_parser("sizes", help="parameters, memory per format, KV cache, FLOPs, what fits")
    s.add_argument(
        "model", nargs="?", default=None, help="alias, .gguf file, HF folder or preset name"
    )
    s.add_argument(
        "--preset",
        default=None,
        help=f"a hypothetical config: {', '.join(sorted(sizes.SIZE_PRESETS))} (or a giraffe preset)",
    )
    s.add_argument("--ram", type=float, default=None, metavar="GiB", help="memory to fit into")
    s.add_argument("--json", action="store_true")


def _decode_parser(sub) -> None:
    d = sub.add_parser("decode", help="greedy, beam and sampling side by side")
    _model_and_text(d, "prompt")
    d.add_argument("--max-new-tokens", type=int, default=40)
    d.add_argument("--seed", type=int, default=0, help="seed shared by the sampled rows")
    d.add_argument(
        "--try",
        dest="strategies",
        action="append",
        metavar="SETTINGS",
        help="a strategy instead of the default set, e.g. 'num_beams=4' or "
        "'temperature=0.7,top_p=0.9' (repeatable)",
    )
    d.add_argument("--ngram", type=int, default=3, help="n of the repetition rate's n-grams")
    d.add_argument("--json", action="store_true")


# ---- running ----------------------------------------------------------------------------


def run_explain(args: argparse.Namespace) -> int:
    views = {
        "attention": _attention,
        "next": _next,
        "lens": _lens,
        "embeddings": _embeddings,
        "sizes": _sizes,
        "decode": _decode,
    }
    return views[args.explain_command](args) or 0


def _load(name: str):
    """A decoder as float32 `LanguageModel`, or an encoder as `SentenceEncoder`."""
    from giraffe import embedder
    from giraffe.lm import load

    if embedder.is_encoder(name):
        return embedder.load(name)
    return load(name, packed=False)


def _print_json(data) -> None:
    json.dump(data, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


def _visible(token: str) -> str:
    """Escapes (\\n, \\t) and a visible space, so that ' the' and 'the' look different."""
    return repr(token)[1:-1].replace(" ", "\u2423")


def _shown(token: str) -> Text:
    """A token as plain (never markup) text, whitespace made visible."""
    return Text(_visible(token))


def _attention(args) -> None:
    from giraffe.explain.attention import attention_maps, write_html, write_png

    lm = _load(args.model)
    maps = attention_maps(lm, args.text)
    if args.png:
        maps.head(args.layer, args.head)  # a bad layer/head fails before anything is written
    title = f"{args.model}: attention, {len(maps.ids)} tokens"
    page = write_html(maps, args.out, title=title)
    console = Console(highlight=False)
    console.print(
        f"{maps.n_layers} layers x {maps.n_heads} heads over {len(maps.ids)} tokens -> "
        f"{page} ({sizes.human_bytes(page.stat().st_size)}); open it in a browser"
    )
    if args.png:
        write_png(maps, args.layer, args.head, args.png)
        console.print(f"layer {args.layer}, head {args.head} -> {args.png}")


def _next(args) -> None:
    from giraffe.explain.next_token import (
        DEFAULT_SETTINGS,
        next_token_table,
        parse_setting,
        reshape_all,
        reshaped_dict,
        write_reshape_png,
    )

    settings = [parse_setting(s) for s in args.settings] if args.settings else DEFAULT_SETTINGS
    lm = _load(args.model)
    table = next_token_table(lm, args.text, k=args.top_k)
    T = len(table.ids)
    if not -T <= args.step < T:
        raise ValueError(f"--step {args.step} is outside the text's {T} positions (0..{T - 1}).")
    step = args.step % T
    shaped = reshape_all(table.logits[step], settings)
    strings = lm.tokenizer.token_strings
    if args.json:
        data = table.to_dict()
        data["step"] = step
        data["reshaped"] = [reshaped_dict(s, strings, args.top_k) for s in shaped]
        _print_json(data)
    else:
        _print_next(table, step, shaped, strings, args.top_k)
    if args.png:
        title = f"after {table.positions[step].token!r} (position {step})"
        write_reshape_png(shaped, strings, args.png, title=title)
        print(f"reshaped distributions -> {args.png}")


def _print_next(table, step, shaped, strings, k) -> None:
    console = Console(highlight=False)
    t = Table(title="what the model expected after each token")
    for col in ("pos", "token", "top next tokens", "actual next", "rank", "prob", "bits"):
        t.add_column(col, justify="right" if col in ("pos", "rank", "prob", "bits") else "left")
    for p in table.positions:
        top = Text()
        for c in p.top:
            top.append(_visible(c.token), style="bold" if c.id == p.next_id else "")
            top.append(f" {c.prob:.2f}  ", style="dim")
        known = p.next_id is not None
        t.add_row(
            str(p.index),
            _shown(p.token),
            top,
            _shown(p.next_token) if known else Text("-"),
            str(p.rank) if known else "",
            f"{p.prob:.3f}" if known else "",
            f"{p.surprisal_bits:.2f}" if known else "",
        )
    console.print(t)
    bits = table.mean_surprisal_bits
    if not math.isnan(bits):
        console.print(f"mean surprisal {bits:.2f} bits per token (perplexity {2**bits:.1f})")
    r = Table(title=f"one step reshaped: the distribution after position {step}")
    for col in ("settings", "tokens kept", "entropy (bits)", f"top {k}"):
        r.add_column(col)
    for s in shaped:
        top = s.probs.topk(k)
        cell = Text()
        for tok, pr in zip(strings(top.indices.tolist()), top.values.tolist(), strict=True):
            if pr > 0:
                cell.append(_visible(tok)).append(f" {pr:.2f}  ", style="dim")
        r.add_row(s.label, str(s.kept), f"{s.entropy_bits:.2f}", cell)
    console.print(r)


def _lens(args) -> None:
    from giraffe.explain.lens import logit_lens, write_png

    if args.columns < 1:
        raise ValueError(f"--columns must be at least 1, got {args.columns}.")
    lm = _load(args.model)
    lens = logit_lens(lm, args.text)
    if args.json:
        _print_json(lens.to_dict())
    else:
        _print_lens(lens, args.columns)
    if args.png:
        write_png(lens, args.png, title=f"{args.model}: logit lens")
        print(f"heatmap -> {args.png}")


def _print_lens(lens, columns: int) -> None:
    T = len(lens.tokens)
    first = max(0, T - columns)
    title = "logit lens: each layer's top next token (probability)"
    if first:
        title += f"; last {columns} of {T} positions (--columns, --png or --json for all)"
    t = Table(title=title)
    t.add_column("layer")
    for i in range(first, T):
        t.add_column(_shown(lens.tokens[i]), justify="left")
    for r, name in enumerate(lens.layer_names):
        cells = []
        for i in range(first, T):
            p = float(lens.top_probs[r, i])
            style = "bold green" if p > 0.5 else ("green" if p > 0.2 else "dim")
            cells.append(Text(f"{_visible(lens.top_tokens[r][i])} {p:.2f}", style=style))
        t.add_row(name, *cells)
    Console(highlight=False).print(t)


def _embeddings(args) -> None:
    from giraffe.explain.projector import (
        embeddings_report,
        sentence_vectors,
        word_vectors,
        write_png,
    )

    lm = _load(args.model)
    report = embeddings_report(
        lm, args.words, args.neighbours, try_space=not args.exact, sentences=args.sentences
    )
    if args.png:
        if args.sentences:
            vectors = sentence_vectors(lm, args.words)
        else:
            vectors = word_vectors(lm, args.words, try_space=not args.exact)
        what = "sentence" if args.sentences else "token"
        write_png(vectors, args.png, title=f"{args.model}: {what} embeddings, PCA")
    if args.json:
        _print_json({**report, "png": args.png})
        return
    console = Console(highlight=False)
    words = [w["word"] for w in report["words"]]
    for w in report["words"]:
        console.print(Text(f"{w['word']}: {w['note']}"))
    what = "sentence" if args.sentences else "token"
    m = Table(title=f"cosine similarity of the {what} embeddings")
    m.add_column("")
    for word in words:
        m.add_column(Text(word), justify="right")
    for word, row in zip(words, report["cosine"], strict=True):
        m.add_row(Text(word), *(f"{c:.3f}" for c in row))
    console.print(m)
    if report["neighbours"] is None:
        if args.png:
            console.print(f"2-D PCA plot -> {args.png}")
        return
    n = Table(title="nearest tokens in the vocabulary (cosine)")
    n.add_column("word")
    n.add_column("neighbours")
    for word, found in zip(words, report["neighbours"], strict=True):
        cell = Text()
        for f in found:
            cell.append(_visible(f["token"])).append(f" {f['cosine']:.2f}  ", style="dim")
        n.add_row(Text(word), cell)
    console.print(n)
    if args.png:
        console.print(f"2-D PCA plot -> {args.png}")


def _sizes_config(args):
    if args.preset and args.model:
        raise ValueError("give either a model or --preset, not both.")
    name = args.preset or args.model
    if name is None:
        raise ValueError(
            "give a model (alias, .gguf file or folder) or --preset NAME, e.g. --preset llama2-7b."
        )
    if args.preset or name in sizes.SIZE_PRESETS or name in sizes.PRESETS:
        return sizes.preset(name), name
    from giraffe.formats.inspect import describe

    return describe(name)[0], name


def _sizes(args) -> None:
    cfg, name = _sizes_config(args)
    report = sizes.size_report(cfg, args.ram)
    if args.json:
        _print_json(report)
        return
    hb, hc = sizes.human_bytes, sizes.human_count
    console = Console(highlight=False)
    console.print(
        f"[bold]{name}[/bold]: {cfg.arch}, {cfg.n_layers} layers, width {cfg.hidden_size}, "
        f"{cfg.n_heads} query / {cfg.kv_heads} kv heads of {cfg.dim_per_head}, "
        f"MLP {cfg.intermediate_size}, context {cfg.max_position_embeddings}, vocab {cfg.vocab_size}"
    )
    parts = Table(
        title=f"{report['total_parameters']:,} parameters ({hc(report['total_parameters'])})"
    )
    parts.add_column("part")
    parts.add_column("parameters", justify="right")
    parts.add_column("share", justify="right")
    for part, count in report["parameters"].items():
        parts.add_row(part, f"{count:,}", f"{count / report['total_parameters']:.1%}")
    console.print(parts)
    mem = Table(title="weights: parameters x bytes per weight")
    for col in ("format", "bytes/weight", "weights"):
        mem.add_column(col, justify="right")
    for row in report["memory"]:
        mem.add_row(row["format"], f"{row['bytes_per_weight']:.4g}", hb(row["weights_bytes"]))
    console.print(mem)
    kv, fl = report["kv_cache"], report["flops_per_token"]
    if kv is None:
        console.print("no KV cache: an encoder reads the whole text at once and generates nothing")
    else:
        window = kv["cached_tokens_at_full_context"]
        window = "" if window == kv["context"] else f" (sliding window: {window} tokens cached)"
        console.print(
            f"KV cache: {hb(kv['bytes_per_token_fp16'])} per token in fp16 "
            f"({hb(kv['bytes_per_token_fp32'])} in fp32); {hb(kv['bytes_full_context_fp16'])} "
            f"at the full context of {kv['context']} tokens{window}"
        )
    if kv is None:
        flops = (
            f"{hc(fl['first_token'])} for a one-token text, {hc(fl['at_full_context'])} when the "
            f"text fills all {cfg.max_position_embeddings} positions (2 per weight of every "
            "matrix the token meets, plus attention over the text)"
        )
    else:
        flops = (
            f"{hc(fl['first_token'])} for the first token, {hc(fl['at_full_context'])} at the "
            "full context (2 per weight of every matrix the token meets, the output head "
            "included, plus attention over the cached tokens)"
        )
    console.print(f"FLOPs per token: {flops}")
    if "what_fits" in report:
        _print_fits(console, report)


def _print_fits(console, report) -> None:
    hb = sizes.human_bytes
    cache = "" if report["kv_cache"] is None else " + fp16 KV cache"
    fits = Table(title=f"what fits in {report['ram_gib']:g} GiB (weights{cache})")
    for col in ("format", "weights", "left over", "context that fits", "full context?"):
        fits.add_column(col, justify="right")
    for row in report["what_fits"]:
        ok = row["fits_weights"]
        fits.add_row(
            row["format"],
            hb(row["weights_bytes"]),
            hb(row["left_bytes"]) if ok else Text("does not fit", style="red"),
            f"{row['max_context_tokens']:,} tokens" if ok else "-",
            Text("yes", style="green") if row["fits_full_context"] else Text("no", style="red"),
        )
    console.print(fits)
    console.print(
        "[dim]leaves out activations, the runtime and the operating system: keep some headroom[/dim]"
    )


def _decode(args) -> None:
    from giraffe.explain.decoding_lab import DEFAULT_STRATEGIES, parse_strategy, run_lab

    strategies = (
        [parse_strategy(s) for s in args.strategies] if args.strategies else DEFAULT_STRATEGIES
    )
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}.")
    lm = _load(args.model)
    rows = run_lab(lm, args.prompt, strategies, args.max_new_tokens, args.seed, args.ngram)
    if args.json:
        _print_json([r.to_dict() for r in rows])
        return
    t = Table(
        title=f"{args.prompt!r} continued {len(rows)} ways (seed {args.seed})", show_lines=True
    )
    t.add_column("strategy")
    t.add_column("continuation", ratio=1)
    t.add_column("log-prob\n(total / per token)", justify="right")
    t.add_column(f"repeated\n{args.ngram}-grams", justify="right")
    for r in rows:
        t.add_row(
            r.name,
            Text(r.text),
            f"{r.logprob:.1f} / {r.mean_logprob:.2f}",
            f"{r.repetition:.0%}",
        )
    Console(highlight=False).print(t)
