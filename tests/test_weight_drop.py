"""Weight drop (`--weight-drop`): Keras's LSTM computes with the masked recurrent
kernel, once per batch, the gradient reaches the kernel through the mask, and the
masks come from (seed, step, layer) alone."""
import keras
import numpy as np
import pytest
from charstream.model import build_stream_model, build_training_model, lstm_layers
from charstream.training.weight_drop import drop_recurrent_weights, recurrent_mask


def _masked(weights, rate, seed, step):
    """`weights` (a stream model's, 2 LSTMs) with the recurrent kernels masked."""
    out = list(weights)
    for layer, index in enumerate((1, 4)):  # [kernel, recurrent, bias] per LSTM
        out[index] = weights[index] * recurrent_mask(rate, seed, step, layer,
                                                     weights[index].shape).numpy()
    return out


def _pair(rate=0.3, seed=7):
    """A stream model (2 LSTMs, input dropout) and a weight-drop twin of it."""
    keras.utils.set_random_seed(0)
    plain = build_stream_model(4, 12, units=8, layers=2, dropout=0.2)
    dropped = build_stream_model(4, 12, units=8, layers=2, dropout=0.2)
    dropped.set_weights(plain.get_weights())
    drop_recurrent_weights(dropped, rate, seed)
    return plain, dropped


def _batch(seed=0):
    import tensorflow as tf

    ids = np.random.default_rng(seed).integers(0, 36, (4, 12))
    return tf.constant(np.eye(36, dtype="float32")[ids])   # (4, 12, 36) one-hot


def _same_input_masks(step, *models):
    for model in models:
        for layer in lstm_layers(model):
            layer.cell.seed_generator.state.assign([step, 0])


def test_weight_drop_masks_the_recurrent_kernel_once_per_batch():
    plain, dropped = _pair()
    x = _batch()
    weights = plain.get_weights()
    for step in (0, 5):  # the second batch starts from the carried state
        dropped.optimizer.iterations.assign(step)
        _same_input_masks(step, plain, dropped)
        ours = dropped(x, training=True).numpy()
        # One mask for every stream and step of the batch: the plain LSTM with the
        # masked kernel computes the same outputs, bit for bit, and carries the
        # same state.
        plain.set_weights(_masked(weights, 0.3, 7, step))
        np.testing.assert_array_equal(plain(x, training=True).numpy(), ours)
        plain.set_weights(weights)
        for a, b in zip(lstm_layers(plain), lstm_layers(dropped)):
            for sa, sb in zip(a.states, b.states):
                np.testing.assert_array_equal(sa.numpy(), sb.numpy())
        # Nothing is dropped outside training, and the kernels are variables again.
        np.testing.assert_array_equal(dropped(x).numpy(), plain(x).numpy())
        for layer in lstm_layers(dropped):
            assert layer.cell.recurrent_kernel is layer.trainable_weights[1]


def test_the_gradient_reaches_the_kernel_through_the_mask():
    import tensorflow as tf

    plain, dropped = _pair()
    x = _batch(1)
    plain.set_weights(_masked(plain.get_weights(), 0.3, 7, 0))
    weights = np.random.default_rng(2).normal(size=(4, 12, 36)).astype("float32")
    grads = []
    for model in (plain, dropped):
        _same_input_masks(0, model)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True) * weights)
        grads.append([g.numpy() for g in tape.gradient(loss, model.trainable_weights)])
    masks = [recurrent_mask(0.3, 7, 0, layer, (8, 32)).numpy() for layer in (0, 1)]
    for index, (ours, theirs) in enumerate(zip(grads[1], grads[0])):
        if index in (1, 4):  # d loss / d kernel = d loss / d (masked kernel) * mask
            theirs = theirs * masks[index // 3]
        np.testing.assert_array_equal(ours, theirs)
    assert (grads[1][1][masks[0] == 0] == 0).all() and grads[1][1].any()


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


@pytest.mark.parametrize("rate", [1.0, 0, -0.1])
def test_bad_weight_drops(rate):
    with pytest.raises(ValueError, match=rf"weight_drop must be in \(0, 1\), got {rate}"):
        drop_recurrent_weights(build_training_model(units=4), rate, 0)
