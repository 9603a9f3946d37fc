"""Continuous batching: many independent streams on one native step. No TensorFlow.

The engine is three parts, split by role as serving engines split them:

- `Scheduler` (`charstream.serving.scheduler`) decides: who waits, who runs,
  who is parked, who finished; it returns a `Decision` and touches nothing.
- `Slots` (`charstream.serving.slots`) executes: the batch's memory and the
  tick, one C step (`NativeBackend.step_rows`) over the active rows, in a worker
  thread without the GIL; it knows no queues.
- The tick loop (here, `_TickLoop`) is the thin asyncio loop around them: it
  asks the scheduler, has the slots apply the decision, runs the tick in a
  worker thread, and wakes the readers; it is also the readers' handle.
- `Engine` (here) is the front door: loading, starting and stopping, checking
  and submitting requests, and the numbers `/metrics` shows.

**Same seed, same text, whatever else runs**: a request's row computes exactly
what `StreamGenerator.load(run, backend="native").stream(prime, temperature,
seed, top_k)` computes alone (rows of the C step are independent and bit for bit
the single stream's), and it draws its own uniforms
(`charstream.streaming.sampling`).

Output: each request owns a ring of `buffer` ids that the tick writes and its
reader drains. Readers wake on a shared pulse, every `flush` seconds while
anything runs, so a tick's characters for one client travel together. The pulse
adapts to load: beyond `PULSE_READERS` active streams it grows in proportion
(each event carries more characters, and the events a second stay about
`PULSE_READERS / flush`), never above `MAX_PULSE` (100 ms). A new request's
first characters are not held for the pulse: the tick that produces them wakes
their readers alone, at once; so does a request's end (the others' pulse is not
due: waking every reader at each end made bursts of tiny events). A reader
that falls `buffer` characters behind (a client that stopped reading) is parked:
its state is saved and its row freed, so it costs the others nothing; it
resumes when it reads again, and is cancelled ("stalled") after `stall_timeout`
seconds parked; a finished stream whose reader reads nothing for as long gives
its slot back too.

**Supervised**: an exception in the tick loop ends every queued, running and
parked request with `finish_reason` "error" (`Engine.failure` names the error),
is logged once with its traceback, and the engine takes no more requests; it
calls back (`when_failed`), which `python -m charstream.serve` uses to exit with status
1, so that a process manager starts it again (the loop is not restarted in
place: the batch's state after an unknown failure cannot be trusted).

    engine = Engine.load(run_dir, max_streams=256)
    async with engine:                       # starts the tick loop
        async for chunk in engine.stream("ROMEO:", max_tokens=200, seed=1):
            print(chunk, end="")
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import threading
import time

import numpy as np

from .. import _checks
from ..data.text import Vocabulary
from ..streaming.native import NativeBackend
from ..streaming.sampling import Piece, Uniforms, start_ids
from ..streaming.state import State, StateError
from .request import Checked, Limits, Request, check_request
from .scheduler import Decision, QueueFull, Scheduler
from .slots import Slots, carry_out

__all__ = ["Engine", "QueueFull", "Request", "ShuttingDown"]

log = logging.getLogger("charstream.serve")

# The pulse: `flush` seconds up to this many active streams, then longer in
# proportion, up to MAX_PULSE seconds (see `_TickLoop.pulse_interval`).
PULSE_READERS = 64
MAX_PULSE = 0.1


class ShuttingDown(RuntimeError):
    """The engine takes no new requests."""


class Engine:
    """Continuous batching over the native step (see the module docstring).

    Args:
        weights: as `charstream.weights.load_stream_weights` returns.
        vocab: the run's vocabulary.
        reduce: reduce prompts as the run's training text was.
        max_streams: rows of the batch: requests served at once.
        max_queue: requests that may wait for a row; more get `QueueFull`.
        max_tokens: the largest `max_tokens` a request may ask for.
        max_prime: the longest prime, in characters.
        buffer: characters a reader may fall behind before its request parks.
        flush: seconds between the pulses that wake readers.
        stall_timeout: seconds a parked request waits for its reader (and a
            finished one for its reader to read the rest).
        source: where the weights came from, for error messages.
    """

    def __init__(self, weights: dict, vocab: Vocabulary, reduce: bool = True, *,
                 max_streams: int = 256, max_queue: int = 1024, max_tokens: int = 100_000,
                 max_prime: int = 4096, buffer: int = 65_536, flush: float = 0.02,
                 stall_timeout: float = 60.0, source: str = "weights"):
        for name, value in (("max_streams", max_streams), ("max_tokens", max_tokens),
                            ("max_prime", max_prime), ("buffer", buffer)):
            _checks.positive_int(value, name)
        _checks.non_negative_int(max_queue, "max_queue")
        _checks.positive_number(flush, "flush")
        _checks.positive_number(stall_timeout, "stall_timeout")
        self.vocab, self.reduce = vocab, reduce
        self.limits = Limits(max_tokens, max_prime)
        self.max_streams, self.buffer, self.flush = max_streams, buffer, flush
        self.scheduler = Scheduler(max_streams, max_queue, buffer, stall_timeout)
        net = NativeBackend(weights, max_streams, source)
        self.fingerprint = net.fingerprint     # of the weights: what sessions are held to
        slots = Slots(net, max_prime, buffer)
        self._ticker = _TickLoop(self.scheduler, slots, vocab, flush, self.fingerprint)
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.requests = 0

    @classmethod
    def load(cls, run_dir: str | os.PathLike, **options) -> "Engine":
        """An engine over a run directory's `stream.npz`, checked as every reader
        of a run checks it (`charstream.run.RunDir.load_weights`)."""
        from ..run import RunDir

        run_dir = RunDir(run_dir)
        record = run_dir.read()
        return cls(run_dir.load_weights(record), record.vocab, record.settings.reduce,
                   source=str(run_dir.stream_file), **options)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> "Engine":
        self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def closing(self) -> bool:
        """Whether `shutdown()` was called (or the loop failed): no new requests."""
        return self._ticker.closing

    @property
    def failure(self) -> str | None:
        """`"ErrorClass: message"` once the tick loop failed, else None."""
        return self._ticker.failure

    def when_failed(self, callback) -> None:
        """Call `callback(failure: str)` once if the tick loop fails."""
        self._ticker.on_failure = callback

    def start(self) -> None:
        """Start the tick loop on the running event loop."""
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._ticker.run())

    def shutdown_soon(self) -> None:
        """`shutdown()` from anywhere (a signal handler, another thread)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.shutdown)
        else:
            self.shutdown()

    def shutdown(self) -> None:
        """Take no new requests; the loop ends every waiting and running one
        ("shutdown") before its next tick. Safe from a signal handler: it only sets
        a flag (rows are never touched while a step runs)."""
        self._ticker.closing = True
        self._ticker.wake()

    async def close(self) -> None:
        self.shutdown()
        self._ticker.apply(self.scheduler.shutdown())
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._ticker.executor.shutdown(wait=True)

    # ------------------------------------------------------------------ requests

    def check(self, prime: str = "", max_tokens=256, temperature=1.0, top_k=None,
              seed=None, **options) -> Checked:
        """The request checked (`charstream.serving.request.check_request`;
        `options`: `top_p`, `min_p`, `stop`, `logprobs`, `echo`)."""
        return check_request(self.limits, self.vocab, self.reduce, prime, max_tokens,
                             temperature, top_k, seed, **options)

    def submit(self, prime: str = "", max_tokens: int = 256, temperature: float = 1.0,
               top_k: int | None = None, seed: int | None = None, *, top_p: float = 1.0,
               min_p: float = 0.0, stop=None, logprobs: int | None = None,
               echo: bool = False, state: State | None = None) -> Request:
        """Check and queue a request; it takes a row at the next tick with one free.

        Sampling is `StreamGenerator.stream`'s (`temperature`, `top_k`, `top_p`,
        `min_p`, `seed`, and `stop`, `charstream.streaming.stops`'s contract: the
        row is freed as soon as a stop string is produced). `logprobs` (0 to 5)
        makes the reads `Piece`s with log-probabilities from the same C step;
        `echo` returns the prompt (as the model read it, reduced) before the
        completion, with its characters' log-probabilities under the model
        when `logprobs` is given; `max_tokens=0` with `echo` scores the prompt
        and generates nothing. `state` continues a `State` (a session's) as
        `StreamGenerator.stream(state=...)` does, bit for bit; the request's
        `state` is the one after it.

        Raises:
            RequestError (a ValueError): naming a bad field (a prime character the
                vocabulary cannot represent included).
            QueueFull: every row busy and `max_queue` requests already waiting.
            ShuttingDown: after `shutdown()`.
            StateError (a ValueError): a state of another model or shape.
        """
        if self.failure:
            raise ShuttingDown(f"the engine failed ({self.failure}); the server is restarting")
        if self.closing:
            raise ShuttingDown("the server is shutting down")
        checked = self.check(prime, max_tokens, temperature, top_k, seed, top_p=top_p,
                             min_p=min_p, stop=stop, logprobs=logprobs, echo=echo)
        draws = Uniforms(checked.seed)
        if state is not None and state.pending >= 0:   # its last character is read first
            ids = np.concatenate([[self._checked_state(state).pending], checked.ids])
        else:
            if state is not None:
                self._checked_state(state)
            ids = start_ids(checked.ids, self.vocab.size, self.vocab.chars.find("\n"), draws)
        req = Request(self._ticker, checked, ids.astype(np.uint8), draws, state)
        self.scheduler.submit(req)
        self.requests += 1
        self._ticker.wake()
        return req

    def _checked_state(self, state: State) -> State:
        if not isinstance(state, State):
            raise StateError(f"expected a State, got {type(state).__name__}")
        state.check(self.fingerprint, "the served model")
        units = list(self._ticker.slots.net.units)
        if state.units != units:
            raise StateError(f"the state has units {state.units}; this model has {units}")
        return state

    async def stream(self, prime: str = "", max_tokens: int = 256, temperature: float = 1.0,
                     top_k: int | None = None, seed: int | None = None, **options):
        """`submit`, then yield the text as it comes (cancelled if abandoned)."""
        req = self.submit(prime, max_tokens, temperature, top_k, seed, **options)
        async for chunk in req.chunks():
            yield chunk

    # ------------------------------------------------------------------ numbers

    @property
    def ticks(self) -> int:
        """Batched native steps run so far."""
        return self._ticker.ticks

    @property
    def characters(self) -> int:
        """Characters produced so far, all requests together."""
        return self._ticker.slots.produced

    def stats(self) -> dict:
        sched, slots = self.scheduler, self._ticker.slots
        return {"active": slots.active, "queued": len(sched.queue),
                "parked": len(sched.parked), "free": len(slots.free),
                "max_streams": self.max_streams, "ticks": self.ticks,
                "characters": self.characters, "requests": self.requests,
                "characters_per_second": self._ticker.rate.value(self.characters)}


