"""Watch whether a model's compiled step (`model.runtime.step`) takes each call it is offered."""

from __future__ import annotations


def counting(fast, taken: list[bool]):
    """`fast` wrapped to append True/False to `taken` for each call it took/declined."""

    def wrapper(*args):
        out = fast(*args)
        taken.append(out is not None)
        return out

    return wrapper
