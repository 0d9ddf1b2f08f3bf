"""The built-in demo corpus: the English text of Python's own documentation topics.

`pydoc_data.topics` ships with every CPython (it is what `help("if")` prints): about
80 topics, 0.46 MB of plain English prose and code, so a newcomer can prepare data and
train a model in one command, offline. The text is read from the running Python at run
time and never copied into this repository.

It does not know tokenizers or shards: `giraffe.train.data` treats the name `demo` as a
source of documents like a folder of .txt files.
"""

from __future__ import annotations

from collections.abc import Iterator

DEMO_NAME = "demo"


def demo_documents() -> Iterator[tuple[str, str]]:
    """(name, text) per documentation topic, in a fixed (sorted) order."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        text = topics[key].strip()
        if text:
            yield f"pydoc_data.topics[{key!r}]", text
