"""Continuous batching: many independent streams on one native step. No TensorFlow.

An `Engine` owns a `NativeLSTM` of `max_streams` rows. Every tick runs **one**
C step (`NativeLSTM.step_rows`) over the rows of the active requests, in a worker
thread without the GIL, so the event loop keeps serving while it computes. A
request that is still feeding its prime and one that is sampling share the tick;
each row has its own temperature, top-k and uniform. A finished or cancelled
request frees its row at once (the last active row moves into it, so a tick
costs only the active rows); a waiting request takes a free row at the next tick.
The engine schedules; `charstream.slots` keeps the batch's books (which row serves
which request, their prime, uniform and output buffers).

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
from .slots import Slots
from .text import Vocabulary, reduce_text


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
        self._slots = Slots(self.net, max_prime, buffer)
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
        self.ticks = self.requests = 0
        self._rate = _Rate()

    @classmethod
    def load(cls, run_dir: str | os.PathLike, **options) -> "Engine":
        """An engine over a run directory's `stream.npz` (checked like the native
        backend's: `charstream.run`)."""
        from .run import RunDir

        run = RunDir(run_dir)
        recorded = run.read()
        weights = load_stream_weights(run.stream_file)
        run.check_depth(run.stream_file.name, weights["meta"].get("depth"), recorded.vocab)
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
        waiting = len(self._queue) - len(self._slots.free)
        if waiting >= self.max_queue:
            raise QueueFull(f"all {self.max_streams} streams are busy and "
                            f"{waiting} requests wait")
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

    @property
    def characters(self) -> int:
        """Characters produced so far, all requests together."""
        return self._slots.produced

    def stats(self) -> dict:
        return {"active": self._slots.active, "queued": len(self._queue),
                "parked": len(self._parked), "max_streams": self.max_streams,
                "ticks": self.ticks, "characters": self.characters, "requests": self.requests,
                "characters_per_second": self._rate.value(self.characters)}

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        slots = self._slots
        while True:
            self._wake.clear()  # what happens from here on wakes the loop (or ends a batch)
            if self._closing:
                self._end_all()
            self._admit()
            if not slots.active:
                # Nothing to step: readers take what is left, and the loop sleeps
                # until a request, a cancel, a read or a freed slot wakes it.
                self._broadcast()
                if not ((self._queue and slots.free) or self._resumable()):
                    # Parked requests are checked for a stall even when all is quiet.
                    timeout = self.stall_timeout / 4 if self._parked else None
                    try:
                        await asyncio.wait_for(self._wake.wait(), timeout)
                    except asyncio.TimeoutError:
                        pass
                continue
            running = slots.running()
            deadline = time.monotonic() + self.flush
            self.ticks += await loop.run_in_executor(
                self._executor, slots.work, running, deadline, self._wake.is_set)
            self._rate.add(self.characters)
            done, behind = slots.ended(running)
            for slot in done:
                self._finish(slots.owner[slot], "length")
            for slot in behind:
                req = slots.owner[slot]
                if not req.done:
                    req.saved_state, req.parked_since = slots.park(slot), time.monotonic()
                    self._parked.append(req)
            if time.monotonic() - self._last_pulse >= self.flush:
                self._broadcast()

    # ------------------------------------------------------------------ admission

    def _running(self) -> list[Request]:
        return [self._slots.owner[s] for s in self._slots.running()]

    def _end_all(self) -> None:
        for req in list(self._queue) + list(self._parked) + self._running():
            self._finish(req, "shutdown")

    def _admit(self) -> None:
        """Free the rows of cancelled requests, resume readers that caught up,
        cancel stalled ones, and give waiting requests the free rows."""
        slots = self._slots
        for req in self._running() + self._done_unread:
            if req.cancelled:
                self._finish(req, "cancelled")
                self._free_slot(req)
        now = time.monotonic()
        for req in list(self._parked):
            if req.cancelled or now - req.parked_since > self.stall_timeout:
                self._finish(req, "cancelled" if req.cancelled else "stalled")
                self._free_slot(req)
            elif slots.unread(req.slot) < self.buffer // 2 and slots.active < self.max_streams:
                self._parked.remove(req)
                slots.resume(req.slot, req.saved_state)
                req.saved_state = req.parked_since = None
        while self._queue and slots.free:
            req = self._queue.pop(0)
            if req.cancelled:
                self._finish(req, "cancelled")
                continue
            ids, temperature, top_k, draws = req.setup
            req.setup = None
            req.slot = slots.place(req, ids, temperature, top_k, req.max_tokens, draws)

    def _resumable(self) -> bool:
        return self._slots.active < self.max_streams and any(
            self._slots.unread(r.slot) < self.buffer // 2 for r in self._parked)

    def _finish(self, req: Request, reason: str) -> None:
        """End a request: it produces no more and its row is freed at once. Its
        slot (and the characters its reader has not read yet) stay until the
        reader has read them (or left)."""
        if req.done:
            return
        req.finish_reason = reason
        if req.slot < 0:  # never placed (still queued, or just taken off the queue)
            if req in self._queue:
                self._queue.remove(req)
            self._broadcast()
            return
        if req in self._parked:
            self._parked.remove(req)
        else:
            self._slots.release_row(req.slot)
        self._done_unread.append(req)
        self._broadcast()

    def _free_slot(self, req: Request) -> None:
        if req in self._done_unread:
            self._done_unread.remove(req)
            self._slots.release(req.slot)
            self._wake.set()  # a waiting request may take it

    def _drain(self, req: Request) -> str:
        slots = self._slots
        if req.slot < 0 or slots.owner[req.slot] is not req:
            return ""
        text = ""
        if slots.unread(req.slot):
            text = self._codes[slots.drain(req.slot)].tobytes().decode("utf-32-le")
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
