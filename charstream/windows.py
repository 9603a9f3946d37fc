"""One-hot training windows: the kernels from csrc/ and their inverse.

No TensorFlow here. `onehot_windows`, `onehot_batch` and `onehot_streams` are the
Cython kernels (their docstrings are in csrc/_text.pyx); `translate` turns one-hot rows back
into text, the tutorial's helper.
"""
from __future__ import annotations

import numpy as np

from ._kernels import _text
from .text import Vocabulary

onehot_windows = _text.onehot_windows
onehot_batch = _text.onehot_batch
onehot_streams = _text.onehot_streams

__all__ = ["onehot_windows", "onehot_batch", "onehot_streams", "split_starts", "stream_length",
           "translate"]


def split_starts(n_ids: int, seq_len: int, val_fraction: float) -> tuple[range, range]:
    """Window starts for training and validation, from disjoint parts of the corpus.

    The corpus is cut at `split = floor(n_ids * (1 - val_fraction))`. A training
    window and its target lie wholly in `ids[:split]`, a validation window in the
    contiguous tail `ids[split:]`, so no character is in both.

    Returns:
        `(train_starts, val_starts)` as `range`s (no memory per window);
        `val_starts` is empty when `val_fraction == 0`.

    Raises:
        ValueError: if either part is too short for one window.
    """
    split = n_ids if val_fraction == 0 else int(n_ids * (1 - val_fraction))
    n_train = split - seq_len
    n_val = (n_ids - split) - seq_len if val_fraction else 0
    if n_train < 1:
        raise ValueError(
            f"the training part has {split} characters, too few for one window of "
            f"seq_len {seq_len} plus its target (need at least {seq_len + 1})")
    if val_fraction and n_val < 1:
        raise ValueError(
            f"the validation part (val_fraction {val_fraction}) has {n_ids - split} "
            f"characters, too few for one window of seq_len {seq_len} plus its target; "
            "use a longer corpus, a larger --val-fraction, or --val-fraction 0")
    return range(n_train), range(split, split + max(n_val, 0))


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
