# Cython kernels for charstream's text pipeline.
#
# Layout follows scikit-learn's habits: every `def` below checks its inputs and
# allocates its outputs while holding the GIL, then hands them to a
# `cdef ... noexcept nogil` loop that cannot fail. Nothing in a hot loop touches a
# Python object. `charstream/_reference.py` holds a plain twin of each kernel,
# which the kernel must equal exactly.
#
# The one-hot loops index typed memoryviews, so a CHARSTREAM_DEBUG=1 build
# (setup.py: boundscheck and initializedcheck on, -O0 -g) checks every access and
# reports one out of bounds instead of writing there. The text loops read the
# `str`'s own buffer through PyUnicode_DATA/PyUnicode_READ (no memoryview exists
# for it); their bounds are the string's length, taken by the `def` around them.
#
# Directives (language_level, boundscheck, wraparound) come from setup.py.

from libc.stdint cimport uint8_t, int16_t, int32_t, int64_t, uint32_t
from libc.string cimport memset
from cpython.unicode cimport (
    PyUnicode_KIND, PyUnicode_DATA, PyUnicode_New, PyUnicode_1BYTE_DATA,
    PyUnicode_1BYTE_KIND,
)

cdef extern from "nt_copy.h" nogil:
    void cs_copy_nt(uint8_t* dst, const uint8_t* src, size_t n)
    void cs_nt_fence()

cdef extern from "Python.h":
    # A macro over a str's raw data: safe without the GIL while the caller holds
    # a reference to the (immutable) string. Cython's own declaration lacks nogil.
    Py_UCS4 PyUnicode_READ(int kind, const void* data, Py_ssize_t index) nogil

import operator

import numpy as np


# ---------------------------------------------------------------------------
# Code point -> byte mapping (reduce_text, encode_reduced)
# ---------------------------------------------------------------------------

cdef void _map_ucs1(const uint8_t* src, Py_ssize_t n, const uint8_t* table,
                    uint8_t fallback, uint8_t* dst) noexcept nogil:
    # The common case: every code point < 256, one byte each.
    cdef Py_ssize_t i
    cdef uint8_t c
    for i in range(n):
        c = src[i]
        dst[i] = table[c] if c < 128 else fallback


cdef void _map_any(int kind, const void* src, Py_ssize_t n, const uint8_t* table,
                   uint8_t fallback, uint8_t* dst) noexcept nogil:
    # UCS2/UCS4 strings: read through the kind switch (non-ASCII text is rare).
    cdef Py_ssize_t i
    cdef Py_UCS4 c
    for i in range(n):
        c = PyUnicode_READ(kind, src, i)
        dst[i] = table[c] if c < 128 else fallback


cdef _check_table(const uint8_t[::1] table):
    if table.shape[0] != 128:
        raise ValueError(f"the mapping table must have 128 entries, got {table.shape[0]}")


cdef void _map_text(str text, const uint8_t* table, uint8_t fallback, uint8_t* dst):
    cdef Py_ssize_t n = len(text)
    cdef int kind = PyUnicode_KIND(text)
    cdef const void* src = PyUnicode_DATA(text)
    with nogil:
        if kind == PyUnicode_1BYTE_KIND:
            _map_ucs1(<const uint8_t*>src, n, table, fallback, dst)
        else:
            _map_any(kind, src, n, table, fallback, dst)


def map_to_str(str text not None, const uint8_t[::1] table not None, uint8_t fallback):
    """Map every code point of `text` through an ASCII table into a new ASCII `str`.

    Code points below 128 become `chr(table[cp])`; all others become `chr(fallback)`.
    The output has exactly `len(text)` characters. Table entries must be ASCII.
    """
    _check_table(table)
    if fallback >= 128:
        raise ValueError(f"fallback must be an ASCII code, got {fallback}")
    cdef Py_ssize_t i
    for i in range(128):
        if table[i] >= 128:
            raise ValueError(f"table entry {i} is not ASCII: {table[i]}")
    cdef str out = PyUnicode_New(len(text), 127)
    _map_text(text, &table[0], fallback, PyUnicode_1BYTE_DATA(out))
    return out


def map_to_ids(str text not None, const uint8_t[::1] table not None, uint8_t fallback):
    """Map every code point of `text` through an ASCII table into a `uint8` array.

    Code points below 128 become `table[cp]`; all others become `fallback`.
    Returns a new `(len(text),)` `uint8` array.
    """
    _check_table(table)
    out = np.empty(len(text), dtype=np.uint8)
    cdef uint8_t[::1] view = out
    if view.shape[0]:
        _map_text(text, &table[0], fallback, &view[0])
    return out


