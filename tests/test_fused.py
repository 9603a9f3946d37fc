"""The fused LSTM op (`charstream.training.fused`, `lstm_op.cc`) computes Keras's
LSTM: outputs, state and gradients within float32 rounding of Keras's (its matrix
products sum in another order), for any split of the streams into shards; it
refuses bad shapes with an error naming the input; it builds once and is reused;
and without a compiler training falls back to TensorFlow's ops."""
import re

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charstream.model import build_stream_model
from charstream.training import fused, unrolled


@pytest.fixture(scope="module")
def ops():
    library = fused.library()
    assert library is not None, "the fused op did not build (see the warning)"
    return library


def _cell(inputs, units, dropout, weights):
    cell = keras.layers.LSTMCell(units, dropout=dropout, seed=1)
    cell.build((None, inputs))
    cell.set_weights(weights)
    return cell


@settings(max_examples=12, deadline=None)
@given(batch=st.integers(1, 9), steps=st.integers(1, 6), inputs=st.integers(1, 5),
       units=st.integers(1, 9), shards=st.integers(1, 4), dropout=st.sampled_from([0.0, 0.3]),
       one_hot=st.booleans(), seed=st.integers(0, 2**16))
def test_it_computes_keras_lstm_and_its_gradients(ops, batch, steps, inputs, units, shards,
                                                  dropout, one_hot, seed):
    """Dense inputs (a second layer's) and one-hot ones (the op's row-picking path)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    x, h0, c0 = [tf.constant(rng.normal(size=s).astype("float32"))
                 for s in ((batch, steps, inputs), (batch, units), (batch, units))]
    if one_hot:
        x = tf.one_hot(rng.integers(0, inputs, (batch, steps)), inputs)
    weights = [rng.normal(size=s).astype("float32")
               for s in ((inputs, 4 * units), (units, 4 * units), (4 * units,))]
    loss_weights = rng.normal(size=(batch, steps, units)).astype("float32")
    results = []
    for run in (lambda cell: unrolled.lstm_steps(cell, x, h0, c0, True),   # Keras's arithmetic
                lambda cell: fused.lstm_steps(ops, cell, x, h0, c0, True, shards)):
        cell = _cell(inputs, units, dropout, weights)
        cell.seed_generator.state.assign([seed, 0])   # the same dropout mask
        with tf.GradientTape() as tape:
            tape.watch([x, h0, c0])
            outputs, h, c = run(cell)
            # every output reaches the loss: the sequence, the last h and c
            loss = tf.reduce_sum(outputs * loss_weights) + tf.reduce_sum(h) + 2 * tf.reduce_sum(c)
        grads = tape.gradient(loss, [x, h0, c0, *cell.trainable_weights])
        results.append([outputs, h, c, *grads])
    for ours, keras_ in zip(results[1], results[0]):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(keras_), rtol=1e-5, atol=2e-5)


def _op_inputs(rng, batch=32, steps=16, inputs=36, units=16):
    """x (one-hot), h0, c0, kernel, recurrent, bias for the forward op."""
    import tensorflow as tf

    x = tf.one_hot(rng.integers(0, inputs, (batch, steps)), inputs)
    return [x] + [tf.constant(rng.normal(size=s).astype("float32")) for s in
                  ((batch, units), (batch, units), (inputs, 4 * units), (units, 4 * units),
                   (4 * units,))]


def test_the_same_inputs_give_the_same_bits(ops):
    import tensorflow as tf

    rng = np.random.default_rng(3)
    x, h0, c0, kernel, recurrent, bias = _op_inputs(rng)
    dh = tf.constant(rng.normal(size=(32, 16, 16)).astype("float32"))
    runs = []
    for _ in range(3):
        h, c, gates = ops.charstream_lstm_forward(x, h0, c0, kernel, recurrent, bias, shards=2)
        back = ops.charstream_lstm_backward(x, kernel, recurrent, bias, gates, c, h, h0, c0,
                                            dh, c0, shards=2)
        runs.append([t.numpy() for t in (h, c, *back)])
    for run in runs[1:]:
        for a, b in zip(run, runs[0]):
            np.testing.assert_array_equal(a, b)


def test_without_the_input_gradient_the_rest_is_the_same(ops):
    import tensorflow as tf

    rng = np.random.default_rng(4)
    x, h0, c0, kernel, recurrent, bias = _op_inputs(rng, batch=5, steps=3, inputs=6, units=4)
    h, c, gates = ops.charstream_lstm_forward(x, h0, c0, kernel, recurrent, bias)
    dh = tf.ones_like(h)
    both = [ops.charstream_lstm_backward(x, kernel, recurrent, bias, gates, c, h, h0, c0, dh,
                                         c0, input_gradient=flag) for flag in (True, False)]
    assert both[0][0].shape == x.shape and both[1][0].shape == (0, 0, 0)
    for a, b in zip(both[0][1:], both[1][1:]):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("shapes, message", [
    (((2, 3, 5), (2, 4), (2, 4), (5, 16), (4, 12), (16,)),
     "recurrent: expected shape (units, 4 units)"),
    (((2, 0, 5), (2, 4), (2, 4), (5, 16), (4, 16), (16,)),
     "x: expected shape (batch, steps >= 1, inputs)"),
    (((2, 3, 5), (2, 4), (2, 4), (6, 16), (4, 16), (16,)), "kernel: expected shape (5, 16)"),
    (((2, 3, 5), (2, 4), (2, 4), (5, 16), (4, 16), (12,)), "bias: expected shape (16)"),
    (((2, 3, 5), (3, 4), (2, 4), (5, 16), (4, 16), (16,)), "h0: expected shape (2, 4)"),
    (((2, 3, 5), (2, 4), (2, 5), (5, 16), (4, 16), (16,)), "c0: expected shape (2, 4)"),
])
def test_bad_shapes_are_refused_by_name(ops, shapes, message):
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
        ops.charstream_lstm_forward(*[tf.zeros(shape) for shape in shapes])


def test_the_backward_op_refuses_a_gradient_of_another_shape(ops):
    import tensorflow as tf

    x, h0, c0, kernel, recurrent, bias = [tf.zeros(s) for s in
                                          ((2, 3, 5), (2, 4), (2, 4), (5, 16), (4, 16), (16,))]
    h, c, gates = ops.charstream_lstm_forward(x, h0, c0, kernel, recurrent, bias)
    message = re.escape("dh: expected shape (2, 3, 4)")
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        ops.charstream_lstm_backward(x, kernel, recurrent, bias, gates, c, h, h0, c0,
                                     tf.zeros((2, 2, 4)), c0)


def test_it_is_built_once_and_reused(ops):
    first = fused.build()
    stamp = first.stat().st_mtime_ns
    assert fused.build() == first and first.stat().st_mtime_ns == stamp
    assert first.parent == fused.cache_dir()


def test_a_failed_build_says_which_compiler_and_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "false")   # on PATH, exits 1
    with pytest.raises(RuntimeError, match=re.escape("false failed to build lstm_op.cc (exit 1)")):
        fused.build(tmp_path)
    assert list(tmp_path.iterdir()) == []   # no half-written library, no temporary folder


def test_without_a_compiler_training_falls_back_to_tensorflow(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(RuntimeError, match=re.escape("no C++ compiler 'no-such-compiler-here'")):
        fused.build(tmp_path)
    fused.library.cache_clear()
    monkeypatch.setenv("CHARSTREAM_CACHE", str(tmp_path))   # nothing built there
    try:
        with pytest.warns(RuntimeWarning, match="fused LSTM op is unavailable"):
            assert fused.library() is None
        model = build_stream_model(2, 3, units=4, unroll=True)
        unrolled.unroll_lstms(model)   # TensorFlow's ops: it still trains
        ids = np.random.default_rng(0).integers(0, 36, (2, 4))
        model.fit(np.eye(36, dtype="float32")[ids[:, :-1]], ids[:, 1:], verbose=0)
    finally:
        fused.library.cache_clear()   # the next caller builds (or finds) the real one


def test_shards_follow_the_cores_and_the_batch():
    assert fused.default_shards(1) == 1
    assert fused.default_shards(7) == 1   # fewer than 8 streams a shard is not worth a thread
    assert 1 <= fused.default_shards(64) <= 2


@pytest.mark.parametrize("flag", [True, False])
def test_fused_lstm_setting_chooses_the_op(monkeypatch, flag):
    """`--no-fused-lstm` (`TrainConfig.fused_lstm`) keeps TensorFlow's ops."""
    import tensorflow as tf

    from charstream.config import TrainConfig
    from charstream.training.distribute import Cluster
    from charstream.training.fit import build_model

    asked = []
    monkeypatch.setattr(fused, "library", lambda: asked.append(True))
    config = TrainConfig(mode="stream", units=8, batch_size=4, unroll=True, fused_lstm=flag)
    build_model(config, 36, None, Cluster(tf.distribute.get_strategy()))
    assert asked == ([True] if flag else [])
