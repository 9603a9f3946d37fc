"""The memory-lean pipeline gives exactly the windows onehot_windows would."""
import numpy as np
import pytest

from charstream import onehot_windows
from charstream.training.batches import WindowBatches
from charstream.data.corpus import split_starts


def test_batches_equal_onehot_windows_in_order():
    ids = np.random.default_rng(0).integers(0, 36, 1000).astype(np.uint8)
    starts = range(700)
    data = WindowBatches(ids, starts, batch_size=64, seq_len=16, depth=36)
    X, Y = onehot_windows(ids, stop=700)
    assert len(data) == 11  # ceil(700 / 64): the last batch is partial
    for b in range(len(data)):
        xb, yb = data[b]
        np.testing.assert_array_equal(xb, X[b * 64:(b + 1) * 64])
        np.testing.assert_array_equal(yb, Y[b * 64:(b + 1) * 64])
    with pytest.raises(IndexError):
        data[11]


def test_shuffled_batches_cover_every_window_once_per_epoch_reproducibly():
    ids = np.random.default_rng(0).integers(0, 36, 500).astype(np.uint8)
    starts = range(30, 430)  # an offset range, like the validation tail
    X, Y = onehot_windows(ids, start=30, stop=430)

    def order(data):
        return np.concatenate([data.batch_starts(b) for b in range(len(data))])

    data = WindowBatches(ids, starts, 32, 16, 36, shuffle=True, seed=7)
    first = order(data)
    assert sorted(first) == list(starts) and not np.array_equal(first, list(starts))
    for b in range(len(data)):
        xb, yb = data[b]
        chosen = first[b * 32:(b + 1) * 32] - 30
        np.testing.assert_array_equal(xb, X[chosen])
        np.testing.assert_array_equal(yb, Y[chosen])
    data.on_epoch_end()
    assert data.epoch == 1 and not np.array_equal(order(data), first)
    # Epoch 1's order depends on (seed, epoch) only: a resumed run sees the same.
    resumed = WindowBatches(ids, starts, 32, 16, 36, shuffle=True, seed=7, epoch=1)
    np.testing.assert_array_equal(order(resumed), order(data))
    other = WindowBatches(ids, starts, 32, 16, 36, shuffle=True, seed=8)
    assert not np.array_equal(order(other), first)


def test_starts_must_be_a_range():
    with pytest.raises(TypeError, match="range with step 1"):
        WindowBatches(np.zeros(100, np.uint8), np.arange(10), 4, 16, 36)


def test_validation_windows_never_overlap_training():
    for n, frac, seq in [(1000, 0.1, 16), (1_115_394, 0.1, 16), (200, 0.25, 5), (77, 0.3, 3)]:
        train, val = split_starts(n, seq, frac)
        split = int(n * (1 - frac))
        assert train[-1] + seq < split <= val[0]        # the last training target < split
        assert val[-1] + seq == n - 1                    # the tail is used to the end
        assert len(train) == split - seq and len(val) == n - split - seq


def test_no_validation():
    train, val = split_starts(100, 16, 0.0)
    assert len(val) == 0 and train[-1] == 100 - 17


@pytest.mark.parametrize("n, frac, match", [
    (16, 0.0, "training part has 16 characters, too few"),
    (100, 0.1, r"validation part \(val_fraction 0.1\) has 10 characters"),
])
def test_too_short_corpus(n, frac, match):
    with pytest.raises(ValueError, match=match):
        split_starts(n, 16, frac)


@pytest.mark.parametrize("steps_per_execution", [1, 32])
@pytest.mark.parametrize("kind", ["windows", "streams"])
def test_fit_trains_epoch_e_on_the_order_of_seed_and_e(kind, steps_per_execution):
    # Keras resets its epoch iterator (calling on_epoch_end) before the first
    # epoch, so counting passes alone would train epoch 0 on epoch 1's order; the
    # epoch callback pins it. Each batch records the epoch whose order it came from.
    import keras

    from charstream.training.batches import StreamBatches

    base = WindowBatches if kind == "windows" else StreamBatches

    class Recording(base):
        seen = []

        def __getitem__(self, index):
            self.seen.append(self.epoch)
            return super().__getitem__(index)

    ids = np.random.default_rng(1).integers(0, 36, 200).astype(np.uint8)
    if kind == "windows":
        data = Recording(ids, range(100), 50, 16, 36, shuffle=True, seed=1, epoch=2)
        inputs = keras.Input((16, 36))
        loss = "categorical_crossentropy"
    else:
        data = Recording(ids, 2, 16, 36, seed=1, epoch=2)          # 5 batches an epoch
        inputs = keras.Input(batch_shape=(2, 16, 36))
        loss = "sparse_categorical_crossentropy"
    outputs = keras.layers.Dense(36, activation="softmax")(
        keras.layers.Flatten()(inputs) if kind == "windows" else inputs)
    model = keras.Model(inputs, outputs)
    model.compile(loss=loss, optimizer="sgd", steps_per_execution=steps_per_execution)
    Recording.seen.clear()
    model.fit(data, epochs=4, initial_epoch=2, verbose=0, shuffle=False,
              callbacks=[data.epoch_callback()])
    # (Keras may also read batch 0 up front to learn the shapes.)
    per_epoch = len(data)
    assert data.seen[-2 * per_epoch:] == [2] * per_epoch + [3] * per_epoch
    assert set(data.seen) == {2, 3}