# ---------------------------------------------------------------------------
# Vocabulary lookup (arbitrary code points, up to 256 symbols)
# ---------------------------------------------------------------------------

cdef Py_ssize_t _lookup(int kind, const void* src, Py_ssize_t n,
                        const int16_t* low, const uint32_t* high_cp,
                        const uint8_t* high_id, Py_ssize_t n_high,
                        uint8_t* dst) noexcept nogil:
    # Returns -1 when every code point is known, else the index of the first one
    # that is not. `low` covers code points < 256 (-1 = unknown); the rest are
    # found by binary search in the sorted `high_cp`.
    cdef Py_ssize_t i, lo, hi, mid
    cdef Py_UCS4 c
    cdef int16_t v
    for i in range(n):
        c = PyUnicode_READ(kind, src, i)
        if c < 256:
            v = low[c]
            if v < 0:
                return i
            dst[i] = <uint8_t>v
        else:
            lo = 0
            hi = n_high
            while lo < hi:
                mid = (lo + hi) >> 1
                if high_cp[mid] < c:
                    lo = mid + 1
                else:
                    hi = mid
            if lo == n_high or high_cp[lo] != c:
                return i
            dst[i] = high_id[lo]
    return -1


def lookup_ids(str text not None, const int16_t[::1] low not None,
               const uint32_t[::1] high_cp not None, const uint8_t[::1] high_id not None):
    """Encode `text` through a vocabulary's lookup tables.

    Args:
        text: the text to encode.
        low: `(256,)` `int16`, the id of each code point below 256, or -1.
        high_cp: sorted `uint32` code points >= 256 in the vocabulary.
        high_id: `uint8` ids of `high_cp`, same length.

    Returns:
        `(ids, bad)`: a `(len(text),)` `uint8` array and -1, or the position of the
        first code point the tables do not know (then `ids` is incomplete).
    """
    if low.shape[0] != 256:
        raise ValueError(f"low table must have 256 entries, got {low.shape[0]}")
    if high_cp.shape[0] != high_id.shape[0]:
        raise ValueError("high_cp and high_id differ in length")
    cdef Py_ssize_t n = len(text)
    out = np.empty(n, dtype=np.uint8)
    if n == 0:
        return out, -1
    cdef uint8_t[::1] view = out
    cdef int kind = PyUnicode_KIND(text)
    cdef const void* src = PyUnicode_DATA(text)
    cdef Py_ssize_t n_high = high_cp.shape[0]
    cdef const uint32_t* hcp = &high_cp[0] if n_high else NULL
    cdef const uint8_t* hid = &high_id[0] if n_high else NULL
    cdef Py_ssize_t bad
    with nogil:
        bad = _lookup(kind, src, n, &low[0], hcp, hid, n_high, &view[0])
    return out, bad


# ---------------------------------------------------------------------------
# One-hot windows
# ---------------------------------------------------------------------------

cdef void _onehot(const uint8_t[::1] ids, const int64_t[::1] starts, Py_ssize_t base,
                  Py_ssize_t n, Py_ssize_t seq_len, Py_ssize_t depth,
                  uint8_t[::1] X, uint8_t[::1] Y) noexcept nogil:
    # Window i covers ids[s : s + seq_len] (X, row i of (n, seq_len * depth)) and
    # the id after it (Y, row i of (n, depth)), where s = starts[i], or base + i
    # when starts is empty (consecutive windows). One memset per window keeps the
    # cleared block in L1 while its ones are set, so each output byte crosses the
    # memory bus once. Typed memoryviews: a CHARSTREAM_DEBUG build checks every
    # index; a release build compiles them to the same pointer arithmetic.
    cdef Py_ssize_t i, t, s, row
    cdef Py_ssize_t w = seq_len * depth
    cdef bint consecutive = starts.shape[0] == 0
    for i in range(n):
        s = base + i if consecutive else starts[i]
        row = i * w
        memset(&X[row], 0, w)
        for t in range(seq_len):
            X[row + t * depth + ids[s + t]] = 1
        row = i * depth
        memset(&Y[row], 0, depth)
        Y[row + ids[s + seq_len]] = 1


