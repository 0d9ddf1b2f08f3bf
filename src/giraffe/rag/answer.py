"""Retrieved passages + a question -> chat messages for the language model, and its citations.

`build_messages(question, hits, count, budget)` numbers the passages [1], [2], ... in
ranking order, adds as many as fit in `budget` tokens of the language model (a passage
that does not fit is left out, never cut mid-way, and the caller is told which were
used), and asks the model to answer only from them and cite them as [n]. `cited(text)`
reads the numbers back. `NOTHING_FOUND` is what is said instead of guessing when
retrieval found nothing above the similarity floor. Generation itself happens in the
caller (the CLI streams `lm.chat`; the server goes through its scheduler).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from giraffe.rag.retrieve import Hit, QuestionError

SYSTEM = (
    "You answer questions using only the numbered passages given. After each fact, cite "
    "the passage it comes from as [1], [2] and so on. If the passages do not contain the "
    "answer, say that you do not know."
)
NOTHING_FOUND = (
    "Nothing in the knowledge base is close enough to this question to answer it from "
    "your documents, so I will not guess."
)
CITATION = re.compile(r"\[(\d+)\]")
# Small models often answer without citing. Then the answer is continued with this text
# and the model writes the number (a few greedy tokens): its own choice of source, asked
# after the fact. On the shipped eval SmolLM2-135M cites in the text on ~11 % of the
# questions and names the right source when asked on ~89 %, nearly always passage [1],
# the best retrieved one (see README): the number says more about retrieval than reading.
SOURCE_PROBE = "\nSource: ["


def passage_label(hit: Hit) -> str:
    page = f", page {hit.chunk.page}" if hit.chunk.page is not None else ""
    return f"{_name(hit.chunk.path)}{page}"


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def user_message(question: str, hits: Sequence[Hit]) -> str:
    passages = "\n\n".join(
        f"[{n}] ({passage_label(h)})\n{h.chunk.text}" for n, h in enumerate(hits, 1)
    )
    return f"Passages:\n\n{passages}\n\nQuestion: {question}\nAnswer (cite passages as [n]):"


def build_messages(
    question: str, hits: Sequence[Hit], count: Callable[[str], int], budget: int
) -> tuple[list[dict], list[Hit]]:
    """(chat messages, the hits they number); passages added best first while they fit."""
    used: list[Hit] = []
    for hit in hits:
        trial = [*used, hit]
        if count(SYSTEM) + count(user_message(question, trial)) > budget:
            continue  # a later, shorter passage may still fit
        used = trial
    if not used and hits:
        raise QuestionError(
            f"not even one passage fits the model's budget of {budget} tokens; "
            "use smaller chunks (--chunk-tokens) or a model with a longer context"
        )
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": user_message(question, used)},
    ]
    return messages, used


def probed_source(continuation: str, n_passages: int) -> int | None:
    """The passage number the model wrote after SOURCE_PROBE, if valid."""
    found = cited("[" + continuation, n_passages)
    return found[0] if found else None


def cited(answer: str, n_passages: int) -> list[int]:
    """Passage numbers the answer cites (1-based, valid ones only, in first-seen order)."""
    seen = []
    for m in CITATION.finditer(answer):
        n = int(m.group(1))
        if 1 <= n <= n_passages and n not in seen:
            seen.append(n)
    return seen