class _TickLoop:
    """The loop between the scheduler and the slots, and the readers' handle
    (`wake`, `wait`, `read`, `produced`): what a `Request` talks to."""

    def __init__(self, scheduler: Scheduler, slots: Slots, vocab: Vocabulary, flush: float,
                 fingerprint: str):
        self.scheduler, self.slots, self.flush = scheduler, slots, flush
        self.fingerprint = fingerprint
        self.codes = np.array([ord(c) for c in vocab.chars], dtype="<u4")
        self.chars = vocab.chars
        self._ascii = (bytes(ord(c) for c in vocab.chars).ljust(256, b"?")
                       if all(ord(c) < 128 for c in vocab.chars) else None)
        self._wake = asyncio.Event()
        self.closing = False
        self.failure: str | None = None
        self.on_failure = None
        self.ticks = 0
        self.rate = _Rate()
        self.executor = concurrent.futures.ThreadPoolExecutor(
            1, "charstream-engine", initializer=_lower_priority)
        self._last_pulse = 0.0
        self._fresh: list[Request] = []      # placed, nothing sent yet
        self._waiting: dict[int, Request] = {}    # readers waiting, by id

    # ------------------------------------------------------------------ the readers' handle

    def wake(self) -> None:
        """Something changed that the loop must look at (a request, a cancel, a read)."""
        self._wake.set()

    def wait(self, req: Request) -> None:
        """`req`'s reader waits on `req.wakeup`: set by the next pulse, or at
        once by the tick that makes its first text or by its end."""
        self._waiting[id(req)] = req

    def _wake_reader(self, req: Request) -> None:
        req.wakeup.set()
        self._waiting.pop(id(req), None)

    def produced(self, req: Request) -> int:
        if req.slot >= 0 and self.slots.owner[req.slot] is req:
            return int(self.slots.written[req.slot])
        return req.produced_at_end     # its slot went back (or it never had one)

    def state_of(self, req: Request) -> State | None:
        """The state after a request that ended whole: its row as it was released,
        the last character sampled still to be read."""
        if req.end_row is None:
            return None
        row, pending = req.end_row
        start = req.start_state
        before = 0 if start is None else start.chars - (start.pending >= 0)
        return State.of(row, pending, before + len(req.ids) + req.produced + req.stop_read,
                        self.fingerprint)

    def read(self, req: Request) -> str:
        """What `req` produced since its last read (a `Piece` when it asked for
        logprobs; the prompt first when it asked for echo); a finished request's
        slot comes back once everything is read."""
        slots = self.slots
        if req.slot < 0 or slots.owner[req.slot] is not req:
            return ""
        head = None
        if not req.echoed and (slots.feed_left[req.slot] == 0 or req.done):
            req.echoed, head = True, self._prompt(req)
        text = ""
        if slots.unread(req.slot):
            start, end = slots.drain(req.slot, final=req.done)
            text = self._text(req, start, end)
            if req.parked_since is not None:
                self._wake.set()  # it may resume
        if req.done and not slots.unread(req.slot):
            self.apply(self.scheduler.read_all(req))
        return text if head is None else _joined(head, text)

    def _decode(self, ids: np.ndarray) -> str:
        if self._ascii is not None:      # one byte per id: a translate, no index array
            return ids.astype(np.uint8).tobytes().translate(self._ascii).decode("ascii")
        return self.codes[ids].tobytes().decode("utf-32-le")

    def _text(self, req: Request, start: int, end: int) -> str:
        text = self._decode(self.slots.ids(req.slot, start, end))
        found = self.slots.logprobs(req.slot, start, end)
        return text if found is None else self._piece(text, [float(v) for v in found[0]],
                                                      found[1], found[2])

    def _piece(self, text: str, lps: list, top_ids, top_lp) -> Piece:
        chars = self.chars
        tops = []
        for char, lp, ids, values in zip(text, lps, top_ids.tolist(), top_lp.tolist()):
            top = {chars[k]: v for k, v in zip(ids, values) if k >= 0}
            if lp is not None:
                top.setdefault(char, lp)
            tops.append(top)
        return Piece(text, lps, tops)

    def _prompt(self, req: Request) -> str:
        """The prompt as the model read it, with its log-probabilities if asked."""
        text = self._decode(req.checked.ids)
        scored = self.slots.prompt_lp[req.slot]
        if scored is None:
            return text
        lps = [None] + [float(v) for v in scored[0][1:]]
        piece = self._piece(text, lps, scored[1], scored[2])
        piece.top_logprobs[:1] = [None] * len(piece.top_logprobs[:1])   # nothing predicts it
        return piece

    # ------------------------------------------------------------------ the loop

    def _unread(self, req: Request) -> int:
        return self.slots.unread(req.slot)

    async def run(self) -> None:
        """The loop, supervised (see the module docstring)."""
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self.failure = f"{type(err).__name__}: {str(err)[:200]}"
            self.closing = True
            log.exception("the engine's tick loop failed; every request ends with an error")
            self.apply(self.scheduler.shutdown("error"))
            if self.on_failure is not None:
                self.on_failure(self.failure)

    async def _run(self) -> None:
        loop, slots, sched = asyncio.get_running_loop(), self.slots, self.scheduler
        while True:
            self._wake.clear()  # what happens from here on wakes the loop (or ends a batch)
            if self.closing:
                self.apply(sched.shutdown())
            self.apply(sched.schedule(time.monotonic(), self._unread))
            if not slots.active:
                # Nothing to step: readers take what is left, and the loop sleeps
                # until a request, a cancel, a read or a freed slot wakes it.
                self.broadcast()
                if sched.idle(self._unread):
                    # Parked and finished requests are checked for their readers'
                    # deadlines even when all is quiet.
                    timeout = sched.stall_timeout / 4 if sched.waiting_for_readers else None
                    await self._sleep(timeout)
                continue
            running = slots.running()
            deadline = time.monotonic() + self.flush
            watch = np.array([r.slot for r in self._fresh if r.slot >= 0], np.int64)
            self.ticks += await loop.run_in_executor(
                self.executor, slots.work, running, deadline, self._wake.is_set, watch)
            self.rate.add(slots.produced)
            done, behind = slots.ended(running)
            self.apply(sched.after_tick([slots.owner[s] for s in done],
                                        [slots.owner[s] for s in behind], time.monotonic()))
            self._wake_first()
            if time.monotonic() - self._last_pulse >= self.pulse_interval():
                self.broadcast()

    def pulse_interval(self) -> float:
        """Seconds between pulses: `flush` up to `PULSE_READERS` active streams,
        then longer in proportion (each pulse carries more), so the events a
        second stop growing with the clients; never above `MAX_PULSE`."""
        readers = self.slots.active
        return min(MAX_PULSE, self.flush * max(1.0, readers / PULSE_READERS))

    def _wake_first(self) -> None:
        """Wake the readers of requests whose first characters now exist: they
        go at once, not at the next pulse (that decides the first-character
        latency), and only those readers wake."""
        fresh, slots = self._fresh, self.slots
        if not fresh:
            return
        ready = [req for req in fresh if req.done or req.slot < 0
                 or slots.written[req.slot] > 0 or (req.checked.echo
                                                    and slots.feed_left[req.slot] == 0)]
        for req in ready:
            self._wake_reader(req)
        if ready:
            woken = set(map(id, ready))
            self._fresh = [req for req in fresh if id(req) not in woken]

    async def _sleep(self, timeout: float | None) -> None:
        """Until woken or `timeout` passes. (Not `asyncio.wait_for`: on Python 3.11
        it swallows a cancellation that lands as the wake-up does, and `close`
        would then wait for ever.)"""
        waiter = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({waiter}, timeout=timeout)
        finally:
            waiter.cancel()

    def apply(self, decision: Decision) -> None:
        """Have the slots carry a scheduler's decision out, then wake who must wake."""
        carry_out(self.slots, decision)
        self._fresh.extend(decision.place)
        if decision.free:
            self._wake.set()  # a waiting request may take a slot
        for req in decision.ended:    # only its reader: the others' pulse is not due
            self._wake_reader(req)

    def broadcast(self) -> None:
        """The pulse: wake every waiting reader (and check those still
        waiting for their first text)."""
        self._last_pulse = time.monotonic()
        waiting, self._waiting = self._waiting, {}
        for req in waiting.values():
            req.wakeup.set()
        if self._fresh:
            self._wake_first()


