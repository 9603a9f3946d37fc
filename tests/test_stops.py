"""The stop-sequence contract (`charstream.streaming.stops`): the text up to the
first stop, never a character of a stop released, for any split of the text."""
import pytest
from hypothesis import given, settings, strategies as st

from charstream.streaming.stops import Stops, check_stop, stop_stream


def _cut(text: str, stops) -> str:
    """The definition: the shortest prefix that ends with a stop, minus that stop
    (the longer one when two end together); the whole text if none does."""
    for end in range(1, len(text) + 1):
        found = sorted((s for s in stops if text[:end].endswith(s)), key=len)
        if found:
            return text[:end - len(found[-1])]
    return text


@settings(max_examples=400, deadline=None)
@given(st.text("ab\n", max_size=40), st.lists(st.text("ab\n", min_size=1, max_size=4),
                                             min_size=1, max_size=4))
def test_stop_stream_is_the_text_cut_before_the_first_stop(text, stops):
    released = []
    for char in stop_stream(iter(text), Stops(stops)):
        released.append(char)
        # Nothing released so far ever contains a stop: what is out is out.
        assert all(s not in "".join(released) for s in stops) or \
            "".join(released) == _cut(text, stops)
    assert "".join(released) == _cut(text, stops)


def test_what_may_become_a_stop_is_held_and_then_released():
    out = stop_stream(iter("ab\nac\n\nx"), Stops(["\n\n"]))
    assert [next(out) for _ in range(3)] == ["a", "b", "\n"]    # "\n" released at "a"
    assert list(out) == ["a", "c"]
    stops = Stops(["end", "nd!"])
    assert stops.hold("the en") == 2 and stops.hold("the e") == 1 and stops.hold("x") == 0
    assert stops.match("the end") == "end" and stops.match("en") is None


@pytest.mark.parametrize("stop, words", [
    (5, "stop must be a string or a list of at most 4 strings, got 5"),
    (["a", "b", "c", "d", "e"], "at most 4 strings"),
    ([""], "stop[0] must be a non-empty string"),
    ("", "stop must be a non-empty string"),
    (["ok", 3], "stop[1] must be a non-empty string, got 3"),
    ("x" * 11, "stop has 11 characters; at most 10"),
])
def test_bad_stops(stop, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        check_stop(stop, 10)
    assert check_stop(None, 10) == () and check_stop("ab", 10) == ("ab",)
