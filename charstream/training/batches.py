"""The memory-lean input pipelines: one-hot batches built on demand.

The corpus stays a `uint8` id array (1 byte per character); each batch is built
by a Cython kernel when Keras asks for it. Memory is O(batch), whatever the
corpus size, instead of the tutorial's whole `(n, 16, 36)` tensor (642 MB for
tiny Shakespeare).

- `WindowBatches` (`--mode windows`): shuffled 16-step windows, one target each.
- `StreamBatches` (`--mode stream`): the text as contiguous streams, a target at
  every step, for a stateful model that carries its state from batch to batch.

Both hand the model float32 one-hot inputs: the dtype it computes in, so no cast
runs in the graph (a bool input also makes oneDNN print a fallback warning).
"""
from __future__ import annotations

import math

import keras
import numpy as np

from .. import _checks
from ..data.windows import onehot_batch, onehot_streams, stream_length


class _EpochOrdered(keras.utils.PyDataset):
    """A PyDataset whose batch order is a function of `(seed, epoch)` alone, so a
    resumed run sees the order an uninterrupted one would."""

    def __init__(self, seed: int, epoch: int):
        super().__init__(workers=1, use_multiprocessing=False)
        self.seed = seed
        self.epoch = None
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

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


class WindowBatches(_EpochOrdered):
    """Batches of one-hot windows `(X, Y)` for `model.fit`, built on demand.

    Batch `b` is `onehot_batch(ids, order[b * batch_size : (b + 1) * batch_size])`:
    `X` float32 `(batch, seq_len, depth)`, `Y` float32 `(batch, depth)`; the last batch
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
        _checks.positive_int(batch_size, "batch_size")
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
        self._perm = None
        super().__init__(seed, epoch)

    def set_epoch(self, epoch: int) -> None:
        """Fix the window order for `epoch`."""
        if epoch == self.epoch:
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
        """`(X, Y)` float32 for any window starts (a batch, or one replica's part of one)."""
        X, Y = onehot_batch(self.ids, starts, self.seq_len, self.depth)
        return X.astype(np.float32), Y.astype(np.float32)


class StreamBatches(_EpochOrdered):
    """The training text as `batch_size` contiguous streams, `seq_len` steps a batch.

    Epoch `e` starts the streams at an offset `off` in `[0, seq_len)` drawn from
    `(seed, e)`, so the chunk boundaries move from epoch to epoch. Stream `s` is
    `ids[off + s * L : off + (s + 1) * L + 1]`, `L` the same for every epoch (a
    multiple of `seq_len`, the ragged end dropped), and batch `k` holds its steps
    `[k * seq_len, (k + 1) * seq_len)`:

        X[s, t] = onehot(ids[off + s * L + k * seq_len + t])   # (batch, seq_len, depth) float32
        Y[s, t] = ids[off + s * L + k * seq_len + t + 1]       # (batch, seq_len) int32

    so row `s` of batch `k + 1` continues row `s` of batch `k`: a stateful model
    carries its state across them (and resets it when the epoch starts). Every
    character of a stream but its first is a target once per epoch.

    Args:
        ids: `(n,)` `uint8` ids of the training text.
        batch_size: streams.
        seq_len: steps per batch (the truncation length of backpropagation).
        depth: the vocabulary size.
        seed: the offsets' seed.
        epoch: the epoch the first iteration belongs to (`initial_epoch` on resume).

    Raises:
        ValueError: if the text is too short for `batch_size` streams of one batch.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, depth: int,
                 seed: int = 0, epoch: int = 0):
        _checks.positive_int(batch_size, "batch_size")
        _checks.positive_int(seq_len, "seq_len")
        self.ids = np.ascontiguousarray(ids, dtype=np.uint8)
        self.batch_size, self.seq_len, self.depth = batch_size, seq_len, depth
        self.stream_len = stream_length(len(self.ids), batch_size, seq_len)
        self.offset = 0
        super().__init__(seed, epoch)

    def set_epoch(self, epoch: int) -> None:
        """Fix the streams' offset for `epoch`."""
        self.epoch = epoch
        self.offset = int(np.random.default_rng([self.seed, epoch]).integers(self.seq_len))

    def row_starts(self, index: int) -> np.ndarray:
        """`(batch_size,)` int64: where each stream's steps of batch `index` begin."""
        first = self.offset + index * self.seq_len
        return first + self.stream_len * np.arange(self.batch_size, dtype=np.int64)

    def __len__(self) -> int:
        return self.stream_len // self.seq_len

    @property
    def targets(self) -> int:
        """Targets per epoch."""
        return self.stream_len * self.batch_size

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for {len(self)} batches")
        return onehot_streams(self.ids, self.row_starts(index), self.seq_len, self.depth)


class StreamChunks(StreamBatches):
    """`StreamBatches`' streams handed over `chunk` batches at a time, as ids.

    Item `i` holds batches `[i * chunk, (i + 1) * chunk)` of the same layout, for a
    training step that loops over them inside the graph
    (`charstream.training.steps.train_in_chunks`), which one-hot encodes them there:

        X[k, s, t] = ids[off + s * L + (i * chunk + k) * seq_len + t]   # (chunk, batch, seq_len) uint8
        Y[k, s, t] = X[k, s, t + 1], the next id                       # (chunk, batch, seq_len) int32

    Every item has the same shape, so the compiled step is compiled once: the last
    item of an epoch is padded with batches whose targets are all `-1`, which the
    step skips. Ids cost 1 byte a position, not the one-hot's `4 * depth`.

    Args:
        ids, batch_size, seq_len, depth, seed, epoch: as `StreamBatches`.
        chunk: batches per item (`--steps-per-execution`).

    Raises:
        ValueError: as `StreamBatches`, or if `chunk` is not a positive integer.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, depth: int,
                 chunk: int, seed: int = 0, epoch: int = 0):
        _checks.positive_int(chunk, "chunk")
        self.chunk = chunk
        super().__init__(ids, batch_size, seq_len, depth, seed, epoch)

    @property
    def batches(self) -> int:
        """Batches (optimizer steps) per epoch."""
        return super().__len__()

    def __len__(self) -> int:
        return math.ceil(self.batches / self.chunk)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"chunk {index} out of range for {len(self)} chunks")
        first = index * self.chunk
        count = min(self.chunk, self.batches - first)
        starts = np.stack([self.row_starts(first + k) for k in range(count)])  # (count, batch)
        # (count, batch, seq_len + 1) positions: the inputs and, one further, the targets
        at = starts[:, :, None] + np.arange(self.seq_len + 1, dtype=np.int64)
        X = np.zeros((self.chunk, self.batch_size, self.seq_len), np.uint8)
        Y = np.full((self.chunk, self.batch_size, self.seq_len), -1, np.int32)
        window = self.ids[at]
        X[:count], Y[:count] = window[..., :-1], window[..., 1:]
        return X, Y
