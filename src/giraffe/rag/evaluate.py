"""The shipped retrieval evaluation: 8 made-up documents, 28 questions, the passage answering each.

`retrieval_eval(embedder)` ingests `eval_data/` into a temporary knowledge base and
reports recall@1 and recall@5: the share of questions whose answering passage (an exact
phrase of the right document) is inside the first / first five chunks retrieved.
Chunks are small here (64 tokens) so each document has several and the score measures
finding the passage, not just the document. `citation_eval(lm, embedder)` asks the
language model every question with the retrieved passages and counts the answers citing
at least one passage from the right document. The documents are original text written
for giraffe (fictional products and places), so no model has seen them.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from giraffe.rag.answer import build_messages, cited, probed_source
from giraffe.rag.chunk import ChunkSpec
from giraffe.rag.ingest import add_paths
from giraffe.rag.retrieve import FLOOR, Hit, retrieve
from giraffe.rag.store import Store

DATA = Path(__file__).parent / "eval_data"
EVAL_SPEC = ChunkSpec(max_tokens=64, overlap=16)


# Questions the documents cannot answer: retrieval should find nothing above the floor.
OFF_TOPIC = (
    "What is the boiling point of tungsten?",
    "Who wrote Hamlet?",
    "How do I bake sourdough bread?",
    "What is the capital of Mongolia?",
    "Explain quantum entanglement.",
    "How many moons does Jupiter have?",
    "What is the best programming language?",
    "How do vaccines work?",
    "Who won the 1998 world cup?",
    "How tall is Mount Everest?",
)


@dataclass(frozen=True)
class Question:
    question: str
    doc: str  # file name under eval_data/
    passage: str  # exact phrase of that document that answers the question


@dataclass(frozen=True)
class RetrievalReport:
    n: int
    recall_at_1: float
    recall_at_5: float
    misses: tuple[str, ...]  # questions whose passage was not in the first five
    answer_cosine: tuple[float, float]  # (min, max) cosine of the answering passage found
    off_topic_refused: float  # share of OFF_TOPIC questions with nothing above the floor
    off_topic_cosine: float  # the highest cosine any off-topic question reached


def questions() -> list[Question]:
    rows = (DATA / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    return [Question(**json.loads(r)) for r in rows if r.strip()]


def answers(hit: Hit, q: Question) -> bool:
    return Path(hit.chunk.path).name == q.doc and q.passage in hit.chunk.text


def build_eval_store(embedder, folder: Path, spec: ChunkSpec = EVAL_SPEC) -> Store:
    store = Store.open(folder / "eval.sqlite", embedder=_name(embedder), dim=embedder.dim)
    outcomes = add_paths(store, embedder, [DATA], spec)
    skipped = [o.reason for o in outcomes if o.status == "skipped"]
    if skipped:
        raise RuntimeError(f"the shipped evaluation data failed to ingest: {skipped}")
    return store


def _name(embedder) -> str:
    return getattr(embedder, "source", "") or type(embedder).__name__


def retrieval_eval(
    embedder, hybrid: bool = False, spec: ChunkSpec = EVAL_SPEC, floor: float = FLOOR
) -> RetrievalReport:
    with tempfile.TemporaryDirectory() as tmp, build_eval_store(embedder, Path(tmp), spec) as store:
        return _score(store, embedder, hybrid, floor)


def _score(store: Store, embedder, hybrid: bool, floor: float) -> RetrievalReport:
    qs = questions()
    top1 = top5 = 0
    misses, cosines = [], []
    for q in qs:
        hits = retrieve(store, embedder, q.question, k=5, hybrid=hybrid, floor=-1.0)
        found = [answers(h, q) for h in hits]
        top1 += bool(found[:1] and found[0])
        top5 += any(found)
        cosines += [h.cosine for h, ok in zip(hits, found, strict=True) if ok][:1]
        if not any(found):
            misses.append(q.question)
    off = [retrieve(store, embedder, q, k=1, floor=-1.0)[0].cosine for q in OFF_TOPIC]
    refused = sum(c < floor for c in off) / len(off)
    span = (min(cosines), max(cosines)) if cosines else (0.0, 0.0)
    return RetrievalReport(
        len(qs), top1 / len(qs), top5 / len(qs), tuple(misses), span, refused, max(off)
    )


@dataclass(frozen=True)
class CitationReport:
    n: int
    cites_in_text: float  # share of answers whose own [n] include the right document
    right_source: float  # the same, asking for the source (SOURCE_PROBE) when none was cited
    examples: tuple[tuple[str, str], ...]  # (question, answer), the first few


def citation_eval(
    complete: Callable[[list[dict]], str],
    ask_source: Callable[[list[dict], str], str],
    count: Callable[[str], int],
    embedder,
    budget: int = 1500,
    k: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> CitationReport:
    """`complete(messages) -> answer`; `ask_source(messages, answer)` -> the model's
    continuation after the answer + SOURCE_PROBE (see command.py)."""
    qs = questions()
    right = in_text = 0
    examples = []
    with tempfile.TemporaryDirectory() as tmp, build_eval_store(embedder, Path(tmp)) as store:
        for i, q in enumerate(qs):
            hits = retrieve(store, embedder, q.question, k=k)
            messages, used = build_messages(q.question, hits, count, budget)
            answer = complete(messages)
            numbers = cited(answer, len(used))
            in_text += q.doc in {Path(used[n - 1].chunk.path).name for n in numbers}
            if not numbers:
                probed = probed_source(ask_source(messages, answer), len(used))
                numbers = [probed] if probed else []
            right += q.doc in {Path(used[n - 1].chunk.path).name for n in numbers}
            if len(examples) < 3:
                examples.append((q.question, answer))
            if progress:
                progress(i + 1, len(qs))
    return CitationReport(len(qs), in_text / len(qs), right / len(qs), tuple(examples))
