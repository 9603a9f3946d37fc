"""The scheduler: who holds a slot, who waits, who is parked — decisions only.

A request goes `queued → running ⇄ parked → finished → freed`. The scheduler
keeps those lists and, each time it is asked, returns a `Decision`: which rows
to stop stepping, which slots to give back, which parked requests to resume and
which queued ones to place. It never touches the batch: `charstream.serving.slots`
carries a decision out, and the engine (`charstream.serving.engine`) asks and
applies, between two ticks. No threads, no asyncio, no clock of its own (the
caller passes `now`), so every rule here can be exercised step by step.

Rules:
- A cancelled request is finished ("cancelled") wherever it is, and its slot
  given back; a queued one leaves the queue at once, free slots or not. A
  finished request keeps its slot until its reader has read the rest, has left,
  or has read nothing for `stall_timeout` seconds (then the slot is taken back
  and the reader finds the stream ended).
- A parked request whose reader is back under half a ring behind resumes when a
  row is free; one parked longer than `stall_timeout` is finished ("stalled").
- Queued requests take free slots in arrival order; the queue holds at most
  `max_queue` beyond the free slots (`QueueFull` past that).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Callable


class QueueFull(RuntimeError):
    """Every row is busy and the queue is at its bound: try again later."""


@dataclasses.dataclass
class Decision:
    """What to do to the batch, in this order."""

    release: list = dataclasses.field(default_factory=list)  # stop stepping their rows
    park: list = dataclasses.field(default_factory=list)     # save their state, free the row
    free: list = dataclasses.field(default_factory=list)     # give their slots back
    resume: list = dataclasses.field(default_factory=list)   # parked: a row again
    place: list = dataclasses.field(default_factory=list)    # queued: a slot and a row
    ended: list = dataclasses.field(default_factory=list)    # finished: wake their readers

    def __bool__(self) -> bool:
        return bool(self.release or self.park or self.free or self.resume or self.place
                    or self.ended)


class Scheduler:
    """The books of `slots` slots (see the module docstring).

    Args:
        slots: rows of the batch (each placed request holds one slot).
        max_queue: requests that may wait beyond the free slots.
        buffer: the ring's length, ids a reader may fall behind.
        stall_timeout: seconds a parked request waits for its reader.
    """

    def __init__(self, slots: int, max_queue: int, buffer: int, stall_timeout: float):
        self.slots, self.max_queue = slots, max_queue
        self.buffer, self.stall_timeout = buffer, stall_timeout
        self.queue: collections.deque = collections.deque()
        self.running: list = []      # placed and stepped, in placement order
        self.parked: list = []       # placed, row freed while the reader catches up
        self.finished: list = []     # ended, their last characters not yet read

    # ------------------------------------------------------------------ counts

    @property
    def free_slots(self) -> int:
        return self.slots - len(self.running) - len(self.parked) - len(self.finished)

    @property
    def waiting(self) -> int:
        """Queued requests beyond the free slots (those wait for a slot to free)."""
        return len(self.queue) - self.free_slots

    # ------------------------------------------------------------------ events

    def submit(self, req) -> None:
        """Queue `req`, or raise `QueueFull`."""
        if self.waiting >= self.max_queue:
            raise QueueFull(f"all {self.slots} streams are busy and "
                            f"{self.waiting} requests wait")
        self.queue.append(req)

    def finish(self, req, reason: str, decision: Decision, now: float | None = None) -> None:
        """End `req` with `reason`; its row (if it has one) goes in `decision.release`."""
        if req.finish_reason is not None:
            return
        req.finish_reason, req.finished_at = reason, now
        decision.ended.append(req)
        if req in self.queue:            # never placed
            self.queue.remove(req)
            return
        if req in self.running:
            self.running.remove(req)
            decision.release.append(req)
        elif req in self.parked:
            self.parked.remove(req)
        self.finished.append(req)

    def read_all(self, req) -> Decision:
        """`req`'s reader has read everything: a finished request's slot comes back."""
        decision = Decision()
        if req.finish_reason is not None and req in self.finished:
            self.finished.remove(req)
            decision.free.append(req)
        return decision

    def after_tick(self, done: list, behind: list, now: float) -> Decision:
        """Requests that reached `max_tokens` finish ("length"), or a stop string
        ("stop", `req.hit_stop`); those whose reader is a whole ring behind park."""
        decision = Decision()
        for req in done:
            self.finish(req, "stop" if req.hit_stop else "length", decision, now)
        for req in behind:
            if req.finish_reason is None and req in self.running:
                self.running.remove(req)
                self.parked.append(req)
                req.parked_since = now
                decision.park.append(req)
        return decision

    def shutdown(self, reason: str = "shutdown") -> Decision:
        """Finish every queued, running and parked request (`reason`: "shutdown",
        or "error" when the engine failed)."""
        decision = Decision()
        for req in list(self.queue) + list(self.parked) + list(self.running):
            self.finish(req, reason, decision)
        return decision

    # ------------------------------------------------------------------ the decision

    def schedule(self, now: float, unread: Callable[[object], int]) -> Decision:
        """Between two ticks: cancellations, stalls, resumptions and placements.

        Args:
            now: the time, in the clock `after_tick` was given.
            unread: ids a placed request's reader has not read yet.
        """
        decision = Decision()
        for req in list(self.running) + list(self.finished):
            if req.cancelled:
                self.finish(req, "cancelled", decision, now)
                self._free(req, decision)
        for req in list(self.finished):   # a reader that never comes back for the rest
            if req.finished_at is None:
                req.finished_at = now
            elif now - req.finished_at > self.stall_timeout:
                self._free(req, decision)
        for req in [r for r in self.queue if r.cancelled]:
            self.queue.remove(req)
            req.finish_reason = "cancelled"
            decision.ended.append(req)
        for req in list(self.parked):
            if req.cancelled or now - req.parked_since > self.stall_timeout:
                self.finish(req, "cancelled" if req.cancelled else "stalled", decision, now)
                self._free(req, decision)
            elif unread(req) < self.buffer // 2 and len(self.running) < self.slots:
                self.parked.remove(req)
                self.running.append(req)
                req.parked_since = None
                decision.resume.append(req)
        while self.queue and self.free_slots:
            req = self.queue.popleft()
            self.running.append(req)
            decision.place.append(req)
        return decision

    def _free(self, req, decision: Decision) -> None:
        if req in self.finished:
            self.finished.remove(req)
            decision.free.append(req)

    @property
    def waiting_for_readers(self) -> bool:
        """Parked or finished requests whose deadlines the loop must watch."""
        return bool(self.parked or self.finished)

    def idle(self, unread: Callable[[object], int]) -> bool:
        """Nothing to step and nothing `schedule` could start now."""
        resumable = len(self.running) < self.slots and any(
            unread(r) < self.buffer // 2 for r in self.parked)
        return not self.running and not (self.queue and self.free_slots) and not resumable
