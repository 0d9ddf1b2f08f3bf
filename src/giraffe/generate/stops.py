"""Streamed text: emit what is safe, hold back what may start a stop string (`StopText`), and
one sequence's token events turned into text pieces (`TextStream`).

`StopText` is pure string logic; `TextStream` adds a stream decoder (token ids -> whole
characters, given by the tokenizer) and the stop tokens. Both `giraffe.lm` and the
server's scheduler stream text through it. It does not know models. A stop string may arrive split
across several tokens, so the longest tail that is a prefix of some stop string waits
until the next piece decides it.
"""

from __future__ import annotations


class StopText:
    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was hit)."""
        buf = self.pending + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return buf[: min(hits)], True
        hold = self._held_back(buf)
        self.pending = buf[len(buf) - hold :]
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out

    def _held_back(self, buf: str) -> int:
        for k in range(min(len(buf), max((len(s) for s in self.stops), default=1) - 1), 0, -1):
            if any(s.startswith(buf[-k:]) for s in self.stops):
                return k
        return 0


class TextStream:
    """One sequence's token events -> text pieces: whole characters, stop strings cut off.

    decoder: a `giraffe.tokenizer.StreamDecoder` (push(id) -> text, flush() -> text).
    stop_ids: tokens that end the sequence and add no text (`sequence.stop_set`).
    """

    def __init__(self, decoder, stop_strings, stop_ids) -> None:
        self.decoder = decoder
        self.stops = StopText(tuple(stop_strings))
        self.stop_ids = frozenset(stop_ids)

    def push(self, event) -> tuple[str, bool]:
        """(text safe to show, whether a stop string ended it); a hit sets finish_reason."""
        token = event.token_id
        text = "" if token in self.stop_ids else self.decoder.push(token)
        piece, hit = self.stops.push(text)
        if hit:
            event.finish_reason = "stop"
        elif event.finish_reason:
            piece += self.stops.push(self.decoder.flush())[0] + self.stops.flush()
        return piece, hit

    def in_output(self, event) -> bool:
        """False for the stop token that ended the sequence: it ends the text, is not part of it."""
        return not (event.finish_reason == "stop" and event.token_id in self.stop_ids)