# The niceness of the compute thread (and the OpenMP threads it starts, which
# inherit it): the event loop must answer sockets at once while the C step fills
# every core; at 0 a new request's first character waited ~4x longer at 256
# clients on 2 cores (benchmarks/load.py).
COMPUTE_NICE = 10


def _lower_priority() -> None:
    """Run in the engine's worker thread: Linux's niceness is per thread."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), COMPUTE_NICE)
    except (AttributeError, OSError):  # not Linux, or not allowed: same speed, more latency
        pass


def _joined(head: str, text: str) -> str:
    """The echoed prompt and the first text read, as one piece."""
    if isinstance(head, Piece):
        lps, tops = list(head.token_logprobs), list(head.top_logprobs)
        if isinstance(text, Piece):
            lps, tops = lps + text.token_logprobs, tops + text.top_logprobs
        return Piece(head + text, lps, tops)
    return head + text


class _Rate:
    """Characters per second over the last few seconds, from running totals."""

    def __init__(self, window: float = 5.0):
        self.window, self.samples = window, collections.deque([(time.monotonic(), 0)])

    def add(self, total: int) -> None:
        now = time.monotonic()
        self.samples.append((now, total))
        while len(self.samples) > 2 and now - self.samples[1][0] > self.window:
            self.samples.popleft()

    def value(self, total: int) -> float:
        (then, before), now = self.samples[0], time.monotonic()
        return (total - before) / (now - then) if now > then else 0.0