cdef void _onehot_streamed(const uint8_t[::1] ids, Py_ssize_t base, Py_ssize_t n,
                           Py_ssize_t seq_len, Py_ssize_t depth, uint8_t[::1] X,
                           uint8_t[::1] Y, uint8_t[::1] xs, uint8_t[::1] ys) noexcept nogil:
    # Consecutive windows, for outputs much larger than the caches: a block of
    # windows at a time is built in the scratch xs / ys (L1/L2-resident: a block
    # is xs.shape[0] // (seq_len * depth) windows), then copied out with streaming
    # stores, so the destination is written once and never read.
    cdef Py_ssize_t i = 0, k, w = seq_len * depth
    cdef Py_ssize_t block = xs.shape[0] // w
    while i < n:
        k = block if n - i > block else n - i
        _onehot(ids, _NO_STARTS, base + i, k, seq_len, depth, xs, ys)
        cs_copy_nt(&X[i * w], &xs[0], <size_t>(k * w))
        cs_copy_nt(&Y[i * depth], &ys[0], <size_t>(k * depth))
        i += k
    cs_nt_fence()


# An empty starts array: "consecutive windows" for _onehot.
cdef const int64_t[::1] _NO_STARTS = np.empty(0, dtype=np.int64)


# Preallocated outputs at least this large are written with streaming stores
# (about twice a core's caches; below it the caller likely reads the result from
# cache). Fresh outputs are not: their pages arrive zeroed by the kernel and
# already cached, so plain stores to them need no extra read, while streaming
# stores measured 1.5x slower there.
STREAM_BYTES = 8 << 20


cdef Py_ssize_t _first_at_least(const uint8_t[::1] ids, Py_ssize_t lo, Py_ssize_t hi,
                                Py_ssize_t depth) noexcept nogil:
    # Index of the first id in ids[lo:hi] that is >= depth, or -1.
    cdef Py_ssize_t i
    for i in range(lo, hi):
        if ids[i] >= depth:
            return i
    return -1


def _as_int(value, name):
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None


def _check_sizes(seq_len, depth):
    seq_len = _as_int(seq_len, "seq_len")
    depth = _as_int(depth, "depth")
    if seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len}")
    if not 1 <= depth <= 256:
        raise ValueError(f"depth must be between 1 and 256, got {depth}")
    return seq_len, depth


def _as_ids(ids, depth):
    """Return `ids` as a C-contiguous `uint8` array, checked against `depth`.

    A `uint8` contiguous array is used as is (its range is checked later, only over
    the windows used); any other integer array is range-checked and copied.
    """
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"ids must be an integer array, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {arr.shape}")
    if arr.dtype != np.uint8 and arr.size:
        bad = np.flatnonzero((arr < 0) | (arr >= depth))
        if bad.size:
            _raise_out_of_range(arr, int(bad[0]), depth)
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _outputs(out, n, seq_len, depth):
    """Fresh `(X, Y)` bool arrays, or the caller's, checked; plus `uint8` views."""
    if out is None:
        X = np.empty((n, seq_len, depth), dtype=np.bool_)
        Y = np.empty((n, depth), dtype=np.bool_)
    else:
        try:
            X, Y = out
        except (TypeError, ValueError):
            raise TypeError("out must be a pair (X, Y) of numpy arrays") from None
        for name, arr, shape in (("X", X, (n, seq_len, depth)), ("Y", Y, (n, depth))):
            if not isinstance(arr, np.ndarray):
                raise TypeError(f"out {name} must be a numpy array, got {type(arr).__name__}")
            if arr.dtype != np.bool_:
                raise ValueError(f"out {name} must have dtype bool, got {arr.dtype}")
            if arr.shape != shape:
                raise ValueError(f"out {name} must have shape {shape}, got {arr.shape}")
            if not arr.flags.c_contiguous:
                raise ValueError(f"out {name} must be C-contiguous")
            if not arr.flags.writeable:
                raise ValueError(f"out {name} is read-only")
    return X, Y, X.view(np.uint8).reshape(-1), Y.view(np.uint8).reshape(-1)


def _checked_starts(starts, Py_ssize_t total, Py_ssize_t seq_len):
    """`starts` as a contiguous int64 array, each window and its target inside ids."""
    st = np.asarray(starts)
    if st.dtype.kind not in "iu":
        raise TypeError(f"starts must be an integer array, got dtype {st.dtype}")
    if st.ndim != 1:
        raise ValueError(f"starts must be 1-D, got shape {st.shape}")
    cdef Py_ssize_t last = total - seq_len - 1
    if st.size:
        bad_st = np.flatnonzero((st < 0) | (st > last))
        if bad_st.size:
            k = int(bad_st[0])
            raise ValueError(
                f"starts[{k}] = {int(st[k])}: the window and its target run past "
                f"the end of ids (expected 0 <= start <= {last} for {total} ids "
                f"and seq_len {seq_len})")
    return np.ascontiguousarray(st, dtype=np.int64)


