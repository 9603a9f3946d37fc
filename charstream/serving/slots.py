"""The batch's memory for continuous batching: slots, rows and their buffers.

A *slot* is a request's home for its whole life: its prime, its sampling
settings, its uniforms, and a ring of the ids it produced with how many were
written and read. A *row* is a stream of the native step
(`charstream.streaming.native.NativeBackend`): rows `0 .. active-1` are stepped,
`row_slot[r]` says which slot row r serves. Freeing a row moves the last active
row into it, so a tick costs only the active rows. This is the executor: it runs
the batch and carries out the scheduler's decisions (`charstream.serving.scheduler`),
and knows no queues. No asyncio here: `work` runs in the engine's worker thread,
everything else on the event loop between two `work`s.
"""
from __future__ import annotations

import time

import numpy as np

from ..streaming.sampling import Uniforms

UNIFORMS = 256      # uniforms drawn per slot at a time


class Slots:
    """`size` slots and rows over `net` (a `NativeBackend` of batch `size`).

    Args:
        net: the native step.
        max_prime: the longest prime, in ids.
        buffer: the ring's length: ids a reader may fall behind.
    """

    def __init__(self, net, max_prime: int, buffer: int):
        self.net, self.buffer = net, buffer
        size = self.size = net.batch
        self.prime = np.zeros((size, max_prime), np.int32)
        self.prime_pos = np.zeros(size, np.int64)
        self.feed_left = np.zeros(size, np.int64)    # prime ids still to feed before sampling
        self.next = np.zeros(size, np.int32)         # the id the next tick feeds
        self.temperature = np.zeros(size, np.float64)
        self.top_k = np.zeros(size, np.intc)
        self.limit = np.zeros(size, np.int64)        # max_tokens
        self.ring = np.zeros((size, buffer), np.int32)
        self.written = np.zeros(size, np.int64)      # ids produced
        self.read = np.zeros(size, np.int64)         # ids read
        self.u = np.zeros((size, UNIFORMS), np.float64)
        self.u_pos = np.zeros(size, np.int64)
        self.draws: list[Uniforms | None] = [None] * size
        self.owner: list = [None] * size             # the request a slot belongs to
        self.free = list(range(size - 1, -1, -1))
        self.row_slot = np.zeros(size, np.int64)
        self.active = 0
        self.out = np.zeros(size, np.int32)
        self.produced = 0                            # ids sampled, all slots together

    # ------------------------------------------------------------------ slots

    def place(self, owner, ids: np.ndarray, temperature: float, top_k: int, limit: int,
              draws: Uniforms) -> int:
        """Give `owner` a free slot and a fresh row; it feeds `ids`, then samples
        `limit` ids. Returns the slot."""
        slot = self.free.pop()
        self.owner[slot], self.draws[slot] = owner, draws
        self.prime[slot, :len(ids)] = ids
        self.prime_pos[slot], self.feed_left[slot] = 0, len(ids) - 1
        self.next[slot] = ids[0]
        self.temperature[slot], self.top_k[slot] = temperature, top_k
        self.limit[slot] = limit
        self.written[slot] = self.read[slot] = 0
        self.u[slot], self.u_pos[slot] = draws.take(UNIFORMS), 0
        row = self.take_row(slot)
        self.net.reset(np.arange(self.size) == row)
        return slot

    def release(self, slot: int) -> None:
        """The slot is free again (its row must be released already)."""
        self.owner[slot] = self.draws[slot] = None
        self.free.append(slot)

    def unread(self, slot: int) -> int:
        return int(self.written[slot] - self.read[slot])

    def drain(self, slot: int) -> np.ndarray:
        """The ids written since the last drain."""
        start, end = int(self.read[slot]), int(self.written[slot])
        ids = self.ring[slot, np.arange(start, end) % self.buffer]
        # Only now may the worker thread write over them: it writes while readers
        # drain, and stops before `written - read` reaches the ring's length.
        self.read[slot] = end
        return ids

    # ------------------------------------------------------------------ rows

    def running(self) -> np.ndarray:
        """The slots of the active rows, in row order (a copy)."""
        return self.row_slot[:self.active].copy()

    def take_row(self, slot: int) -> int:
        row = self.active
        self.row_slot[row] = slot
        self.active += 1
        return row

    def row_of(self, slot: int) -> int | None:
        rows = np.flatnonzero(self.row_slot[:self.active] == slot)
        return int(rows[0]) if len(rows) else None

    def release_row(self, slot: int) -> None:
        """Stop stepping `slot`: the last active row moves into its row."""
        row = self.row_of(slot)
        if row is None:
            return
        last = self.active - 1
        if row != last:
            self.net.copy_row(last, row)
            self.row_slot[row] = self.row_slot[last]
        self.active -= 1

    def park(self, slot: int) -> list:
        """Release `slot`'s row, returning its state for `resume`."""
        state = self.net.get_row(self.row_of(slot))
        self.release_row(slot)
        return state

    def resume(self, slot: int, state: list) -> None:
        self.net.set_row(self.take_row(slot), state)

    # ------------------------------------------------------------------ ticks

    def work(self, slots: np.ndarray, deadline: float, interrupted) -> int:
        """Tick the rows of `slots` (the active rows, in order) until one of them
        reaches its limit or would overwrite unread ids, `deadline` passes, or
        `interrupted()`. Runs in the worker thread: readers may drain meanwhile
        (an id is written before it is counted, and a row stops before it would
        overwrite what is unread). Returns the ticks run."""
        n, ticks = len(slots), 0
        out = self.out[:n]
        while True:
            feeding = self.feed_left[slots] > 0
            ids = np.ascontiguousarray(self.next[slots])
            # Rows still feeding their prime sample nothing: argmax, the cheapest.
            temperature = np.where(feeding, 0.0, self.temperature[slots])
            top_k = np.ascontiguousarray(np.where(feeding, 0, self.top_k[slots]), dtype=np.intc)
            u = self.u[slots, self.u_pos[slots]]
            self.net.step_rows(n, ids, temperature, top_k, u, self.out)
            ticks += 1
            fed, sampled = slots[feeding], slots[~feeding]
            self.prime_pos[fed] += 1
            self.feed_left[fed] -= 1
            self.next[fed] = self.prime[fed, self.prime_pos[fed]]
            new = out[~feeding]
            self.ring[sampled, self.written[sampled] % self.buffer] = new
            self.written[sampled] += 1
            self.next[sampled] = new
            self.u_pos[sampled] += 1
            self.produced += len(sampled)
            for slot in sampled[self.u_pos[sampled] == UNIFORMS]:
                self.u[slot] = self.draws[slot].take(UNIFORMS)
                self.u_pos[slot] = 0
            written = self.written[sampled]
            if ((written >= self.limit[sampled]).any()
                    or (written - self.read[sampled] >= self.buffer).any()
                    or time.monotonic() >= deadline or interrupted()):
                return ticks

    def ended(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(done, behind)`: the slots that reached their limit, and those whose
        reader is a whole ring behind."""
        written = self.written[slots]
        return (slots[written >= self.limit[slots]],
                slots[written - self.read[slots] >= self.buffer])


def carry_out(slots: Slots, decision) -> None:
    """Carry out a scheduler's `Decision` (`charstream.serving.scheduler`) on
    `slots`, in its order: rows released, parked (their state kept on the
    request), slots freed, parked requests resumed, queued ones placed."""
    for req in decision.release:
        slots.release_row(req.slot)
    for req in decision.park:
        req.saved_state = slots.park(req.slot)
    for req in decision.free:
        slots.release(req.slot)
    for req in decision.resume:
        slots.resume(req.slot, req.saved_state)
        req.saved_state = None
    for req in decision.place:
        c = req.checked
        req.slot = slots.place(req, req.ids, c.temperature, c.top_k or 0, c.max_tokens,
                               req.draws)
