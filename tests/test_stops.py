"""Stop strings on streamed text: split across pieces, held back, never emitted."""

from __future__ import annotations

from giraffe.generate.stops import StopText


def feed(stops, pieces):
    s = StopText(stops)
    out = []
    for p in pieces:
        text, hit = s.push(p)
        out.append(text)
        if hit:
            return "".join(out), True
    return "".join(out) + s.flush(), False


def test_stop_split_across_pieces_is_caught_and_not_emitted():
    assert feed(("\nUser:",), ["Hello", " there\nUs", "er: hi"]) == ("Hello there", True)


def test_partial_match_that_fails_is_released():
    s = StopText(("END",))
    assert s.push("the EN") == ("the ", False)
    assert s.push("Dless") == ("", True)  # "ENDless" contains END
    s = StopText(("END",))
    assert s.push("the EN") == ("the ", False)
    assert s.push("ough") == ("ENough", False)


def test_earliest_of_several_stops_wins():
    assert feed(("bb", "a"), ["xxbba"]) == ("xx", True)


def test_no_stops_passes_everything():
    assert feed((), ["a", "b"]) == ("ab", False)
