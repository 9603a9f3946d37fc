"""Plain Python/NumPy twins of every kernel in csrc/.

Slow on purpose and obviously right: the tests hold the Cython kernels to these,
and the benchmarks use them as the baseline.
"""
from __future__ import annotations

import numpy as np

from .text import ALPHABET


def reduce_text(text: str) -> str:
    """The definition of reduction, verbatim."""
    return "".join(ch if ch in ALPHABET else " " for ch in text.lower())


def encode(text: str, chars: str) -> np.ndarray:
    """Ids of `text` in `chars`; raises KeyError on an unknown character."""
    index = {ch: k for k, ch in enumerate(chars)}
    return np.array([index[ch] for ch in text], dtype=np.uint8)


def encode_reduced(text: str) -> np.ndarray:
    return encode(reduce_text(text), ALPHABET)


def encode_reduced_translate(text: str) -> np.ndarray:
    """The best plain-Python way: str.lower + str.translate + one bytes lookup."""
    return np.frombuffer(
        text.lower().translate(_TRANSLATE).encode("ascii"), dtype=np.uint8).copy()


# Every code point outside the alphabet maps to the id of ' ' (as a byte), the
# alphabet to its own id. str.translate leaves unmapped characters as they are, so
# the table must cover everything the lowercased text can contain: we map by a
# dict subclass that answers for any code point.
class _Table(dict):
    def __missing__(self, code: int) -> int:
        ch = chr(code)
        value = ALPHABET.index(ch) if ch in ALPHABET else ALPHABET.index(" ")
        self[code] = value
        return value


_TRANSLATE = _Table()


def onehot_windows(ids, seq_len: int = 16, depth: int = 36, start: int = 0, stop=None):
    """The tutorial's create_catgorical_dataset, one window at a time."""
    ids = np.asarray(ids)
    stop = len(ids) - seq_len if stop is None else stop
    return onehot_batch(ids, np.arange(start, stop), seq_len, depth)


def onehot_batch(ids, starts, seq_len: int = 16, depth: int = 36):
    ids = np.asarray(ids)
    n = len(starts)
    X = np.zeros((n, seq_len, depth), dtype=bool)
    Y = np.zeros((n, depth), dtype=bool)
    for i, s in enumerate(starts):
        for t in range(seq_len):
            X[i, t, ids[s + t]] = True
        Y[i, ids[s + seq_len]] = True
    return X, Y


def onehot_windows_numpy(ids, seq_len: int = 16, depth: int = 36):
    """The plain NumPy way: index an identity matrix with a sliding window view."""
    ids = np.asarray(ids)
    eye = np.eye(depth, dtype=bool)
    X = eye[np.lib.stride_tricks.sliding_window_view(ids[:-1], seq_len)]
    Y = eye[ids[seq_len:]]
    return X, Y
