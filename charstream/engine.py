"""Continuous batching: many independent streams on one native step. No TensorFlow.

An `Engine` owns a `NativeLSTM` of `max_streams` rows. Every tick runs **one**
C step (`NativeLSTM.step_rows`) over the rows of the active requests, in a worker
thread without the GIL, so the event loop keeps serving while it computes. A
request that is still feeding its prime and one that is sampling share the tick;
each row has its own temperature, top-k and uniform. A finished or cancelled
request frees its row at once (the last active row moves into it, so a tick
costs only the active rows); a waiting request takes a free row at the next tick.

**Same seed, same text, whatever else runs**: a request's row computes exactly
what `StreamGenerator.load(run, backend="native").stream(prime, temperature,
seed, top_k)` computes alone (rows of the C step are independent and bit for bit
the single stream's), and it draws its own uniforms (`charstream.sampling`).

Output: each request owns a ring of `buffer` ids that the tick writes and its
reader drains. Readers wake on a shared pulse, every `flush` seconds while
anything runs, so a tick's characters for one client travel together. A reader
that falls `buffer` characters behind (a client that stopped reading) is parked:
its state is saved and its row freed, so it costs the others nothing; it
resumes when it reads again, and is cancelled ("stalled") after `stall_timeout`
seconds parked.

    engine = Engine.load(run_dir, max_streams=256)
    async with engine:                       # starts the tick loop
        async for chunk in engine.stream("ROMEO:", max_tokens=200, seed=1):
            print(chunk, end="")
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import os
import time

import numpy as np

from . import _checks
from .native import NativeBackend, load_stream_weights
from .sampling import Uniforms, check_temperature, check_top_k, start_ids
from .text import Vocabulary, reduce_text

UNIFORMS = 256      # uniforms drawn per request at a time


class QueueFull(RuntimeError):
    """Every row is busy and the queue is at its bound: try again later."""


class ShuttingDown(RuntimeError):
    """The engine takes no new requests."""


@dataclasses.dataclass(eq=False)
class Request:
    """One stream's place in the engine. Read it with `chunks()` or the engine's
    `stream()`; `cancel()` frees its row at the next tick."""

    engine: "Engine"
    slot: int
    prime_chars: int
    max_tokens: int
    finish_reason: str | None = None     # "length", "cancelled", "stalled", "shutdown"
    cancelled: bool = False
    parked_since: float | None = None
    saved_state: list | None = dataclasses.field(default=None, repr=False)
    setup: tuple | None = dataclasses.field(default=None, repr=False)
    created: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Stop producing; the row and the buffer are freed at the next tick."""
        self.cancelled = True
        self.engine._wake.set()

    def read(self) -> str:
        """The characters produced since the last read (possibly none)."""
        return self.engine._drain(self)

    async def chunks(self):
        """Text as it is produced, a pulse's worth at a time, until the request ends."""
        try:
            while True:
                pulse = self.engine._pulse
                text = self.read()
                if text:
                    yield text
                elif self.done:
                    return
                else:
                    await pulse.wait()
        finally:  # a reader that leaves early lets go of everything
            self.cancel()


