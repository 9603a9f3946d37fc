"""Weight drop (`--weight-drop`): the whole-sequence LSTM it trains with computes
Keras's LSTM and its gradients, the mask covers the recurrent kernel once per batch,
and the masks come from (seed, step, layer) alone."""
import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charstream.model import build_stream_model, build_training_model, lstm_layers
from charstream.training.weight_drop import (drop_recurrent_weights, lstm_sequence,
                                             recurrent_mask)


@settings(max_examples=6, deadline=None)
@given(batch=st.integers(1, 5), steps=st.integers(1, 7), inputs=st.integers(1, 6),
       units=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_lstm_sequence_computes_keras_lstm_and_its_gradients(batch, steps, inputs, units, seed):
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    x, h0, c0, kernel, recurrent, bias = [tf.constant(rng.normal(size=s).astype("float32"))
                                          for s in ((batch, steps, inputs), (batch, units),
                                                    (batch, units), (inputs, 4 * units),
                                                    (units, 4 * units), (4 * units,))]
    weights = rng.normal(size=(batch, steps, units)).astype("float32")

    def loss_of(outputs, h, c):  # every output reaches the loss: the sequence, h and c
        return tf.reduce_sum(outputs * weights) + tf.reduce_sum(h) + 2 * tf.reduce_sum(c)

    # The reference: Keras's own LSTM layer (its cell, step by step).
    layer = keras.layers.LSTM(units, return_sequences=True, return_state=True)
    layer.build(x.shape)
    layer.set_weights([kernel.numpy(), recurrent.numpy(), bias.numpy()])
    with tf.GradientTape() as tape:
        tape.watch([x, h0, c0])
        theirs = layer(x, initial_state=[h0, c0])
        theirs_grads = tape.gradient(loss_of(*theirs), [x, h0, c0, *layer.trainable_weights])
    args = [x, h0, c0, kernel, recurrent, bias]
    with tf.GradientTape() as tape:
        tape.watch(args)
        ours = lstm_sequence(*args)
        ours_grads = tape.gradient(loss_of(*ours), args)
    for a, b in zip([*ours, *ours_grads], [*theirs, *theirs_grads]):
        np.testing.assert_allclose(a.numpy(), np.asarray(b), rtol=2e-5, atol=2e-5)


def _masked(weights, rate, seed, step):
    """`weights` (a stream model's, 2 LSTMs) with the recurrent kernels masked."""
    out = list(weights)
    for layer, index in enumerate((1, 4)):  # [kernel, recurrent, bias] per LSTM
        out[index] = weights[index] * recurrent_mask(rate, seed, step, layer,
                                                     weights[index].shape).numpy()
    return out


def test_weight_drop_masks_the_recurrent_kernel_once_per_batch():
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    plain = build_stream_model(4, 12, units=8, layers=2, dropout=0.2)
    dropped = build_stream_model(4, 12, units=8, layers=2, dropout=0.2)
    dropped.set_weights(plain.get_weights())
    drop_recurrent_weights(dropped, 0.3, 7)
    x = tf.constant(np.eye(36, dtype="float32")[np.random.default_rng(0).integers(0, 36, (4, 12))])
    weights = plain.get_weights()
    for step in (0, 5):  # the second batch starts from the carried state
        dropped.optimizer.iterations.assign(step)
        for model in (plain, dropped):  # the same input-dropout masks in both
            for layer in lstm_layers(model):
                layer.cell.seed_generator.state.assign([step, 0])
        ours = dropped(x, training=True).numpy()
        # One mask for every stream and step of the batch: the plain LSTM with the
        # masked kernel computes the same outputs and carries the same state.
        plain.set_weights(_masked(weights, 0.3, 7, step))
        np.testing.assert_allclose(plain(x, training=True).numpy(), ours, atol=1e-6)
        plain.set_weights(weights)
        for a, b in zip(lstm_layers(plain), lstm_layers(dropped)):
            for sa, sb in zip(a.states, b.states):
                np.testing.assert_allclose(sa.numpy(), sb.numpy(), atol=1e-6)
        # Nothing is dropped outside training.
        np.testing.assert_allclose(dropped(x).numpy(), plain(x).numpy(), atol=1e-6)


def test_the_masks_come_from_seed_step_and_layer():
    mask = recurrent_mask(0.25, 3, 10, 0, (64, 256)).numpy()
    np.testing.assert_array_equal(mask, recurrent_mask(0.25, 3, 10, 0, (64, 256)).numpy())
    assert set(np.unique(mask)) == {0.0, np.float32(1 / 0.75)}
    assert abs((mask == 0).mean() - 0.25) < 0.01
    for other in ((4, 10, 0), (3, 11, 0), (3, 10, 1)):  # seed, step, layer
        assert not np.array_equal(mask, recurrent_mask(0.25, *other, (64, 256)).numpy())


def test_the_model_stays_keras_lstms(tmp_path):
    model = build_training_model(units=8)
    drop_recurrent_weights(model, 0.5, 0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True, compile=False)
    assert [type(layer) for layer in lstm_layers(loaded)] == [keras.layers.LSTM]


@pytest.mark.parametrize("kwargs, rate, match", [
    ({}, 1.0, r"weight_drop must be in \(0, 1\), got 1.0"),
    ({}, 0, r"weight_drop must be in \(0, 1\), got 0"),
    ({"recurrent_dropout": 0.1}, 0.2, "lstm_1: weight drop needs .* no recurrent dropout"),
])
def test_bad_weight_drops(kwargs, rate, match):
    with pytest.raises(ValueError, match=match):
        drop_recurrent_weights(build_training_model(units=4, **kwargs), rate, 0)
