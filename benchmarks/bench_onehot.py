"""Group `onehot`: one-hot training windows, against NumPy and the memory's own speed.

Fresh-output contenders allocate their result every round; preallocated ones
write into the same buffer every round. The two are never mixed in one group:
first touch of fresh pages costs several times a write to pages already mapped.
"""
import numpy as np
import pytest

from charstream import _reference as ref
from charstream import onehot_windows

from _shared import record_rate

SIZES = {"200k": 200_000, "full": None}


def _windows(ids, n):
    return len(ids) - 16 if n is None else n


def _bytes(ids, n):
    w = _windows(ids, n)
    return w * 16 * 36 + w * 36


def _check(out, ids, n):
    X, Y = out
    Xr, Yr = ref.onehot_windows_numpy(ids, stop=_windows(ids, n))
    np.testing.assert_array_equal(X, Xr)
    np.testing.assert_array_equal(Y, Yr)


@pytest.mark.benchmark(group="onehot: fresh output")
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", ["cython-onehot_windows", "numpy-eye-sliding-window",
                                  "np.ones-same-bytes", "python-window-loop"])
def test_onehot_fresh(benchmark, corpus_ids, name, size):
    n = SIZES[size]
    stop = _windows(corpus_ids, n)
    if name == "python-window-loop" and size != "200k":
        pytest.skip("the per-window loop is only timed at 200k windows")
    fn = {
        "cython-onehot_windows": lambda: onehot_windows(corpus_ids, stop=stop),
        "numpy-eye-sliding-window": lambda: ref.onehot_windows_numpy(corpus_ids, stop=stop),
        "np.ones-same-bytes": lambda: (np.ones((stop, 16, 36), bool), np.ones((stop, 36), bool)),
        "python-window-loop": lambda: ref.onehot_windows(corpus_ids, stop=stop),
    }[name]
    rounds = 1 if name == "python-window-loop" else 5
    out = benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1 if rounds > 1 else 0)
    record_rate(benchmark, _bytes(corpus_ids, n) / 1e9, "GB/s")
    if name != "np.ones-same-bytes":
        _check(out, corpus_ids, n)


@pytest.mark.benchmark(group="onehot: preallocated output")
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", ["cython-onehot_windows-out", "numpy-take-out", "fill-same-bytes"])
def test_onehot_preallocated(benchmark, corpus_ids, name, size):
    n = SIZES[size]
    stop = _windows(corpus_ids, n)
    X = np.ones((stop, 16, 36), bool)
    Y = np.ones((stop, 36), bool)
    eye = np.eye(36, dtype=bool)
    view = np.lib.stride_tricks.sliding_window_view(corpus_ids[:stop + 15], 16)

    def numpy_take():
        np.take(eye, view, axis=0, out=X)
        np.take(eye, corpus_ids[16:stop + 16], axis=0, out=Y)
        return X, Y

    def fill():
        X.fill(True)
        Y.fill(True)
        return X, Y

    fn = {
        "cython-onehot_windows-out": lambda: onehot_windows(corpus_ids, stop=stop, out=(X, Y)),
        "numpy-take-out": numpy_take,
        "fill-same-bytes": fill,
    }[name]
    out = benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    record_rate(benchmark, _bytes(corpus_ids, n) / 1e9, "GB/s")
    if name != "fill-same-bytes":
        _check(out, corpus_ids, n)
