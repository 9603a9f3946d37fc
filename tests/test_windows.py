"""onehot_windows / onehot_batch / onehot_streams against the reference loops, and every
bad input."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from charstream import Vocabulary, onehot_batch, onehot_windows, translate
from charstream.data.windows import onehot_streams
from charstream import _reference as ref


@st.composite
def id_arrays(draw, min_extra=1):
    depth = draw(st.integers(1, 256))
    seq_len = draw(st.integers(1, 20))
    n = draw(st.integers(seq_len + min_extra, seq_len + 60))
    dtype = draw(st.sampled_from([np.uint8, np.int64, np.int32, np.uint16]))
    seed = draw(st.integers(0, 2**32 - 1))
    ids = np.random.default_rng(seed).integers(0, depth, n).astype(dtype)
    return ids, seq_len, depth


@given(id_arrays(), st.data())
def test_windows_equal_reference(arrays, data):
    ids, seq_len, depth = arrays
    last = len(ids) - seq_len
    start = data.draw(st.integers(0, last))
    stop = data.draw(st.integers(start, last))
    X, Y = onehot_windows(ids, seq_len, depth, start, stop)
    Xr, Yr = ref.onehot_windows(ids, seq_len, depth, start, stop)
    assert X.dtype == Y.dtype == np.bool_
    assert X.shape == (stop - start, seq_len, depth) and Y.shape == (stop - start, depth)
    np.testing.assert_array_equal(X, Xr)
    np.testing.assert_array_equal(Y, Yr)


@given(id_arrays())
def test_windows_default_stop_is_every_window_and_matches_numpy(arrays):
    ids, seq_len, depth = arrays
    X, Y = onehot_windows(ids, seq_len=seq_len, depth=depth)
    Xn, Yn = ref.onehot_windows_numpy(ids, seq_len, depth)
    np.testing.assert_array_equal(X, Xn)
    np.testing.assert_array_equal(Y, Yn)


@given(id_arrays(), st.data())
def test_windows_into_dirty_preallocated_buffers(arrays, data):
    ids, seq_len, depth = arrays
    n = len(ids) - seq_len
    # Start from all-True buffers: the kernel must clear what it does not set.
    X = np.ones((n, seq_len, depth), dtype=bool)
    Y = np.ones((n, depth), dtype=bool)
    Xo, Yo = onehot_windows(ids, seq_len, depth, out=(X, Y))
    assert Xo is X and Yo is Y
    Xr, Yr = ref.onehot_windows(ids, seq_len, depth)
    np.testing.assert_array_equal(X, Xr)
    np.testing.assert_array_equal(Y, Yr)


@given(id_arrays(), st.data())
def test_batch_equals_reference(arrays, data):
    ids, seq_len, depth = arrays
    last = len(ids) - seq_len - 1
    starts = data.draw(st.lists(st.integers(0, last), max_size=40))
    starts = np.array(starts, dtype=data.draw(st.sampled_from([np.int64, np.int32, np.uint32])))
    X, Y = onehot_batch(ids, starts, seq_len, depth)
    Xr, Yr = ref.onehot_batch(ids, starts, seq_len, depth)
    np.testing.assert_array_equal(X, Xr)
    np.testing.assert_array_equal(Y, Yr)
    X2 = np.ones_like(X)
    Y2 = np.ones_like(Y)
    onehot_batch(ids, starts, seq_len, depth, out=(X2, Y2))
    np.testing.assert_array_equal(X2, Xr)
    np.testing.assert_array_equal(Y2, Yr)


def test_batch_equals_windows_at_the_same_starts():
    ids = np.random.default_rng(0).integers(0, 36, 500).astype(np.uint8)
    X, Y = onehot_windows(ids)
    starts = np.random.default_rng(1).permutation(len(ids) - 16)[:64]
    Xb, Yb = onehot_batch(ids, starts)
    np.testing.assert_array_equal(Xb, X[starts])
    np.testing.assert_array_equal(Yb, Y[starts])



@given(id_arrays(), st.data())
def test_streams_equal_reference(arrays, data):
    ids, seq_len, depth = arrays
    last = len(ids) - seq_len - 1
    starts = data.draw(st.lists(st.integers(0, last), max_size=40))
    starts = np.array(starts, dtype=data.draw(st.sampled_from([np.int64, np.int32, np.uint32])))
    X, Y = onehot_streams(ids, starts, seq_len, depth)
    Xr, Yr = ref.onehot_streams(ids, starts, seq_len, depth)
    assert X.dtype == np.float32 and Y.dtype == np.int32
    assert X.shape == (len(starts), seq_len, depth) and Y.shape == (len(starts), seq_len)
    np.testing.assert_array_equal(X, Xr)
    np.testing.assert_array_equal(Y, Yr)


def test_stream_rows_are_windows_with_a_target_at_every_step():
    ids = np.random.default_rng(2).integers(0, 36, 300).astype(np.uint8)
    X, Y = onehot_streams(ids, [0, 40, 283])
    W, _ = onehot_windows(ids)
    for i, s in enumerate([0, 40, 283]):
        np.testing.assert_array_equal(X[i], W[s])
        np.testing.assert_array_equal(Y[i], ids[s + 1:s + 17])


@pytest.mark.parametrize("starts, error, match", [
    ([284], ValueError, r"starts\[0\] = 284: the window and its target run past the end"),
    ([0.0], TypeError, "starts must be an integer array"),
])
def test_streams_bad_input(starts, error, match):
    ids = np.zeros(300, np.uint8)
    with pytest.raises(error, match=match):
        onehot_streams(ids, np.array(starts))
    ids[20] = 36
    with pytest.raises(ValueError, match=r"ids\[20\] = 36 is out of range for depth 36"):
        onehot_streams(ids, [4])

def test_window_values_follow_the_tutorial():
    vocab = Vocabulary.default()
    text = "first citizen:\nbefore we proceed"
    ids = vocab.encode(text)
    X, Y = onehot_windows(ids)
    for i in (0, 5, len(text) - 17):
        assert translate(X[i], vocab) == text[i:i + 16]
        assert translate(Y[i], vocab) == text[i + 16]


# ---------------------------------------------------------------- bad input

IDS = np.arange(40, dtype=np.uint8) % 36


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(ids=np.array([0, 1, 36] * 10, dtype=np.uint8)), ValueError,
     r"ids\[2\] = 36 is out of range for depth 36"),
    (dict(ids=np.array([0, 1, 99] * 10, dtype=np.int64)), ValueError, r"ids\[2\] = 99"),
    (dict(ids=np.array([0, -1] * 20)), ValueError, r"ids\[1\] = -1 is out of range"),
    (dict(ids=np.array([300] * 20)), ValueError, r"ids\[0\] = 300"),
    (dict(ids=np.zeros(40, dtype=np.float32)), TypeError, "integer array, got dtype float32"),
    (dict(ids=np.zeros(40, dtype=bool)), TypeError, "integer array, got dtype bool"),
    (dict(ids=["a"] * 40), TypeError, "integer array"),
    (dict(ids=np.zeros((4, 10), dtype=np.uint8)), ValueError, r"1-D, got shape \(4, 10\)"),
    (dict(ids=IDS, seq_len=0), ValueError, "seq_len must be a positive integer, got 0"),
    (dict(ids=IDS, seq_len=2.5), TypeError, "seq_len must be an integer, got 2.5"),
    (dict(ids=IDS, depth=0), ValueError, "depth must be between 1 and 256, got 0"),
    (dict(ids=IDS, depth=257), ValueError, "got 257"),
    (dict(ids=IDS[:16]), ValueError, "ids has 16 ids, fewer than seq_len \\+ 1 = 17"),
    (dict(ids=IDS, start=-1), ValueError, "start must be between 0 and 24, got -1"),
    (dict(ids=IDS, start=25), ValueError, "start must be between 0 and 24, got 25"),
    (dict(ids=IDS, start=5, stop=4), ValueError, r"stop must be between start \(5\) and 24, got 4"),
    (dict(ids=IDS, stop=25), ValueError, "got 25"),
    (dict(ids=IDS, start="0"), TypeError, "start must be an integer"),
])
def test_windows_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        onehot_windows(**kwargs)


def test_uint8_ids_are_only_checked_where_used():
    ids = IDS.copy()
    ids[-1] = 200  # outside windows 0..9 and their targets
    X, _ = onehot_windows(ids, start=0, stop=10)
    assert X.shape == (10, 16, 36)
    with pytest.raises(ValueError, match=r"ids\[39\] = 200"):
        onehot_windows(ids)


@pytest.mark.parametrize("starts, error, match", [
    ([24], ValueError, r"starts\[0\] = 24: the window and its target run past the end"),
    ([0, -1], ValueError, r"starts\[1\] = -1"),
    ([0.0], TypeError, "starts must be an integer array, got dtype float64"),
    ([[0]], ValueError, r"starts must be 1-D, got shape \(1, 1\)"),
])
def test_batch_bad_starts(starts, error, match):
    with pytest.raises(error, match=match):
        onehot_batch(IDS, np.array(starts))


def test_batch_id_out_of_range_in_a_used_window():
    ids = IDS.copy()
    ids[20] = 36
    onehot_batch(ids, [0, 2])  # windows 0..18: fine
    with pytest.raises(ValueError, match=r"ids\[20\] = 36"):
        onehot_batch(ids, [0, 4])


def _good_out(n=24):
    return np.zeros((n, 16, 36), bool), np.zeros((n, 36), bool)


@pytest.mark.parametrize("make, error, match", [
    (lambda: "nope", TypeError, "pair"),
    (lambda: (np.zeros((24, 16, 36), bool),), TypeError, "pair"),
    (lambda: (np.zeros((24, 16, 35), bool), _good_out()[1]), ValueError,
     r"out X must have shape \(24, 16, 36\), got \(24, 16, 35\)"),
    (lambda: (_good_out()[0], np.zeros((24, 36), np.uint8)), ValueError,
     "out Y must have dtype bool, got uint8"),
    (lambda: (np.zeros((24, 36, 16), bool).transpose(0, 2, 1), _good_out()[1]), ValueError,
     "C-contiguous"),
    (lambda: ([[0]], _good_out()[1]), TypeError, "out X must be a numpy array"),
])
def test_bad_out_buffers(make, error, match):
    with pytest.raises(error, match=match):
        onehot_windows(IDS, out=make())


def test_read_only_out_buffer():
    X, Y = _good_out()
    Y.flags.writeable = False
    with pytest.raises(ValueError, match="out Y is read-only"):
        onehot_windows(IDS, out=(X, Y))
    with pytest.raises(ValueError, match="read-only"):
        onehot_batch(IDS, np.arange(24), out=(X, Y))


# ---------------------------------------------------------------- translate

def test_translate_bool_and_float_rows():
    vocab = Vocabulary("abc")
    onehot = np.eye(3, dtype=bool)[[2, 0, 1]]
    assert translate(onehot, vocab) == "cab"
    assert translate(np.array([0.1, 0.7, 0.2]), vocab) == "b"
    assert translate(np.eye(36, dtype=bool)[[10, 11]]) == "ab"


def test_translate_bad_input():
    vocab = Vocabulary("abc")
    with pytest.raises(ValueError, match="depth 4, but the vocabulary has 3"):
        translate(np.eye(4, dtype=bool), vocab)
    with pytest.raises(ValueError, match="row 1 is not one-hot: it has 0 set entries"):
        translate(np.array([[1, 0, 0], [0, 0, 0]], dtype=bool), vocab)
    with pytest.raises(ValueError, match="shape"):
        translate(np.zeros((2, 2, 3), dtype=bool), vocab)


@pytest.mark.parametrize("seq_len, depth, start", [(15, 37, 3), (16, 36, 0), (1, 256, 7)])
def test_large_preallocated_output_takes_the_streaming_path(seq_len, depth, start):
    # Over STREAM_BYTES, preallocated outputs are written with streaming stores in
    # blocks; the block edges and unaligned heads must not show.
    from charstream.data import _text

    n = _text.STREAM_BYTES // ((seq_len + 1) * depth) + 1001
    ids = np.random.default_rng(depth).integers(0, depth, start + n + seq_len).astype(np.uint8)
    X = np.ones((n, seq_len, depth), bool)
    Y = np.ones((n, depth), bool)
    onehot_windows(ids, seq_len, depth, start=start, stop=start + n, out=(X, Y))
    Xr, Yr = ref.onehot_windows_numpy(ids[start:], seq_len, depth, stop=n)
    np.testing.assert_array_equal(X, Xr)
    np.testing.assert_array_equal(Y, Yr)
