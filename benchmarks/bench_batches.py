"""Group `batches`: one training batch, and training throughput of the pipelines."""
import numpy as np
import pytest

from charstream import _reference as ref
from charstream import onehot_batch

from _shared import record_rate


@pytest.mark.benchmark(group="batches: build one shuffled batch")
@pytest.mark.parametrize("batch", [32, 256])
@pytest.mark.parametrize("name", ["cython-onehot_batch", "numpy-fancy-index"])
def test_build_batch(benchmark, corpus_ids, name, batch):
    starts = np.random.default_rng(batch).integers(0, len(corpus_ids) - 17, batch)
    fn = {"cython-onehot_batch": onehot_batch, "numpy-fancy-index": ref.onehot_batch_numpy}[name]
    X, Y = benchmark(fn, corpus_ids, starts)
    record_rate(benchmark, batch, "windows/s")
    Xr, Yr = ref.onehot_batch(corpus_ids, starts)
    np.testing.assert_array_equal(X, Xr)
    np.testing.assert_array_equal(Y, Yr)


STEPS, BATCH = 400, 128
# Both contenders train the same windows in the same order from the same weights;
# only where the one-hot batch comes from differs, so their mean losses agree to
# float rounding (measured: identical); a contender that trained anything else
# would be off by far more.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def initial_weights():
    import keras

    from charstream.model import build_training_model

    keras.utils.set_random_seed(0)
    return build_training_model().get_weights()


class Run:
    """A fresh windowed model for one contender (the same initial weights as the
    other), restored to them and to a fresh optimizer before every round."""

    def __init__(self, weights, data):
        from charstream.model import build_training_model

        self.model = build_training_model(learning_rate=2e-3, steps_per_execution=32)
        self.weights, self.data = weights, data
        self.model.optimizer.build(self.model.trainable_variables)
        self.fresh = [v.numpy() for v in self.model.optimizer.variables]
        self.train()  # traces the graph (untimed)

    def train(self) -> float:
        self.model.set_weights(self.weights)
        for v, value in zip(self.model.optimizer.variables, self.fresh):
            v.assign(value)
        return self.model.fit(**self.data, epochs=1, verbose=0, shuffle=False).history["loss"][0]


@pytest.fixture(scope="module")
def order(corpus_ids):
    """Epoch 0's shuffled windows: what both contenders train on, in this order."""
    from charstream.training.batches import WindowBatches

    batches = WindowBatches(corpus_ids, range(STEPS * BATCH), BATCH, 16, 36, shuffle=True)
    return batches, np.concatenate([batches.batch_starts(b) for b in range(len(batches))])


def _in_memory(corpus_ids, starts) -> dict:
    """The whole epoch one-hot in memory (float32, what the model reads)."""
    X, Y = onehot_batch(corpus_ids, starts)
    return {"x": X.astype(np.float32), "y": Y.astype(np.float32), "batch_size": BATCH}


@pytest.fixture(scope="module")
def reference_loss(corpus_ids, initial_weights, order):
    """The in-memory contender's mean loss, from an untimed run of its own."""
    return Run(initial_weights, _in_memory(corpus_ids, order[1])).train()


@pytest.mark.benchmark(group="batches: training throughput (400 steps of 128)")
@pytest.mark.parametrize("name", ["memory-lean-PyDataset", "in-memory-model.fit"])
def test_training_throughput(benchmark, corpus_ids, initial_weights, order, reference_loss,
                             name):
    batches, starts = order
    if name == "memory-lean-PyDataset":
        # The PyDataset builds each batch when Keras asks; the epoch callback keeps
        # it on epoch 0's order.
        data = {"x": batches, "callbacks": [batches.epoch_callback()]}
    else:
        data = _in_memory(corpus_ids, starts)
    loss = benchmark.pedantic(Run(initial_weights, data).train, rounds=3)
    record_rate(benchmark, STEPS * BATCH, "samples/s")
    benchmark.extra_info["mean loss"] = round(loss, 6)
    assert loss == pytest.approx(reference_loss, abs=TOLERANCE)
