"""Group `batches`: one training batch, and training throughput of the pipelines."""
import numpy as np
import pytest

from charstream import _reference as ref
from charstream import onehot_batch

from conftest import record_rate


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


@pytest.fixture(scope="module")
def model():
    import keras

    from charstream.model import build_training_model

    keras.utils.set_random_seed(0)
    return build_training_model()


@pytest.mark.benchmark(group="batches: training throughput (400 steps of 128)")
@pytest.mark.parametrize("name", ["memory-lean-PyDataset", "in-memory-model.fit"])
def test_training_throughput(benchmark, corpus_ids, model, name):
    from charstream.batches import WindowBatches

    n = STEPS * BATCH
    if name == "memory-lean-PyDataset":
        data = WindowBatches(corpus_ids, range(n), BATCH, 16, 36, shuffle=True)
        fn = lambda: model.fit(data, epochs=1, verbose=0, shuffle=False)  # data shuffles itself
    else:
        from charstream import onehot_windows

        X, Y = onehot_windows(corpus_ids, stop=n)
        fn = lambda: model.fit(X, Y, batch_size=BATCH, epochs=1, shuffle=True, verbose=0)
    history = benchmark.pedantic(fn, rounds=3, warmup_rounds=1)
    record_rate(benchmark, n, "samples/s")
    assert np.isfinite(history.history["loss"][0])
