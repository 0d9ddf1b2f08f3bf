"""`giraffe rag {add,list,remove,ask,eval}` and `giraffe summarize`: the command-line doors.

`add_rag_parser(subparsers)` / `run_rag(args)` and `add_summarize_parser(subparsers)` /
`run_summarize(args)`. The work lives in the other rag modules; this file parses, loads
models, prints. Bad input raises ValueError with a full sentence (the CLI prints it as
one line); a file that cannot be ingested is reported on its own line and the batch
goes on (`rag add` then exits with status 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from giraffe.rag.chunk import ChunkSpec
from giraffe.rag.read import MAX_BYTES
from giraffe.rag.retrieve import FLOOR

EMBEDDER = "minilm-l6"
CHAT_MODEL = "smollm2-135m-instruct"


def add_rag_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("rag", help="ask your own documents: add, list, remove, ask, eval")
    sub = p.add_subparsers(dest="rag_command", required=True, metavar="ACTION")
    a = sub.add_parser("add", help="ingest files or folders (.txt .md .html .pdf)")
    a.add_argument("paths", nargs="+", metavar="PATH")
    _kb(a)
    a.add_argument("--chunk-tokens", type=int, default=200, help="embedding tokens per chunk")
    a.add_argument("--overlap", type=int, default=32, help="tokens shared by neighbouring chunks")
    a.add_argument("--max-mb", type=float, default=MAX_BYTES / 2**20, help="skip larger files")
    _kb_list = sub.add_parser("list", help="documents in the knowledge base")
    _kb(_kb_list)
    _kb_list.add_argument("--json", action="store_true")
    r = sub.add_parser("remove", help="remove documents (a folder removes all below it)")
    r.add_argument("paths", nargs="+", metavar="PATH")
    _kb(r)
    q = sub.add_parser("ask", help="answer a question from the documents, citing them")
    q.add_argument("question")
    _kb(q)
    q.add_argument("--k", type=int, default=4, help="passages given to the model")
    q.add_argument("--hybrid", action="store_true", help="add BM25 keyword scores")
    q.add_argument("--floor", type=float, default=FLOOR, help="least cosine that counts")
    q.add_argument("--retrieve-only", action="store_true", help="show passages, no model")
    q.add_argument("--exact", action="store_true", help="exact search even in a large kb")
    _lm_args(q, max_new=256)
    e = sub.add_parser("eval", help="recall@1/@5 on the shipped evaluation set")
    e.add_argument("--hybrid", action="store_true")
    e.add_argument("--embedder", default=EMBEDDER, help="sentence encoder alias or folder")
    e.add_argument("--citations", action="store_true", help="also ask the LM; count right cites")
    _lm_args(e, max_new=96)
    e.add_argument("--json", action="store_true")
    return p


def _kb(p) -> None:
    p.add_argument("--kb", default="default", help="knowledge-base name or .sqlite path")
    p.add_argument("--embedder", default=EMBEDDER, help="sentence encoder alias or folder")


def _lm_args(p, max_new: int) -> None:
    p.add_argument("--model", default=CHAT_MODEL, help="language model alias, .gguf or folder")
    p.add_argument("--max-new-tokens", type=int, default=max_new)
    p.add_argument("--context", type=int, default=2048, help="prompt + answer tokens at most")


def add_summarize_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("summarize", help="summarise a long document within the context")
    p.add_argument("file")
    p.add_argument("--method", choices=["map-reduce", "refine", "stuff"], default="map-reduce")
    p.add_argument("--model", default=CHAT_MODEL)
    p.add_argument("--context", type=int, default=2048, help="tokens per model call")
    p.add_argument("--summary-tokens", type=int, default=200, help="new tokens per call")
    p.add_argument("--plan", action="store_true", help="print the plan and stop")
    return p


# ---- rag ------------------------------------------------------------------------------
def run_rag(args) -> int:
    return {"add": _add, "list": _list, "remove": _remove, "ask": _ask, "eval": _eval}[
        args.rag_command
    ](args)


def _open(args, create: bool, embedder=None):
    from giraffe.rag.store import Store, kb_path

    name = str(args.embedder)
    dim = embedder.dim if embedder is not None else 0
    return Store.open(kb_path(args.kb), embedder=name if embedder else "", dim=dim, create=create)


def _embedder(args):
    from giraffe.embedder import load

    return load(args.embedder)


def _add(args) -> int:
    from giraffe.rag.ingest import add_paths

    embedder = _embedder(args)
    limit = embedder.max_tokens - 2  # [CLS], [SEP]
    if args.chunk_tokens > limit:
        raise ValueError(f"--chunk-tokens {args.chunk_tokens} exceeds {args.embedder}'s {limit}")
    spec = ChunkSpec(args.chunk_tokens, args.overlap)
    counts: dict[str, int] = {}

    def show(o) -> None:
        counts[o.status] = counts.get(o.status, 0) + 1
        detail = o.reason if o.status == "skipped" else f"{o.chunks} chunks"
        print(
            f"{o.status:9} {o.path if o.status != 'skipped' else ''}{detail if o.status == 'skipped' else '  (' + detail + ')'}"
        )

    start = time.perf_counter()
    with _open(args, True, embedder) as store:
        add_paths(store, embedder, args.paths, spec, int(args.max_mb * 2**20), show)
        total = store.count_chunks()
        print(
            f"{store.path}: {len(store.documents())} documents, {total} chunks "
            f"({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}; "
            f"{time.perf_counter() - start:.1f} s)"
        )
    return 1 if counts.get("skipped") else 0


def _list(args) -> int:
    with _open(args, False) as store:
        docs = store.documents()
        if args.json:
            print(json.dumps([d.__dict__ for d in docs], indent=1))
            return 0
        for d in docs:
            pages = f"{d.n_pages} pages, " if d.n_pages else ""
            print(f"{d.path}  ({pages}{d.n_chunks} chunks, sha256 {d.sha256[:12]})")
        print(f"{store.path}: {len(docs)} documents, {store.count_chunks()} chunks")
    return 0


def _remove(args) -> int:
    from giraffe.rag.ingest import document_key

    missing = 0
    with _open(args, False) as store:
        known = [d.path for d in store.documents()]
        for raw in args.paths:
            key = document_key(Path(raw).expanduser())
            targets = [p for p in known if p == key or p.startswith(key.rstrip("/") + "/")]
            for path in targets:
                store.remove_document(path)
                print(f"removed   {path}")
            if not targets:
                print(f"not found {key}", file=sys.stderr)
                missing += 1
    return 1 if missing else 0


def _ask(args) -> int:
    from giraffe.rag.answer import (
        NOTHING_FOUND,
        build_messages,
        cited,
        passage_label,
        probed_source,
    )
    from giraffe.rag.retrieve import retrieve

    embedder = _embedder(args)
    with _open(args, False, embedder) as store:
        if args.exact:
            store.ann_threshold = None  # never the approximate index (Store.search)
        hits = retrieve(store, embedder, args.question, args.k, args.hybrid, args.floor)
    if not hits:
        print(NOTHING_FOUND)
        return 0
    if args.retrieve_only:
        for n, h in enumerate(hits, 1):
            print(f"[{n}] {passage_label(h)}  cosine {h.cosine:.3f}\n{h.chunk.text}\n")
        return 0
    from giraffe.lm import load

    lm = load(args.model)
    count = _lm_counter(lm)
    messages, used = build_messages(args.question, hits, count, _budget(lm, args))
    answer = ""
    for piece in lm.chat(
        messages, stream=True, max_new_tokens=args.max_new_tokens, temperature=0.0
    ):
        answer += piece
        print(piece, end="", flush=True)
    print("\n\nSources:")
    numbers = cited(answer, len(used))
    if not numbers:  # ask the model which passage it used, and say that it was asked
        probed = probed_source(_ask_source(lm, messages, answer), len(used))
        numbers = [probed] if probed else []
        if probed:
            print(f"(no [n] in the answer; asked for its source, the model names [{probed}])")
    for n, h in enumerate(used, 1):
        mark = "*" if n in numbers else " "
        print(
            f"{mark}[{n}] {h.chunk.path}{_page(h)} chars {h.chunk.start}-{h.chunk.end}  (cosine {h.cosine:.2f})"
        )
    if not numbers:
        print("(the answer cites none of these passages: check it against them)")
    return 0


def _ask_source(lm, messages, answer: str) -> str:
    """Greedy continuation of the answer + SOURCE_PROBE: the model names its passage."""
    from giraffe.rag.answer import SOURCE_PROBE

    ids = lm.chat_ids(messages)
    ids += lm.tokenizer.encode(answer.strip() + SOURCE_PROBE, add_special_tokens=False)
    return lm.complete(ids, max_new_tokens=3, temperature=0.0).text


def _page(hit) -> str:
    return f" page {hit.chunk.page}" if hit.chunk.page is not None else ""


def _lm_counter(lm):
    return lambda text: len(lm.tokenizer.encode(text, add_special_tokens=False))


def _budget(lm, args) -> int:
    context = min(args.context, lm.config.max_position_embeddings)
    wrapping = 16  # the chat template's role markers around the two messages
    budget = context - args.max_new_tokens - wrapping
    if budget < 64:
        raise ValueError(
            f"--context {args.context} leaves no room after {args.max_new_tokens} new tokens"
        )
    return budget


def _eval(args) -> int:
    from giraffe.rag.evaluate import citation_eval, retrieval_eval

    embedder = _embedder(args)
    report = retrieval_eval(embedder, hybrid=args.hybrid)
    out = {
        "questions": report.n,
        "recall@1": report.recall_at_1,
        "recall@5": report.recall_at_5,
        "answer cosine min": report.answer_cosine[0],
        "off-topic refused": report.off_topic_refused,
        "off-topic max cos": report.off_topic_cosine,
    }
    if args.citations:
        from giraffe.lm import load

        lm = load(args.model)

        def complete(messages) -> str:
            return lm.chat(messages, max_new_tokens=args.max_new_tokens, temperature=0.0)

        def progress(i, n) -> None:
            print(f"\r{i}/{n} questions asked", end="", file=sys.stderr, flush=True)

        cites = citation_eval(
            complete,
            lambda messages, answer: _ask_source(lm, messages, answer),
            _lm_counter(lm),
            embedder,
            _budget(lm, args),
            progress=progress,
        )
        print(file=sys.stderr)
        out["cites right in text"] = cites.cites_in_text
        out["right source, asked"] = cites.right_source
        out["example"] = list(cites.examples[0])
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for key, value in out.items():
            print(f"{key:20} {value:.3f}" if isinstance(value, float) else f"{key:20} {value}")
    return 0


# ---- summarize ------------------------------------------------------------------------
def run_summarize(args) -> int:
    from giraffe.rag.chains import ChatCompleter, Trace, make_plan, summarize
    from giraffe.rag.read import SkipFile, read_pages

    try:
        pages = read_pages(Path(args.file))
    except SkipFile as e:
        raise ValueError(str(e)) from None
    text = "\n\n".join(t for _, t in pages)
    from giraffe.lm import load

    lm = load(args.model)
    completer = ChatCompleter(lm, args.summary_tokens)
    budget = completer.budget(min(args.context, lm.config.max_position_embeddings))
    plan = make_plan(text, args.method, completer.count, budget, args.summary_tokens)
    print(plan.describe(), file=sys.stderr)
    if args.plan:
        return 0
    trace = Trace()
    summary = summarize(text, plan, completer, completer.count, trace)
    print(summary)
    for notice in trace.notices:
        print(f"note: {notice}", file=sys.stderr)
    print(f"({trace.calls} model calls, {trace.rounds} collapse rounds)", file=sys.stderr)
    return 0
