"""The unrolled LSTM of stream-mode training (`charstream.training.unrolled`)
computes Keras's LSTM: the same outputs and state bit for bit, dropout included,
and the same gradients up to the order of one matmul's sums."""
import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charstream.model import build_stream_model, lstm_layers
from charstream.training.unrolled import transposed, unroll_lstms


def _layers(units, dropout, shape, weights):
    """Keras's unrolled LSTM and a twin that runs `lstm_steps`, same weights."""
    layers = []
    for _ in range(2):
        layer = keras.layers.LSTM(units, return_sequences=True, return_state=True,
                                  unroll=True, dropout=dropout, seed=1)
        layer.build(shape)
        layer.set_weights(weights)
        layers.append(layer)
    holder = keras.Sequential([keras.Input(batch_shape=shape), layers[1]])
    unroll_lstms(holder, fused=False)   # TensorFlow's ops; the fused op: test_fused.py
    assert layers[1].inner_loop.__qualname__.startswith("lstm_inner_loop")
    return layers


@settings(max_examples=8, deadline=None)
@given(batch=st.integers(1, 5), steps=st.integers(1, 7), inputs=st.integers(1, 6),
       units=st.integers(1, 6), dropout=st.sampled_from([0.0, 0.3]),
       seed=st.integers(0, 2**16))
def test_lstm_steps_computes_keras_lstm_and_its_gradients(batch, steps, inputs, units, dropout,
                                                          seed):
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    x, h0, c0 = [tf.constant(rng.normal(size=s).astype("float32"))
                 for s in ((batch, steps, inputs), (batch, units), (batch, units))]
    weights = [rng.normal(size=s).astype("float32")
               for s in ((inputs, 4 * units), (units, 4 * units), (4 * units,))]
    loss_weights = rng.normal(size=(batch, steps, units)).astype("float32")
    results = []
    for layer in _layers(units, dropout, x.shape, weights):
        layer.cell.seed_generator.state.assign([seed, 0])   # the same dropout masks
        with tf.GradientTape() as tape:
            tape.watch([x, h0, c0])
            outputs, h, c = layer(x, initial_state=[h0, c0], training=True)
            # every output reaches the loss: the sequence, h and c
            loss = tf.reduce_sum(outputs * loss_weights) + tf.reduce_sum(h) + 2 * tf.reduce_sum(c)
        grads = tape.gradient(loss, [x, h0, c0, *layer.trainable_weights])
        results.append(([outputs, h, c], grads))
    (keras_out, keras_grads), (ours_out, ours_grads) = results
    for a, b in zip(ours_out, keras_out):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(ours_grads, keras_grads):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_transposed_is_the_transpose():
    matrix = np.arange(12, dtype="float32").reshape(3, 4)
    np.testing.assert_array_equal(transposed(matrix).numpy(), matrix.T)


@pytest.mark.parametrize("fused, batch", [(False, 4), (True, 16)])
def test_a_stream_model_trains_through_it_and_stays_keras(tmp_path, fused, batch):
    """TensorFlow's ops, and the fused op (`charstream.training.fused`; 16 streams
    are split in shards where there are cores): two LSTM layers train like Keras's
    own loop and save as plain LSTMs."""
    if fused:
        from charstream.training.fused import library

        assert library() is not None, "the fused op did not build (see the warning)"
    keras.utils.set_random_seed(0)
    model = build_stream_model(batch, 8, units=8, layers=2, unroll=True)
    twin = build_stream_model(batch, 8, units=8, layers=2, unroll=True)
    twin.set_weights(model.get_weights())
    unroll_lstms(twin, fused=fused)
    ids = np.random.default_rng(0).integers(0, 36, (batch, 9))
    x, y = np.eye(36, dtype="float32")[ids[:, :-1]], ids[:, 1:]
    for m in (model, twin):
        m.fit(x, y, epochs=2, batch_size=batch, verbose=0, shuffle=False)
    for a, b in zip(twin.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(twin.get_weights()[1], build_stream_model(
        batch, 8, units=8, layers=2).get_weights()[1])   # it trained
    twin.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True, compile=False)
    assert [type(layer) for layer in lstm_layers(loaded)] == [keras.layers.LSTM] * 2
    np.testing.assert_array_equal(loaded.get_weights()[1], twin.get_weights()[1])


@pytest.mark.parametrize("kwargs", [dict(unroll=False), dict(go_backwards=True),
                                    dict(recurrent_dropout=0.1)])
def test_layers_it_does_not_compute_keep_keras_loop(kwargs):
    layer = keras.layers.LSTM(4, **kwargs)
    model = keras.Sequential([keras.Input(batch_shape=(2, 3, 5)), layer])
    before = layer.inner_loop
    unroll_lstms(model)
    assert layer.inner_loop == before


@pytest.mark.parametrize("mode, ours", [("stream", True), ("windows", False)])
def test_stream_mode_trains_through_it(mode, ours):
    import tensorflow as tf

    from charstream.config import TrainConfig
    from charstream.training.distribute import Cluster
    from charstream.training.fit import build_model

    config = TrainConfig(mode=mode, units=8, batch_size=4, unroll=True)
    model = build_model(config, 36, None, Cluster(tf.distribute.get_strategy()))
    loops = [layer.inner_loop.__qualname__ for layer in lstm_layers(model)]
    assert [loop.startswith("lstm_inner_loop") for loop in loops] == [ours]
