"""A completion request: checked once, then a place in the engine.

`check_request` is the one check of what a request asks the engine for; the
engine calls it in `submit`, the HTTP layer only gathers the fields and maps a
`RequestError` (which names its field) to a 4xx answer. Values are checked for
their JSON type too (`true` is not an integer), since they come from clients.
"""
from __future__ import annotations

import dataclasses
import asyncio
import functools
import json
import time

import numpy as np

from .. import _checks
from ..data.text import Vocabulary, reduce_text
from ..streaming.sampling import MAX_LOGPROBS, Uniforms, check_min_p, check_top_k, check_top_p
from ..streaming.stops import check_stop


class RequestError(ValueError):
    """A request field with a bad value; `field` names it (None for the whole body)."""

    def __init__(self, field: str | None, message: str, status: int = 400,
                 code: str | None = None):
        super().__init__(message)
        self.field, self.status, self.code = field, status, code


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the server allows a request."""

    max_tokens: int = 100_000
    max_prime: int = 4096


@dataclasses.dataclass(frozen=True)
class Checked:
    """A request as the engine runs it."""

    ids: np.ndarray             # the prime's ids (reduced and encoded), maybe empty
    max_tokens: int             # 0 only with echo: score the prompt, generate nothing
    temperature: float
    top_k: int | None           # capped at the vocabulary's size
    seed: int | None
    top_p: float = 1.0
    min_p: float = 0.0
    stop: tuple = ()            # the stop strings as given
    stop_ids: tuple = ()        # those the vocabulary can spell, as chr(id) strings
    logprobs: int | None = None
    echo: bool = False


def shown(value) -> str:
    """A bad value as a message quotes it: JSON, at most 80 characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _typed(value, name: str, kind) -> None:
    """A JSON value of the right type: `true` is not an integer, `"2"` not a number."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
        what = "a number" if kind is not int else "an integer"
        raise RequestError(name, f"{name} must be {what}, got {shown(value)}")


def check_request(limits: Limits, vocab: Vocabulary, reduce: bool, prime="",
                  max_tokens=256, temperature=1.0, top_k=None, seed=None, top_p=1.0,
                  min_p=0.0, stop=None, logprobs=None, echo=False) -> Checked:
    """Check every field; the prime reduced (as the run's text was) and encoded.

    Raises:
        RequestError: naming the first bad field and quoting its value.
    """
    def error(name):
        return functools.partial(RequestError, name)

    if not isinstance(prime, str):
        raise RequestError("prompt", f"prompt must be a string, got {shown(prime)}")
    if len(prime) > limits.max_prime:
        raise RequestError("prompt", f"prompt has {len(prime)} characters; at most "
                           f"{limits.max_prime}")
    for name, value, kind in (("max_tokens", max_tokens, int), ("temperature", temperature,
                              (int, float)), ("top_k", top_k, int), ("seed", seed, int),
                              ("top_p", top_p, (int, float)), ("min_p", min_p, (int, float)),
                              ("logprobs", logprobs, int)):
        _typed(value, name, kind)
    if not isinstance(echo, bool):
        raise RequestError("echo", f"echo must be true or false, got {shown(echo)}")
    if max_tokens != 0 or not echo:   # 0 scores the prompt: echo only
        _checks.positive_int(max_tokens, "max_tokens", error("max_tokens"))
    if max_tokens > limits.max_tokens:
        raise RequestError("max_tokens", f"max_tokens must be at most {limits.max_tokens}, "
                           f"got {max_tokens}")
    _checks.non_negative_number(temperature, "temperature", error("temperature"))
    _checks.optional_positive_int(top_k, "top_k", error=error("top_k"))
    top_p, min_p = check_top_p(top_p, error("top_p")), check_min_p(min_p, error("min_p"))
    if seed is not None:
        _checks.non_negative_int(seed, "seed", error("seed"))
    if logprobs is not None and not 0 <= logprobs <= min(MAX_LOGPROBS, vocab.size):
        raise RequestError("logprobs", f"logprobs must be an integer in [0, "
                           f"{min(MAX_LOGPROBS, vocab.size)}], got {shown(logprobs)}")
    stops = check_stop(stop, limits.max_prime, error("stop"))
    try:
        ids = vocab.encode(reduce_text(prime) if reduce else prime)
    except ValueError as err:
        raise RequestError("prompt", str(err)) from None
    if len(ids) > limits.max_prime:  # reduction may lengthen (U+0130 lowercases to two)
        raise RequestError("prompt", f"prompt has {len(ids)} characters once reduced; at "
                           f"most {limits.max_prime}")
    return Checked(ids, max_tokens, float(temperature), check_top_k(top_k, vocab.size), seed,
                   top_p, min_p, stops, _spelled(stops, vocab), logprobs, echo)


def _spelled(stops: tuple, vocab: Vocabulary) -> tuple:
    """The stops the model can produce, as `chr(id)` strings (the engine matches
    ids); one with a character outside the vocabulary never matches."""
    spelled = []
    for stop in stops:
        try:
            spelled.append("".join(map(chr, vocab.encode(stop))))
        except ValueError:
            pass
    return tuple(spelled)


class Request:
    """One stream's place in the engine. Read it with `chunks()` or the engine's
    `stream()`; `cancel()` frees its row at the next tick.

    It talks to its engine through the engine's readers' handle only: `wake()`,
    `wait(request)`, `read(request)` and `produced(request)`.
    """

    def __init__(self, handle, checked: Checked, ids: np.ndarray, draws: Uniforms,
                 start_state=None):
        self._handle = handle
        self.checked, self.ids, self.draws = checked, ids, draws
        self.start_state = start_state       # a `State` it continues, or None
        self.end_row = None                  # (row state, pending id) once it ends whole
        self.prime_chars = len(ids)
        self.slot = -1                       # set when placed
        # "length", "stop", "cancelled", "stalled", "shutdown", or "error" (the engine failed)
        self.finish_reason: str | None = None
        self.finished_at: float | None = None
        self.cancelled = False
        self.parked_since: float | None = None
        self.saved_state: list | None = None
        self.produced_at_end = 0
        self.wakeup = asyncio.Event()        # wakes its reader (`chunks`)
        self.submitted_at = time.monotonic()
        self.placed_at: float | None = None  # when it got a row
        self.stop_read = 0                   # set by the slots: the stop string it ended at
        self.echoed = not checked.echo       # the prompt was returned (or is not to be)

    @property
    def max_tokens(self) -> int:
        return self.checked.max_tokens

    @property
    def hit_stop(self) -> bool:
        """It ended at a stop string (its characters produced, not returned)."""
        return self.stop_read > 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def produced(self) -> int:
        """Characters generated so far (read or not)."""
        return self._handle.produced(self)

    def cancel(self) -> None:
        """Stop producing; the row and the buffer are freed at the next tick."""
        self.cancelled = True
        self._handle.wake()

    @property
    def state(self):
        """The `State` after this request (`charstream.streaming.state`): what a
        session keeps. None unless it ended whole ("length" or "stop")."""
        return self._handle.state_of(self)

    @property
    def usage(self) -> dict:
        """OpenAI's usage: characters are the tokens."""
        prompt, completion = len(self.checked.ids), self.produced
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    def read(self) -> str:
        """The characters produced since the last read (possibly none): a `Piece`
        with their log-probabilities when the request asked for them, the prompt
        first when it asked for `echo`."""
        return self._handle.read(self)

    async def chunks(self):
        """Text as it is produced, a pulse's worth at a time, until the request ends."""
        try:
            while True:
                text = self.read()
                if text:
                    yield text
                elif self.done:
                    return
                else:
                    # Its own event: the pulse wakes every waiting reader; the
                    # tick that makes a request's first text, and its end, wake
                    # its reader alone, at once (`_TickLoop.wait`).
                    self.wakeup.clear()
                    self._handle.wait(self)
                    await self.wakeup.wait()
        finally:  # a reader that leaves early lets go of everything
            self.cancel()
