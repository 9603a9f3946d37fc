"""The serving batch's ticks in C (`NativeLSTM.tick_rows`) held to their NumPy
twin (`Slots._tick`), and the C door's checks. No event loop, no threads."""
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charstream.serving.request import Checked
from charstream.serving.slots import UNIFORMS, Slots
from charstream.streaming.native import NativeBackend
from charstream.streaming.sampling import Uniforms

DEPTH, UNITS, SIZE = 12, 16, 5


def _weights(seed=0):
    rng = np.random.default_rng(seed)

    def w(*shape):
        return rng.normal(0, 0.3, shape).astype(np.float32)
    return {"lstms": [[w(DEPTH, 4 * UNITS), w(UNITS, 4 * UNITS), w(4 * UNITS)]],
            "dense": (w(UNITS, DEPTH), w(DEPTH))}


# One request: its prime, max_tokens, temperature, top_k, top_p, min_p, stops, seed.
_request = st.tuples(
    st.lists(st.integers(0, DEPTH - 1), min_size=1, max_size=9),
    st.integers(1, 2 * UNIFORMS + 40),                  # crosses the uniforms' refills
    st.sampled_from([0.0, 0.5, 1.0, 1.7]),
    st.sampled_from([None, 1, 3]),
    st.sampled_from([1.0, 0.8]),
    st.sampled_from([0.0, 0.1]),
    st.lists(st.lists(st.integers(0, DEPTH - 1), min_size=1, max_size=3), max_size=2),
    st.integers(0, 2**32 - 1))


def _place(slots, request):
    prime, max_tokens, temperature, top_k, top_p, min_p, stops, seed = request
    stop_ids = tuple("".join(map(chr, stop)) for stop in stops)
    checked = Checked(np.array(prime, np.int32), max_tokens, temperature, top_k, seed,
                      top_p=top_p, min_p=min_p, stop=stop_ids, stop_ids=stop_ids)
    return slots.place(SimpleNamespace(stop_read=0), checked.ids, checked, Uniforms(seed))


def _serve(slots, requests, native):
    """Run `requests` through `slots` as the engine does (placed while a slot is
    free, read after every `work`, released when done): a trace of what each
    `work` call left, to compare."""
    waiting, trace = list(requests), []
    while waiting or slots.active:
        while waiting and slots.free:
            _place(slots, waiting.pop(0))
        running = slots.running()
        watch = running[slots.written[running] == 0]
        ticks = slots.work(running, float("inf"), lambda: False, watch, native=native)
        ends = [slots.drain(int(s), final=False) for s in running]
        done, behind = slots.ended(running)
        assert len(behind) == 0
        trace.append((ticks, ends, slots.produced, slots.ring.copy(), slots.written.copy(),
                      slots.next.copy(), slots.prime_pos.copy(), slots.feed_left.copy(),
                      slots.limit.copy(), [slots.u[s, slots.u_pos[s]] for s in running],
                      [slots.net.get_row(r) for r in range(slots.active)]))
        for slot in done:
            slots.release_row(slot)
            slots.release(slot)
    return trace


def _equal(a, b):
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return np.array_equal(a, b)


@settings(max_examples=25, deadline=None)
@given(st.lists(_request, min_size=1, max_size=8), st.sampled_from([8, 64]))
def test_the_c_ticks_equal_their_numpy_twin(requests, buffer):
    native = _serve(Slots(NativeBackend(_weights(), SIZE), 12, buffer), requests, True)
    plain = _serve(Slots(NativeBackend(_weights(), SIZE), 12, buffer), requests, False)
    assert len(native) == len(plain)
    for i, (a, b) in enumerate(zip(native, plain)):
        assert _equal(a, b), f"work call {i} differs"


def test_a_ring_fills_and_a_watched_slot_ends_a_call_in_c_as_in_numpy():
    for native in (True, False):
        slots = Slots(NativeBackend(_weights(), SIZE), 12, 16)
        a = _place(slots, ([1, 2, 3], 1000, 1.0, None, 1.0, 0.0, [], 7))
        ticks = slots.work(slots.running(), float("inf"), lambda: False,
                           np.array([a]), native=native)
        assert ticks == 3 and slots.written[a] == 1        # prime fed, its first id
        slots.work(slots.running(), float("inf"), lambda: False, native=native)
        assert slots.written[a] == 16 and slots.read[a] == 0   # the ring is full: it stops