class Engine:
    """Continuous batching over the native step (see the module docstring).

    Args:
        weights: as `charstream.native.load_stream_weights` returns.
        vocab: the run's vocabulary.
        reduce: reduce prompts as the run's training text was.
        max_streams: rows of the batch: requests served at once.
        max_queue: requests that may wait for a row; more get `QueueFull`.
        max_tokens: the largest `max_tokens` a request may ask for.
        max_prime: the longest prime, in characters.
        buffer: characters a reader may fall behind before its request parks.
        flush: seconds between the pulses that wake readers.
        stall_timeout: seconds a parked request waits for its reader.
    """

    def __init__(self, weights: dict, vocab: Vocabulary, reduce: bool = True, *,
                 max_streams: int = 256, max_queue: int = 1024, max_tokens: int = 100_000,
                 max_prime: int = 4096, buffer: int = 65_536, flush: float = 0.02,
                 stall_timeout: float = 60.0):
        for name, value in (("max_streams", max_streams), ("max_tokens", max_tokens),
                            ("max_prime", max_prime), ("buffer", buffer)):
            _checks.positive_int(value, name)
        _checks.non_negative_int(max_queue, "max_queue")
        _checks.positive_number(flush, "flush")
        _checks.positive_number(stall_timeout, "stall_timeout")
        self.net = NativeBackend(weights, batch=max_streams).net
        self.vocab, self.reduce = vocab, reduce
        self.max_streams, self.max_queue = max_streams, max_queue
        self.max_tokens, self.max_prime = max_tokens, max_prime
        self.buffer, self.flush, self.stall_timeout = buffer, flush, stall_timeout
        self._codes = np.array([ord(c) for c in vocab.chars], dtype="<u4")
        self._newline = vocab.chars.find("\n")
        S = max_streams
        # Per slot (a request's home for its whole life):
        self._prime = np.zeros((S, max_prime), np.int32)
        self._prime_pos = np.zeros(S, np.int64)
        self._feed_left = np.zeros(S, np.int64)      # prime ids still to feed before sampling
        self._next = np.zeros(S, np.int32)           # the id the next tick feeds
        self._temperature = np.zeros(S, np.float64)
        self._top_k = np.zeros(S, np.intc)
        self._limit = np.zeros(S, np.int64)          # max_tokens
        self._ring = np.zeros((S, buffer), np.int32)
        self._written = np.zeros(S, np.int64)        # characters produced
        self._read = np.zeros(S, np.int64)           # characters read
        self._u = np.zeros((S, UNIFORMS), np.float64)
        self._u_pos = np.zeros(S, np.int64)
        self._draws: list[Uniforms | None] = [None] * S
        self._requests: list[Request | None] = [None] * S
        self._free = list(range(S - 1, -1, -1))
        # Per row of the net: which slot it serves; rows [0, active) are stepped.
        self._row_slot = np.zeros(S, np.int64)
        self._active = 0
        self._out = np.zeros(S, np.int32)
        self._queue: list[Request] = []
        self._parked: list[Request] = []
        self._done_unread: list[Request] = []   # ended, their last characters not yet read
        self._wake = asyncio.Event()
        self._pulse = asyncio.Event()
        self._last_pulse = 0.0
        self._closing = False
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "charstream-engine")
        self.ticks = self.characters = self.requests = 0
        self._rate = _Rate()

    @classmethod
    def load(cls, run_dir: str | os.PathLike, **options) -> "Engine":
        """An engine over a run directory's `stream.npz` (checked like the native
        backend's: `charstream.run`)."""
        from .run import RunDir

        run = RunDir(run_dir)
        recorded = run.read()
        weights = load_stream_weights(run.stream_file)
        run.check_depth("stream.npz", weights["meta"].get("depth"), recorded.vocab)
        return cls(weights, recorded.vocab, recorded.settings.reduce, **options)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> "Engine":
        self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def start(self) -> None:
        """Start the tick loop on the running event loop."""
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._run())

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
        self._closing = True
        self._wake.set()

    async def close(self) -> None:
        self.shutdown()
        self._end_all()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ requests

    def check(self, prime: str, max_tokens, temperature, top_k) -> np.ndarray:
        """The prime's ids; ValueError naming the first bad argument."""
        if not isinstance(prime, str):
            raise ValueError(f"prompt must be a string, got {type(prime).__name__}")
        if len(prime) > self.max_prime:
            raise ValueError(f"prompt has {len(prime)} characters; at most {self.max_prime}")
        _checks.positive_int(max_tokens, "max_tokens")
        if max_tokens > self.max_tokens:
            raise ValueError(f"max_tokens must be at most {self.max_tokens}, got {max_tokens}")
        check_temperature(temperature)
        check_top_k(top_k, self.vocab.size)
        ids = self.vocab.encode(reduce_text(prime) if self.reduce else prime)
        if len(ids) > self.max_prime:  # reduction may lengthen (U+0130 lowercases to two)
            raise ValueError(f"prompt has {len(ids)} characters once reduced; at most "
                             f"{self.max_prime}")
        return ids

    def submit(self, prime: str = "", max_tokens: int = 256, temperature: float = 1.0,
               top_k: int | None = None, seed: int | None = None) -> Request:
        """Queue a request; it takes a row at the next tick with one free.

        Raises:
            ValueError: naming a bad argument (a prime character the vocabulary
                cannot represent included).
            QueueFull: every row busy and `max_queue` requests already waiting.
            ShuttingDown: after `shutdown()`.
        """
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        ids = self.check(prime, max_tokens, temperature, top_k)
        if seed is not None:
            _checks.non_negative_int(seed, "seed")
        # Requests queued beyond the free rows wait for one (the loop places the
        # others at its next tick).
        if len(self._queue) - len(self._free) >= self.max_queue:
            raise QueueFull(f"all {self.max_streams} streams are busy and "
                            f"{len(self._queue) - len(self._free)} requests wait")
        draws = Uniforms(seed)
        ids = start_ids(ids, self.vocab.size, self._newline, draws)
        req = Request(self, -1, len(ids), max_tokens)
        req.setup = (ids, float(temperature), check_top_k(top_k, self.vocab.size) or 0, draws)
        self._queue.append(req)
        self.requests += 1
        self._wake.set()
        return req

    async def stream(self, prime: str = "", max_tokens: int = 256, temperature: float = 1.0,
                     top_k: int | None = None, seed: int | None = None):
        """`submit`, then yield the text as it comes (cancelled if abandoned)."""
        req = self.submit(prime, max_tokens, temperature, top_k, seed)
        async for chunk in req.chunks():
            yield chunk

    def stats(self) -> dict:
        return {"active": self._active, "queued": len(self._queue), "parked": len(self._parked),
                "max_streams": self.max_streams, "ticks": self.ticks,
                "characters": self.characters, "requests": self.requests,
                "characters_per_second": self._rate.value()}

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()  # what happens from here on wakes the loop (or ends a batch)
            if self._closing:
                self._end_all()
            self._admit()
            if not self._active:
                # Nothing to step: readers take what is left, and the loop sleeps
                # until a request, a cancel, a read or a freed slot wakes it.
                self._broadcast()
                if not ((self._queue and self._free) or self._resumable()):
                    # Parked requests are checked for a stall even when all is quiet.
                    timeout = self.stall_timeout / 4 if self._parked else None
                    try:
                        await asyncio.wait_for(self._wake.wait(), timeout)
                    except asyncio.TimeoutError:
                        pass
                continue
            slots = self._row_slot[:self._active].copy()
            deadline = time.monotonic() + self.flush
            self.ticks += await loop.run_in_executor(self._executor, self._work, slots, deadline)
            self._settle(slots)
            if time.monotonic() - self._last_pulse >= self.flush:
                self._broadcast()

    def _work(self, slots, deadline: float) -> int:
        """Tick the rows of `slots` (in the worker thread) until one of them ends
        or must park, or `deadline`: everything here is array work on the
        engine's own buffers, so the event loop only waits once per batch of
        ticks. Readers may read meanwhile: a character is written before it is
        counted, and a row stops before it would overwrite what is unread."""
        n, ticks = len(slots), 0
        out = self._out[:n]
        while True:
            feeding = self._feed_left[slots] > 0
            ids = np.ascontiguousarray(self._next[slots])
            # Rows still feeding their prime sample nothing: argmax, the cheapest.
            temperature = np.where(feeding, 0.0, self._temperature[slots])
            top_k = np.ascontiguousarray(np.where(feeding, 0, self._top_k[slots]),
                                         dtype=np.intc)
            u = self._u[slots, self._u_pos[slots]]
            self.net.step_rows(n, ids, temperature, top_k, u, self._out)
            ticks += 1
            fed, sampled = slots[feeding], slots[~feeding]
            self._prime_pos[fed] += 1
            self._feed_left[fed] -= 1
            self._next[fed] = self._prime[fed, self._prime_pos[fed]]
            new = out[~feeding]
            self._ring[sampled, self._written[sampled] % self.buffer] = new
            self._written[sampled] += 1
            self._next[sampled] = new
            self._u_pos[sampled] += 1
            self.characters += len(sampled)
            self._rate.add(len(sampled))
            for slot in sampled[self._u_pos[sampled] == UNIFORMS]:
                self._u[slot] = self._draws[slot].take(UNIFORMS)
                self._u_pos[slot] = 0
            if ((self._written[sampled] >= self._limit[sampled]).any()
                    or (self._written[sampled] - self._read[sampled] >= self.buffer).any()
                    or time.monotonic() >= deadline or self._wake.is_set()):
                return ticks

    def _settle(self, slots) -> None:
        """On the event loop, after a batch of ticks: end the requests that reached
        max_tokens and park those whose readers fell a buffer behind."""
        written = self._written[slots]
        for slot in slots[written >= self._limit[slots]]:
            self._finish(self._requests[slot], "length")
        for slot in slots[written - self._read[slots] >= self.buffer]:
            req = self._requests[slot]
            if not req.done:
                self._park(req)

    # ------------------------------------------------------------------ rows and slots

    def _running(self) -> list[Request]:
        return [self._requests[s] for s in self._row_slot[:self._active]]

    def _end_all(self) -> None:
        for req in list(self._queue) + list(self._parked) + self._running():
            self._finish(req, "shutdown")

    def _admit(self) -> None:
        """Free the rows of cancelled requests, resume readers that caught up,
        cancel stalled ones, and give waiting requests the free rows."""
        for req in self._running() + self._done_unread:
            if req.cancelled:
                self._finish(req, "cancelled")
                self._free_slot(req)
        now = time.monotonic()
        for req in list(self._parked):
            if req.cancelled or now - req.parked_since > self.stall_timeout:
                self._finish(req, "cancelled" if req.cancelled else "stalled")
                self._free_slot(req)
            elif self._written[req.slot] - self._read[req.slot] < self.buffer // 2 \
                    and self._active < self.max_streams:
                self._parked.remove(req)
                row = self._take_row(req.slot)
                self.net.set_row(row, req.saved_state)
                req.saved_state = req.parked_since = None
        while self._queue and self._free:
            req = self._queue.pop(0)
            if req.cancelled:
                self._finish(req, "cancelled")
                continue
            self._place(req)

    def _resumable(self) -> bool:
        return self._active < self.max_streams and any(
            self._written[r.slot] - self._read[r.slot] < self.buffer // 2 for r in self._parked)

    def _place(self, req: Request) -> None:
        ids, temperature, top_k, draws = req.setup
        req.setup = None
        slot = req.slot = self._free.pop()
        self._requests[slot], self._draws[slot] = req, draws
        self._prime[slot, :len(ids)] = ids
        self._prime_pos[slot], self._feed_left[slot] = 0, len(ids) - 1
        self._next[slot] = ids[0]
        self._temperature[slot], self._top_k[slot] = temperature, top_k
        self._limit[slot] = req.max_tokens
        self._written[slot] = self._read[slot] = 0
        self._u[slot], self._u_pos[slot] = draws.take(UNIFORMS), 0
        row = self._take_row(slot)
        self.net.reset(np.arange(self.max_streams) == row)

    def _take_row(self, slot: int) -> int:
        row = self._active
        self._row_slot[row] = slot
        self._active += 1
        return row

    def _release_row(self, slot: int) -> None:
        """Free the row serving `slot`: the last active row moves into it."""
        rows = np.flatnonzero(self._row_slot[:self._active] == slot)
        if not len(rows):
            return
        row, last = int(rows[0]), self._active - 1
        if row != last:
            self.net.copy_row(last, row)
            self._row_slot[row] = self._row_slot[last]
        self._active -= 1

    def _park(self, req: Request) -> None:
        rows = np.flatnonzero(self._row_slot[:self._active] == req.slot)
        req.saved_state = self.net.get_row(int(rows[0]))
        req.parked_since = time.monotonic()
        self._release_row(req.slot)
        self._parked.append(req)

    def _finish(self, req: Request, reason: str) -> None:
        """End a request: it produces no more and its row is freed at once. Its
        slot (and the characters its reader has not read yet) stay until the
        reader has read them (or left)."""
        if req.done:
            return
        req.finish_reason = reason
        if req in self._queue:
            self._queue.remove(req)
            return
        if req in self._parked:
            self._parked.remove(req)
        else:
            self._release_row(req.slot)
        self._draws[req.slot] = None
        self._done_unread.append(req)
        self._broadcast()

    def _free_slot(self, req: Request) -> None:
        if req in self._done_unread:
            self._done_unread.remove(req)
            self._requests[req.slot] = None
            self._free.append(req.slot)
            self._wake.set()  # a waiting request may take it

    def _drain(self, req: Request) -> str:
        slot = req.slot
        if slot < 0 or self._requests[slot] is not req:
            return ""
        start, end = int(self._read[slot]), int(self._written[slot])
        text = ""
        if end > start:
            idx = np.arange(start, end) % self.buffer
            self._read[slot] = end
            text = self._codes[self._ring[slot, idx]].tobytes().decode("utf-32-le")
            if req.parked_since is not None:
                self._wake.set()  # it may resume
        if req.done:
            self._free_slot(req)
        return text

    def _broadcast(self) -> None:
        pulse, self._pulse = self._pulse, asyncio.Event()
        self._last_pulse = time.monotonic()
        pulse.set()


class _Rate:
    """Characters per second over the last few seconds."""

    def __init__(self, window: float = 5.0):
        self.window, self.events = window, collections.deque()

    def add(self, n: int) -> None:
        now = time.monotonic()
        self.events.append((now, n))
        while now - self.events[0][0] > self.window:
            self.events.popleft()

    def value(self) -> float:
        if len(self.events) < 2:
            return 0.0
        span = self.events[-1][0] - self.events[0][0]
        return (sum(n for _, n in self.events) - self.events[0][1]) / span if span > 0 else 0.0
