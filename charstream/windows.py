"""One-hot training windows: the kernels from csrc/ and their inverse.

No TensorFlow here. `onehot_windows` and `onehot_batch` are the Cython kernels
(their docstrings are in csrc/_text.pyx); `translate` turns one-hot rows back
into text, the tutorial's helper.
"""
from __future__ import annotations

import numpy as np

from ._kernels import _text
from .text import Vocabulary

onehot_windows = _text.onehot_windows
onehot_batch = _text.onehot_batch

__all__ = ["onehot_windows", "onehot_batch", "translate"]


def translate(onehot, vocab: Vocabulary | None = None) -> str:
    """Turn one-hot (or probability) rows back into text.

    Args:
        onehot: `(depth,)` or `(rows, depth)`; bool rows must hold exactly one
            `True`, float rows (a model's predictions) are read by argmax.
        vocab: the vocabulary; defaults to `Vocabulary.default()`.

    Returns:
        One character per row.

    Raises:
        ValueError: if `depth` is not the vocabulary's size, the array is not 1-D
            or 2-D, or a bool row is not one-hot.
    """
    vocab = vocab or Vocabulary.default()
    arr = np.asarray(onehot)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"expected a (rows, depth) array, got shape {np.shape(onehot)}")
    if arr.shape[1] != vocab.size:
        raise ValueError(
            f"rows have depth {arr.shape[1]}, but the vocabulary has {vocab.size} symbols")
    if arr.dtype == np.bool_:
        counts = arr.sum(axis=1)
        bad = np.flatnonzero(counts != 1)
        if bad.size:
            k = int(bad[0])
            raise ValueError(f"row {k} is not one-hot: it has {int(counts[k])} set entries")
    return vocab.decode(arr.argmax(axis=1))