# ---------------------------------------------------------------- the C door's checks

def _arrays(slots_n=3, rows=2):
    """Valid positional `tick_rows` arguments after `rows, max_ticks`, in order,
    by name: `slots_n` slots, the first `rows` of them stepped."""
    arrays = {
        "slot": np.arange(rows, dtype=np.int64), "next_ids": np.zeros(slots_n, np.int32),
        "feed_left": np.zeros(slots_n, np.int64), "prime": np.zeros((slots_n, 4), np.int32),
        "prime_pos": np.zeros(slots_n, np.int64), "temperature": np.ones(slots_n),
        "top_k": np.zeros(slots_n, np.intc), "u": np.full((slots_n, 8), 0.5),
        "u_pos": np.zeros(slots_n, np.int64), "ring": np.zeros((slots_n, 8), np.int32),
        "written": np.zeros(slots_n, np.int64), "read": np.zeros(slots_n, np.int64),
        "limit": np.full(slots_n, 4, np.int64), "watch": np.zeros(0, np.int64),
        "hit": np.zeros(rows, np.uint8)}
    return arrays


def _tick_rows(net, rows=2, max_ticks=4, **changes):
    arrays = _arrays()
    optional = {k: changes.pop(k) for k in ("top_p", "min_p", "stop_end") if k in changes}
    arrays.update(changes)
    return net.tick_rows(rows, max_ticks, *arrays.values(), **optional)


@pytest.mark.parametrize("change, message", [
    ({"rows": 6}, r"rows must be in \[0, 5\], got 6"),
    ({"max_ticks": 0}, "expected a positive max_ticks, got 0"),
    ({"slot": np.array([0], np.int64)}, "slot and hit must hold at least 2 values, got 1 and 2"),
    ({"slot": np.array([0, 3], np.int64)}, r"slot\[1\] = 3 is not a slot \(0 to 2\)"),
    ({"watch": np.array([-1], np.int64)}, r"watch\[0\] = -1 is not a slot \(0 to 2\)"),
    ({"written": np.zeros(2, np.int64)}, r"written must hold 3 values \(one per slot\), got 2"),
    ({"ring": np.zeros((2, 8), np.int32)}, r"ring must have 3 rows \(one per slot\), got 2"),
    ({"ring": np.zeros((3, 0), np.int32)}, "ring, u and prime need at least one column"),
    ({"top_p": np.ones(3)}, "top_p and min_p go together"),
    ({"stop_end": np.zeros((3, 5), np.uint8)}, f"stop_end must have {DEPTH} columns, got 5"),
    ({"temperature": np.array([1.0, -1.0, 1.0])}, r"temperature\[1\]"),
    ({"u_pos": np.array([8, 0, 0], np.int64)}, "slot 0: u_pos 8, prime_pos 0 and feed_left 0"),
    ({"feed_left": np.array([0, 4, 0], np.int64)}, "slot 1: u_pos 0, prime_pos 0 and feed_left 4"),
    ({"next_ids": np.array([0, DEPTH, 0], np.int32)},
     rf"row 1 \(slot 1\): id {DEPTH} is out of range for depth {DEPTH}"),
])
def test_tick_rows_names_what_is_wrong(change, message):
    net = NativeBackend(_weights(), SIZE)
    with pytest.raises(ValueError, match=message):
        _tick_rows(net, **change)


def test_tick_rows_with_valid_arguments_runs_and_counts():
    net = NativeBackend(_weights(), SIZE)
    arrays = _arrays()
    ticks, sampled = net.tick_rows(2, 100, *arrays.values())
    assert ticks == 4 and sampled == 8                 # limit 4, two rows
    assert (arrays["written"] == [4, 4, 0]).all() and (arrays["u_pos"] == [4, 4, 0]).all()
    assert _tick_rows(net, rows=0) == (0, 0)
