"""Stop sequences: where a stream ends early, and what it may not show yet.

The contract, the same for `StreamGenerator.stream` and the serving engine:
generation ends when the text produced so far ends with one of the stop
strings; the stop string is not returned. While a stream runs, no character of
a stop string is ever released: the longest end of the text that could still
grow into a stop string (at most the longest stop's length minus one
characters, or all of it once it is one) is held back, and released as soon as
it cannot. If two stop strings end together, the longer one is cut.

A stop string with a character outside the model's vocabulary can never match;
it is accepted (clients send the same stops to every server) and never fires.
`Stops` works on any string, so the engine matches id sequences written as
`chr(id)` strings with the same code.
"""
from __future__ import annotations

from typing import Iterable, Iterator

MAX_STOPS = 4


def check_stop(stop, max_length: int, error=ValueError) -> tuple[str, ...]:
    """None, a string or a list of at most `MAX_STOPS` non-empty strings of at
    most `max_length` characters each, as a tuple.

    Raises:
        error: naming `stop` (and the index) and quoting the bad value.
    """
    from .._checks import shown

    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOPS:
        raise error(f"stop must be a string or a list of at most {MAX_STOPS} strings, "
                    f"got {shown(stop)}")
    for k, value in enumerate(stops):
        at = "stop" if isinstance(stop, str) else f"stop[{k}]"
        if not isinstance(value, str) or not value:
            raise error(f"{at} must be a non-empty string, got {shown(value)}")
        if len(value) > max_length:
            raise error(f"{at} has {len(value)} characters; at most {max_length}")
    return tuple(stops)


class Stops:
    """Matching and holding back for a set of stop strings (see the module)."""

    def __init__(self, stops: Iterable[str]):
        self.stops = tuple(sorted(set(stops), key=len, reverse=True))   # longest first
        self.longest = max((len(s) for s in self.stops), default=0)
        # Every non-empty prefix, the whole strings included: text ending with
        # one of these may be (or become) a stop.
        self._prefixes = {s[:k] for s in self.stops for k in range(1, len(s) + 1)}

    def __bool__(self) -> bool:
        return bool(self.stops)

    def match(self, text: str) -> str | None:
        """The (longest) stop string `text` ends with, or None."""
        return next((s for s in self.stops if text.endswith(s)), None)

    def hold(self, text: str) -> int:
        """How many characters at the end of `text` must not be released yet."""
        for k in range(min(self.longest, len(text)), 0, -1):
            if text[-k:] in self._prefixes:
                return k
        return 0


def stop_stream(chars: Iterator[str], stops: Stops) -> Iterator[str]:
    """`chars` (one character each, maybe `str` subclasses carrying more) up to
    the first stop string, which is dropped, each released once it cannot be
    part of one."""
    held: list[str] = []
    tail = ""
    for char in chars:
        held.append(char)
        tail = (tail + char)[-stops.longest:]
        found = stops.match(tail)
        if found is not None:
            yield from held[:len(held) - len(found)]
            return
        keep = stops.hold(tail)
        release, held = held[:len(held) - keep], held[len(held) - keep:]
        yield from release
    yield from held