def _check_window_ids(arr, st, Py_ssize_t seq_len, Py_ssize_t depth):
    """Raise for the first id >= depth that a window (or its target) reads."""
    cdef const int64_t[::1] stv = st
    cdef Py_ssize_t n = stv.shape[0], i, bad = -1
    if not n:
        return
    cdef const uint8_t[::1] idv = arr
    with nogil:
        for i in range(n):
            bad = _first_at_least(idv, stv[i], stv[i] + seq_len + 1, depth)
            if bad >= 0:
                break
    if bad >= 0:
        _raise_out_of_range(arr, bad, depth)


def _checked_windows(ids, starts, seq_len, depth):
    """`(seq_len, depth, ids, starts)` checked for windows at arbitrary starts: the
    sizes, the ids as uint8, the starts as int64 inside ids, and every id a window
    reads below depth."""
    seq_len, depth = _check_sizes(seq_len, depth)
    arr = _as_ids(ids, depth)
    st = _checked_starts(starts, arr.shape[0], seq_len)
    _check_window_ids(arr, st, seq_len, depth)
    return seq_len, depth, arr, st


def _raise_out_of_range(ids, k, depth):
    raise ValueError(
        f"ids[{k}] = {int(ids[k])} is out of range for depth {depth} "
        f"(expected 0 <= id < {depth})")


