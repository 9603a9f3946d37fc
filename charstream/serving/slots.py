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

from ..streaming.sampling import MAX_LOGPROBS, Uniforms
from ..streaming.stops import Stops

UNIFORMS = 256      # uniforms drawn per slot at a time
# Row-steps per call of the C ticks (`Slots.work`): about 1.5 ms of the step on
# 2 cores, between which the loop looks at its deadline and its wake-ups.
ROW_STEPS = 2048
_NO_SLOTS = np.zeros(0, np.int64)


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
        self.top_p = np.ones(size, np.float64)
        self.min_p = np.zeros(size, np.float64)
        self.cutting = 0                             # slots with top_p < 1 or min_p > 0
        # Log-probabilities: want[s] >= 0 reports them (that many alternatives);
        # score_prompt[s]: the prompt's characters are scored too (echo).
        self.want = np.full(size, -1, np.intc)
        self.score_prompt = np.zeros(size, bool)
        self.wanting = 0                             # slots with want >= 0
        self.logprob = np.zeros(size, np.float64)    # the C step's outputs, per row
        self.top_ids = np.zeros((size, MAX_LOGPROBS), np.int32)
        self.top_lp = np.zeros((size, MAX_LOGPROBS), np.float64)
        self.lp_rings: list = [None] * size          # per slot: (lp, top ids, top lp) rings
        self.prompt_lp: list = [None] * size         # per slot: the prompt's, the same three
        # Stops: per slot, and which ids may end one of its stops (cheap to test).
        self.stops: list[Stops | None] = [None] * size
        self.stop_end = np.zeros((size, net.depth), bool)
        self.stopping = 0                            # slots with stops
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
        self.hit = np.zeros(size, np.uint8)          # the C ticks' rows that may end a stop
        self.produced = 0                            # ids sampled, all slots together

    # ------------------------------------------------------------------ slots

    def place(self, owner, ids: np.ndarray, checked, draws: Uniforms) -> int:
        """Give `owner` a free slot and a fresh row; it feeds `ids`, then samples
        `checked.max_tokens` ids under `checked`'s settings
        (`charstream.serving.request.Checked`). Returns the slot."""
        slot = self.free.pop()
        self.owner[slot], self.draws[slot] = owner, draws
        self.prime[slot, :len(ids)] = ids
        self.prime_pos[slot], self.feed_left[slot] = 0, len(ids) - 1
        self.next[slot] = ids[0]
        self.temperature[slot], self.top_k[slot] = checked.temperature, checked.top_k or 0
        self.top_p[slot], self.min_p[slot] = checked.top_p, checked.min_p
        self.cutting += checked.top_p < 1 or checked.min_p > 0
        self.limit[slot] = checked.max_tokens
        self.written[slot] = self.read[slot] = 0
        self.u[slot], self.u_pos[slot] = draws.take(UNIFORMS), 0
        self._place_logprobs(slot, checked, len(ids))
        if checked.stop_ids:
            self.stops[slot] = Stops(checked.stop_ids)
            self.stop_end[slot, [ord(stop[-1]) for stop in checked.stop_ids]] = True
            self.stopping += 1
        row = self.take_row(slot)
        self.net.reset(np.arange(self.size) == row)
        return slot

    def _place_logprobs(self, slot: int, checked, prime_len: int) -> None:
        if checked.logprobs is None:
            return
        self.want[slot] = checked.logprobs
        self.wanting += 1
        # float32 and int16 rings: a logprobs request holds 29 bytes per buffered id.
        self.lp_rings[slot] = (np.zeros(self.buffer, np.float32),
                               np.full((self.buffer, MAX_LOGPROBS), -1, np.int16),
                               np.zeros((self.buffer, MAX_LOGPROBS), np.float32))
        if checked.echo:
            self.score_prompt[slot] = True
            self.prompt_lp[slot] = (np.zeros(prime_len), np.full((prime_len, MAX_LOGPROBS), -1),
                                    np.zeros((prime_len, MAX_LOGPROBS)))

    def release(self, slot: int) -> None:
        """The slot is free again (its row must be released already)."""
        self.cutting -= self.top_p[slot] < 1 or self.min_p[slot] > 0
        self.top_p[slot], self.min_p[slot] = 1.0, 0.0
        self.wanting -= self.want[slot] >= 0
        self.want[slot], self.score_prompt[slot] = -1, False
        self.lp_rings[slot] = self.prompt_lp[slot] = None
        if self.stops[slot] is not None:
            self.stopping -= 1
            self.stops[slot] = None
            self.stop_end[slot] = False
        self.owner[slot] = self.draws[slot] = None
        self.free.append(slot)

    def unread(self, slot: int) -> int:
        return int(self.written[slot] - self.read[slot])

    def drain(self, slot: int, final: bool) -> tuple[int, int]:
        """Mark the ids written since the last drain read, and return their range
        `(start, end)` (read them with `ids` and `logprobs`). Unless `final`,
        the end that could still become one of the slot's stop strings stays
        unread (`charstream.streaming.stops`)."""
        start, end = int(self.read[slot]), int(self.written[slot])
        stops = self.stops[slot]
        if stops is not None and not final and end > start:
            tail = self.ids(slot, max(start, end - stops.longest), end)
            end -= stops.hold("".join(map(chr, tail.tolist())))
        # Only now may the worker thread write over them: it writes while readers
        # drain, and stops before `written - read` reaches the ring's length.
        self.read[slot] = end
        return start, end

    def ids(self, slot: int, start: int, end: int) -> np.ndarray:
        """Ids `start .. end` of `slot`'s ring: one slice unless they wrap (the
        index array this replaced was a tenth of the event loop at 256 clients)."""
        at, n, ring = start % self.buffer, end - start, self.ring[slot]
        if at + n <= self.buffer:
            return ring[at:at + n]
        return np.concatenate([ring[at:], ring[:at + n - self.buffer]])

    def logprobs(self, slot: int, start: int, end: int):
        """`(lp, top_ids, top_lp)` of ids `start .. end`; None if not asked for."""
        rings = self.lp_rings[slot]
        if rings is None:
            return None
        at = np.arange(start, end) % self.buffer
        return tuple(ring[at] for ring in rings)

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

    def work(self, slots: np.ndarray, deadline: float, interrupted,
             watch: np.ndarray | None = None, native: bool = True) -> int:
        """Tick the rows of `slots` (the active rows, in order) until one of them
        reaches its limit (or a stop string) or would overwrite unread ids, a
        slot of `watch` (those whose readers wait for a first character) writes
        one, `deadline` passes, or `interrupted()`. Runs in the worker thread: readers
        may drain meanwhile (an id is written before it is counted, and a row
        stops before it would overwrite what is unread). Returns the ticks run.

        The ticks and their bookkeeping run in C, `ROW_STEPS` row-steps a call
        without the GIL (`NativeBackend.tick_rows`); with log-probabilities
        asked for (or `native=False`) one Python loop a tick (`_tick`), the C
        loop's twin: the same ids, positions and uniforms, held equal by the tests.
        """
        n, ticks = len(slots), 0
        watch = _NO_SLOTS if watch is None else watch
        per_call = max(1, min(UNIFORMS // 2, ROW_STEPS // max(n, 1)))
        while True:
            if native and not self.wanting:
                self._top_up(slots, per_call)      # the C loop never runs out mid-call
                ran, stop_ends = self._ticks(slots, watch, per_call)
            else:
                ran, stop_ends = 1, self._tick(slots)
            ticks += ran
            self._top_up(slots, 1)                 # none left at the next tick's
            for slot in stop_ends:
                self._match_stop(slot)
            written = self.written[slots]
            if (((self.feed_left[slots] == 0) & (written >= self.limit[slots])).any()
                    or (written - self.read[slots] >= self.buffer).any()
                    or (len(watch) and (self.written[watch] > 0).any())
                    or time.monotonic() >= deadline or interrupted()):
                return ticks

    def _top_up(self, slots: np.ndarray, ticks: int) -> None:
        """Slots that could use their last uniform within `ticks` ticks get the
        next ones now, behind those left (the same sequence, drawn earlier)."""
        for slot in slots[self.u_pos[slots] > UNIFORMS - ticks]:
            pos = int(self.u_pos[slot])
            self.u[slot] = np.concatenate([self.u[slot, pos:], self.draws[slot].take(pos)])
            self.u_pos[slot] = 0

    def _ticks(self, slots: np.ndarray, watch: np.ndarray, ticks: int):
        """Up to `ticks` ticks in C. Returns `(ticks run, the slots whose last id
        may end one of their stops)`."""
        n = len(slots)
        cut = {"top_p": self.top_p, "min_p": self.min_p} if self.cutting else {}
        ran, sampled = self.net.tick_rows(
            n, ticks, slots, self.next, self.feed_left, self.prime, self.prime_pos,
            self.temperature, self.top_k, self.u, self.u_pos, self.ring, self.written,
            self.read, self.limit, watch, self.hit, **cut,
            stop_end=self.stop_end.view(np.uint8) if self.stopping else None)
        self.produced += sampled
        return ran, (slots[self.hit[:n].view(bool)] if self.stopping else _NO_SLOTS)

    def _tick(self, slots: np.ndarray) -> np.ndarray:
        """One tick with its bookkeeping in NumPy: the path of log-probabilities,
        and the C loop's plain twin. Returns the slots whose new id may end one
        of their stops."""
        n = len(slots)
        out = self.out[:n]
        feeding = self.feed_left[slots] > 0                   # (n,) bool
        ids = np.ascontiguousarray(self.next[slots])
        # Rows still feeding their prime sample nothing: argmax, the cheapest.
        temperature = np.where(feeding, 0.0, self.temperature[slots])
        top_k = np.ascontiguousarray(np.where(feeding, 0, self.top_k[slots]), dtype=np.intc)
        u = self.u[slots, self.u_pos[slots]]
        self.net.step_rows(n, ids, temperature, top_k, u, self.out,
                           **self._optional(slots, feeding))
        if self.wanting:
            self._keep_logprobs(slots, feeding)
        fed = slots[feeding]
        live = ~feeding & (self.written[slots] < self.limit[slots])
        sampled, new = slots[live], out[live]
        self.prime_pos[fed] += 1
        self.feed_left[fed] -= 1
        self.next[fed] = self.prime[fed, self.prime_pos[fed]]
        self.ring[sampled, self.written[sampled] % self.buffer] = new
        self.written[sampled] += 1
        self.next[sampled] = new
        self.u_pos[sampled] += 1
        self.produced += len(sampled)
        return sampled[self.stop_end[sampled, new]] if self.stopping else _NO_SLOTS

    def _optional(self, slots: np.ndarray, feeding: np.ndarray) -> dict:
        """The step's optional per-row arrays, for the features some slot uses."""
        kw = {}
        if self.cutting:
            kw["top_p"] = np.ascontiguousarray(self.top_p[slots])
            kw["min_p"] = np.ascontiguousarray(self.min_p[slots])
        if self.wanting:
            # A feeding row that scores its prompt scores the next prime id.
            pos = np.minimum(self.prime_pos[slots] + 1, self.prime.shape[1] - 1)
            scoring = feeding & self.score_prompt[slots]
            kw.update(want=np.ascontiguousarray(self.want[slots]),
                      score=np.ascontiguousarray(np.where(
                          scoring, self.prime[slots, pos], -1), dtype=np.int32),
                      logprob=self.logprob, top_ids=self.top_ids, top_lp=self.top_lp)
        return kw

    def _keep_logprobs(self, slots: np.ndarray, feeding: np.ndarray) -> None:
        """Copy this tick's log-probabilities into the slots' rings (before the
        positions move on)."""
        for r in np.flatnonzero(self.want[slots] >= 0):
            slot = slots[r]
            if feeding[r]:
                if self.prompt_lp[slot] is not None:
                    at = self.prime_pos[slot] + 1
                    for ring, value in zip(self.prompt_lp[slot],
                                           (self.logprob[r], self.top_ids[r], self.top_lp[r])):
                        ring[at] = value
            elif self.written[slot] < self.limit[slot]:
                at = self.written[slot] % self.buffer
                for ring, value in zip(self.lp_rings[slot],
                                       (self.logprob[r], self.top_ids[r], self.top_lp[r])):
                    ring[at] = value

    def _match_stop(self, slot: int) -> None:
        """End `slot` if what it wrote ends with one of its stop strings: the stop
        is taken back (never read: `drain` holds it) and the limit set there."""
        stops, end = self.stops[slot], int(self.written[slot])
        tail = self.ids(slot, max(0, end - stops.longest), end)
        found = stops.match("".join(map(chr, tail.tolist())))
        if found is not None:
            self.written[slot] = self.limit[slot] = end - len(found)
            self.owner[slot].stop_read = len(found)   # the row read it all the same

    def ended(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(done, behind)`: the slots that reached their limit (their prime fed),
        and those whose reader is a whole ring behind."""
        written = self.written[slots]
        return (slots[(self.feed_left[slots] == 0) & (written >= self.limit[slots])],
                slots[written - self.read[slots] >= self.buffer])


def carry_out(slots: Slots, decision) -> None:
    """Carry out a scheduler's `Decision` (`charstream.serving.scheduler`) on
    `slots`, in its order: rows released, parked (their state kept on the
    request), slots freed, parked requests resumed, queued ones placed."""
    for req in decision.release:
        if req.finish_reason in ("length", "stop"):   # a whole request: its end state
            req.end_row = (slots.net.get_row(slots.row_of(req.slot)), int(slots.next[req.slot]))
        slots.release_row(req.slot)
    for req in decision.park:
        req.saved_state = slots.park(req.slot)
    for req in decision.free:
        req.produced_at_end = int(slots.written[req.slot])
        slots.release(req.slot)
    for req in decision.resume:
        slots.resume(req.slot, req.saved_state)
        req.saved_state = None
    for req in decision.place:
        req.slot = slots.place(req, req.ids, req.checked, req.draws)
        if req.start_state is not None:              # continue a stream instead of zeros
            slots.net.set_row(slots.row_of(req.slot),
                              [tuple(np.array(a) for a in pair) for pair in req.start_state.layers])
        req.placed_at = time.monotonic()
