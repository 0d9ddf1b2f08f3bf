"""Watch whether a model's compiled step (`model.runtime.step`) takes each call it is offered."""

from __future__ import annotations


class _Counted:
    """A compiled step whose calls (hidden states, or logits through its head) append
    True/False to `taken` as it took/declined them; anything else goes to the step."""

    def __init__(self, fast, taken: list[bool]) -> None:
        self.fast, self.taken = fast, taken

    def __call__(self, *args):
        return self._count(self.fast(*args))

    def next_logits(self, *args):
        return self._count(self.fast.next_logits(*args))

    def _count(self, out):
        self.taken.append(out is not None)
        return out

    def __getattr__(self, name: str):
        return getattr(self.fast, name)


def counting(fast, taken: list[bool]) -> _Counted:
    """`fast` wrapped to append True/False to `taken` for each call it took/declined."""
    return _Counted(fast, taken)
