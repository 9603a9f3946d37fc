"""One-hot training windows: the kernels from csrc/ and their inverse.

No TensorFlow here. `onehot_windows`, `onehot_batch` and `onehot_streams` are the
Cython kernels (their docstrings are in csrc/_text.pyx); `stream_length` is the
arithmetic of the stream layout; `translate` turns one-hot rows back into text,
the tutorial's helper.
"""
from __future__ import annotations

import numpy as np

from ._kernels import _text
from .text import Vocabulary

onehot_windows = _text.onehot_windows
onehot_batch = _text.onehot_batch
onehot_streams = _text.onehot_streams

__all__ = ["onehot_windows", "onehot_batch", "onehot_streams", "stream_length", "translate"]


def stream_length(n_ids: int, batch_size: int, seq_len: int) -> int:
    """Characters per stream when `n_ids` ids are cut into `batch_size` contiguous
    streams stepped `seq_len` at a time: a multiple of `seq_len`, leaving room for
    a start offset of up to `seq_len - 1` and the last target (the ragged end is
    dropped).

    Raises:
        ValueError: if not even one step of every stream fits.
    """
    length = (n_ids - seq_len) // batch_size // seq_len * seq_len
    if length < seq_len:
        raise ValueError(
            f"the training part has {n_ids} characters, too few for {batch_size} "
            f"streams of one {seq_len}-character step (need at least "
            f"{batch_size * seq_len + seq_len}); use a longer corpus, a smaller "
            "--batch-size or a smaller --seq-len")
    return length


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
