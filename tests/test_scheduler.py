"""The scheduler alone: decisions step by step, no threads, no event loop, no model."""
import pytest

from charstream.serving.scheduler import Decision, QueueFull, Scheduler


class Req:
    """What the scheduler reads and writes of a request."""

    def __init__(self, name):
        self.name = name
        self.finish_reason = None
        self.finished_at = None
        self.cancelled = False
        self.parked_since = None
        self.hit_stop = False

    def __repr__(self):
        return self.name


def nothing_unread(req):
    return 0


def placed(slots, *names):
    """A scheduler of `slots` slots whose requests `names` were submitted and placed."""
    sched = Scheduler(slots=slots, max_queue=4, buffer=8, stall_timeout=10)
    reqs = [Req(name) for name in names]
    for req in reqs:
        sched.submit(req)
    sched.schedule(0.0, nothing_unread)
    return sched, reqs


def test_queued_requests_take_free_slots_in_order_and_the_queue_is_bounded():
    sched = Scheduler(slots=2, max_queue=1, buffer=8, stall_timeout=10)
    a, b, c = Req("a"), Req("b"), Req("c")
    for req in (a, b, c):
        sched.submit(req)                    # two fit the free slots, one waits
    with pytest.raises(QueueFull, match="all 2 streams are busy and 1 requests wait"):
        sched.submit(Req("d"))
    decision = sched.schedule(0.0, nothing_unread)
    assert decision.place == [a, b] and list(sched.queue) == [c]
    assert sched.running == [a, b] and sched.free_slots == 0


def test_a_finished_request_keeps_its_slot_until_it_is_read():
    sched, (a, b) = placed(1, "a", "b")
    decision = sched.after_tick(done=[a], behind=[], now=1.0)
    assert a.finish_reason == "length" and decision.release == [a] and decision.ended
    assert sched.schedule(1.0, nothing_unread).place == []   # a's slot is still a's
    assert sched.read_all(a).free == [a]
    assert sched.schedule(1.0, nothing_unread).place == [b]


def test_a_reader_behind_parks_resumes_when_it_catches_up_and_stalls_if_it_does_not():
    sched, (a, b) = placed(2, "a", "b")
    decision = sched.after_tick(done=[], behind=[a, b], now=1.0)
    assert decision.park == [a, b] and a.parked_since == 1.0 and sched.parked == [a, b]
    unread = {a: 3, b: 8}.get                # a is under half a ring behind, b is not
    decision = sched.schedule(2.0, unread)
    assert decision.resume == [a] and a.parked_since is None and sched.parked == [b]
    decision = sched.schedule(11.5, unread)  # b parked 10.5 s > stall_timeout
    assert b.finish_reason == "stalled" and decision.free == [b]


def test_cancellation_wherever_the_request_is():
    sched, (run, park) = placed(3, "running", "parked")
    wait = Req("queued")
    sched.after_tick(done=[], behind=[park], now=0.0)
    sched.submit(wait)
    sched.schedule(0.0, {park: 8}.get)       # park stays parked; wait takes the last slot
    assert sched.running == [run, wait]
    for req in (run, park, wait):
        req.cancelled = True
    decision = sched.schedule(0.1, {park: 8}.get)
    assert {r.finish_reason for r in (run, park, wait)} == {"cancelled"}
    assert set(decision.release) == {run, wait} and set(decision.free) == {run, park, wait}
    assert sched.free_slots == 3 and not sched.running and not sched.parked


def test_a_cancelled_queued_request_never_takes_a_slot():
    sched = Scheduler(slots=1, max_queue=4, buffer=8, stall_timeout=10)
    a = Req("a")
    sched.submit(a)
    a.cancelled = True
    decision = sched.schedule(0.0, nothing_unread)
    assert decision.place == [] and a.finish_reason == "cancelled" and decision.ended
    assert sched.free_slots == 1


def test_shutdown_finishes_everything_and_idle_says_when_to_sleep():
    sched = Scheduler(slots=1, max_queue=4, buffer=8, stall_timeout=10)
    assert sched.idle(nothing_unread)
    a, b = Req("a"), Req("b")
    sched.submit(a)
    sched.submit(b)
    assert not sched.idle(nothing_unread)    # a free slot and a queued request
    sched.schedule(0.0, nothing_unread)
    decision = sched.shutdown()
    assert a.finish_reason == b.finish_reason == "shutdown"
    assert decision.release == [a] and not sched.queue
    assert not Decision() and decision