def onehot_windows(ids, seq_len=16, depth=36, start=0, stop=None, out=None):
    """One-hot encode consecutive training windows (the tutorial's dataset).

    Window `i` is `X[i, t] = onehot(ids[start + i + t])` for `t < seq_len`, with
    target `Y[i] = onehot(ids[start + i + seq_len])`.

    Args:
        ids: 1-D integer array of symbol ids, each `< depth`.
        seq_len: steps per window.
        depth: one-hot width (the vocabulary size), 1 to 256.
        start: first window. Defaults to 0.
        stop: one past the last window; defaults to `len(ids) - seq_len`, every
            window whose target exists.
        out: optional preallocated `(X, Y)`, bool, C-contiguous, of the exact shapes.

    Returns:
        `(X, Y)`: `X` bool `(stop - start, seq_len, depth)`, `Y` bool
        `(stop - start, depth)`.

    Raises:
        TypeError: non-integer ids or arguments, a malformed `out`.
        ValueError: ids not 1-D or out of range, `seq_len < 1`, too few ids for one
            window, `start`/`stop` out of range, `out` of the wrong shape or dtype.
    """
    cdef Py_ssize_t c_seq, c_depth
    c_seq, c_depth = seq_len, depth = _check_sizes(seq_len, depth)
    arr = _as_ids(ids, depth)
    cdef Py_ssize_t total = arr.shape[0]
    if total < seq_len + 1:
        raise ValueError(
            f"ids has {total} ids, fewer than seq_len + 1 = {seq_len + 1} "
            f"needed for one window")
    cdef Py_ssize_t last = total - seq_len
    cdef Py_ssize_t c_start = _as_int(start, "start")
    cdef Py_ssize_t c_stop = last if stop is None else _as_int(stop, "stop")
    if not 0 <= c_start <= last:
        raise ValueError(f"start must be between 0 and {last}, got {c_start}")
    if not c_start <= c_stop <= last:
        raise ValueError(f"stop must be between start ({c_start}) and {last}, got {c_stop}")
    cdef Py_ssize_t n = c_stop - c_start
    cdef const uint8_t[::1] idv = arr
    cdef Py_ssize_t bad
    with nogil:
        bad = _first_at_least(idv, c_start, c_stop + c_seq, c_depth)
    if bad >= 0:
        _raise_out_of_range(arr, bad, depth)
    X, Y, xv, yv = _outputs(out, n, seq_len, depth)
    cdef uint8_t[::1] xm = xv
    cdef uint8_t[::1] ym = yv
    cdef Py_ssize_t block
    cdef uint8_t[::1] xs, ys
    if n and out is not None and n * (c_seq + 1) * c_depth >= STREAM_BYTES:
        block = max(1, (32 << 10) // ((c_seq + 1) * c_depth))
        xs = np.empty(block * c_seq * c_depth, dtype=np.uint8)
        ys = np.empty(block * c_depth, dtype=np.uint8)
        with nogil:
            _onehot_streamed(idv, c_start, n, c_seq, c_depth, xm, ym, xs, ys)
    elif n:
        with nogil:
            _onehot(idv, _NO_STARTS, c_start, n, c_seq, c_depth, xm, ym)
    return X, Y


def onehot_batch(ids, starts, seq_len=16, depth=36, out=None):
    """One-hot encode the windows that begin at arbitrary `starts`.

    `X[i, t] = onehot(ids[starts[i] + t])`, `Y[i] = onehot(ids[starts[i] + seq_len])`:
    what a shuffled, memory-lean batch loader needs.

    Args:
        ids: 1-D integer array of symbol ids, each `< depth`.
        starts: 1-D integer array of window starts, each with
            `0 <= s <= len(ids) - seq_len - 1`.
        seq_len: steps per window.
        depth: one-hot width, 1 to 256.
        out: optional preallocated `(X, Y)`, bool, C-contiguous, of the exact shapes.

    Returns:
        `(X, Y)`: `X` bool `(len(starts), seq_len, depth)`, `Y` bool
        `(len(starts), depth)`.

    Raises:
        TypeError, ValueError: as `onehot_windows`, and for a start whose window
            runs past the end of `ids`.
    """
    seq_len, depth, arr, st = _checked_windows(ids, starts, seq_len, depth)
    cdef Py_ssize_t c_seq = seq_len, c_depth = depth
    cdef const int64_t[::1] stv = st
    cdef Py_ssize_t n = st.shape[0]
    cdef const uint8_t[::1] idv = arr
    X, Y, xv, yv = _outputs(out, n, seq_len, depth)
    cdef uint8_t[::1] xm = xv
    cdef uint8_t[::1] ym = yv
    if n:
        with nogil:
            _onehot(idv, stv, 0, n, c_seq, c_depth, xm, ym)
    return X, Y


# ---------------------------------------------------------------------------
# Contiguous streams (carried-state training)
# ---------------------------------------------------------------------------

cdef void _onehot_streams(const uint8_t[::1] ids, const int64_t[::1] starts, Py_ssize_t n,
                          Py_ssize_t seq_len, Py_ssize_t depth,
                          float[::1] X, int32_t[::1] Y) noexcept nogil:
    # Row i reads ids[s : s + seq_len + 1], s = starts[i]: step t's input is
    # ids[s + t] (one-hot, float32: what the model consumes, so no cast runs in
    # the graph; X is (n, seq_len * depth)) and its target the next id,
    # ids[s + t + 1] (Y is (n, seq_len)).
    cdef Py_ssize_t i, t, s, row
    cdef Py_ssize_t w = seq_len * depth
    for i in range(n):
        s = starts[i]
        row = i * w
        memset(&X[row], 0, w * sizeof(float))
        for t in range(seq_len):
            X[row + t * depth + ids[s + t]] = 1.0
            Y[i * seq_len + t] = ids[s + t + 1]


def onehot_streams(ids, starts, seq_len=16, depth=36):
    """One-hot inputs and next-id targets at every step of rows that start anywhere.

    `X[i, t] = onehot(ids[starts[i] + t])` and `Y[i, t] = ids[starts[i] + t + 1]`:
    batch `k` of carried-state training, whose row `s` continues row `s` of
    batch `k - 1` (`starts` advanced by `seq_len`).

    Args:
        ids: 1-D integer array of symbol ids, each `< depth`.
        starts: 1-D integer array of row starts, each with
            `0 <= s <= len(ids) - seq_len - 1`.
        seq_len: steps per row.
        depth: one-hot width, 1 to 256.

    Returns:
        `(X, Y)`: `X` float32 `(len(starts), seq_len, depth)`, `Y` int32
        `(len(starts), seq_len)`.

    Raises:
        TypeError, ValueError: as `onehot_batch`.
    """
    seq_len, depth, arr, st = _checked_windows(ids, starts, seq_len, depth)
    cdef Py_ssize_t c_seq = seq_len, c_depth = depth
    cdef const int64_t[::1] stv = st
    cdef Py_ssize_t n = st.shape[0]
    cdef const uint8_t[::1] idv = arr
    X = np.empty((n, seq_len, depth), dtype=np.float32)
    Y = np.empty((n, seq_len), dtype=np.int32)
    cdef float[::1] xm = X.reshape(-1)
    cdef int32_t[::1] ym = Y.reshape(-1)
    if n:
        with nogil:
            _onehot_streams(idv, stv, n, c_seq, c_depth, xm, ym)
    return X, Y
