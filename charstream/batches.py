"""The memory-lean input pipeline: one-hot batches built on demand.

The corpus stays a `uint8` id array (1 byte per character); each batch is built
by the Cython `onehot_batch` kernel when Keras asks for it. Memory is O(batch),
whatever the corpus size, instead of the tutorial's whole `(n, 16, 36)` tensor
(642 MB for tiny Shakespeare).
"""
from __future__ import annotations

import math

import keras
import numpy as np

from .windows import onehot_batch


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


class WindowBatches(keras.utils.PyDataset):
    """Batches of one-hot windows `(X, Y)` for `model.fit`, built on demand.

    Batch `b` is `onehot_batch(ids, order[b * batch_size : (b + 1) * batch_size])`:
    `X` bool `(batch, seq_len, depth)`, `Y` bool `(batch, depth)`; the last batch
    may be smaller. Without `shuffle` the order is `starts` itself; with it, the
    order of epoch `e` is a permutation drawn from `(seed, e)` alone, so a resumed
    run sees the same order as an uninterrupted one.

    Memory: `ids` (1 byte per character) plus, when shuffling, one `uint32`
    permutation (4 bytes per window); `starts` is a `range`, never materialised.

    Each batch gets fresh arrays (about 18 KB at batch 32, recycled by the
    allocator) rather than one reused buffer: Keras hands the batch to tf.data,
    which prefetches and may alias NumPy memory, so a buffer overwritten while
    still queued would corrupt training.

    Args:
        ids: `(n,)` `uint8` corpus ids.
        starts: a `range` of window starts into `ids`, step 1.
        batch_size: windows per batch.
        seq_len, depth: as `onehot_batch`.
        shuffle: reshuffle the windows every epoch.
        seed: the shuffle's seed.
        epoch: the epoch the first iteration belongs to (`initial_epoch` on resume).
    """

    def __init__(self, ids: np.ndarray, starts: range, batch_size: int,
                 seq_len: int, depth: int, shuffle: bool = False, seed: int = 0,
                 epoch: int = 0):
        super().__init__(workers=1, use_multiprocessing=False)
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if not isinstance(starts, range) or starts.step != 1:
            raise TypeError(f"starts must be a range with step 1, got {starts!r}")
        if len(starts) >= 2**32:
            raise ValueError(f"at most 2**32 windows per dataset, got {len(starts)}")
        self.ids = np.ascontiguousarray(ids, dtype=np.uint8)
        self.starts = starts
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.depth = depth
        self.shuffle = shuffle
        self.seed = seed
        self._perm = None
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Fix the window order for `epoch`."""
        if self._perm is not None and epoch == self.epoch:
            return
        self.epoch = epoch
        if self.shuffle:
            if self._perm is None:
                self._perm = np.arange(len(self.starts), dtype=np.uint32)
            else:
                self._perm.sort()  # back to the identity, in place
            np.random.default_rng([self.seed, epoch]).shuffle(self._perm)

    def batch_starts(self, index: int) -> np.ndarray:
        """The `int64` window starts of batch `index`."""
        lo = index * self.batch_size
        hi = min(lo + self.batch_size, len(self.starts))
        if self._perm is None:
            return np.arange(self.starts.start + lo, self.starts.start + hi, dtype=np.int64)
        return self._perm[lo:hi].astype(np.int64) + self.starts.start

    def __len__(self) -> int:
        return math.ceil(len(self.starts) / self.batch_size)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for {len(self)} batches")
        return self.build(self.batch_starts(index))

    def build(self, starts: np.ndarray):
        """`(X, Y)` for any window starts (a batch, or one replica's part of one)."""
        return onehot_batch(self.ids, starts, self.seq_len, self.depth)

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)

    def epoch_callback(self) -> keras.callbacks.Callback:
        """A callback for `fit` that gives epoch `e` the order of `(seed, e)` exactly.

        `on_epoch_end` alone advances the order once per pass, but Keras also calls
        it when `fit` starts (its epoch iterator resets before the first epoch), so
        counting passes would be off by one; the callback names the epoch instead.
        """
        batches = self

        class SetEpoch(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                batches.set_epoch(epoch)

        return SetEpoch()


class Uint8WindowBatches(WindowBatches):
    """`WindowBatches` as `uint8` (the same bytes): for tf.distribute strategies,
    which sum per-replica inputs with `AddN`, an op with no bool kernel."""

    def build(self, starts: np.ndarray):
        X, Y = super().build(starts)
        return X.view(np.uint8), Y.view(np.uint8)
