"""The training model's shape and the stateful inference copy's equivalence."""
import numpy as np
import pytest

from charstream.model import (build_inference_model, build_training_model, lstm_layers,
                              reset_states)


def test_tutorial_model_has_89124_parameters():
    model = build_training_model()
    assert model.count_params() == 89_124
    lstm, dense = lstm_layers(model)[0], model.layers[-1]
    assert lstm.count_params() == 84_480 and dense.count_params() == 4_644
    assert model.input_shape == (None, 16, 36) and model.output_shape == (None, 36)
    # cuDNN-eligible defaults.
    assert lstm.activation.__name__ == "tanh"
    assert lstm.recurrent_activation.__name__ == "sigmoid"
    assert lstm.recurrent_dropout == 0
    assert model.optimizer.clipvalue == 1.0
    assert model.loss == "categorical_crossentropy"


def test_stacked_layers():
    model = build_training_model(seq_len=8, depth=20, units=10, layers=3)
    lstms = lstm_layers(model)
    assert [l.return_sequences for l in lstms] == [True, True, False]
    per = lambda i: 4 * (10 * (i + 10) + 10)
    assert model.count_params() == per(20) + 2 * per(10) + (10 * 20 + 20)


@pytest.mark.parametrize("kwargs, match", [
    (dict(units=0), "units must be a positive integer, got 0"),
    (dict(layers=0), "layers"),
    (dict(seq_len=-1), "seq_len"),
    (dict(depth=300), "depth must be at most 256"),
    (dict(dropout=-0.1), r"dropout must be in \[0, 1\), got -0.1"),
    (dict(recurrent_dropout=1.0), "recurrent_dropout"),
    (dict(output_dropout=1.5), r"output_dropout must be in \[0, 1\), got 1.5"),
    (dict(learning_rate=0), "learning_rate"),
])
def test_bad_architecture(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_training_model(**kwargs)


def _randomize(model, seed):
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in model.get_weights()])


def _stream_probs(stream_model, ids, depth):
    reset_states(stream_model)
    for i in ids:
        x = np.zeros((1, 1, depth), dtype="float32")
        x[0, 0, i] = 1
        out = stream_model(x, training=False)
    return np.asarray(out)[0]


@pytest.mark.parametrize("depth, units, layers", [(36, 128, 1), (7, 5, 2), (60, 33, 3)])
def test_inference_copy_matches_windowed_model_on_random_weights(depth, units, layers):
    train_model = build_training_model(depth=depth, units=units, layers=layers)
    _randomize(train_model, depth)
    stream_model = build_inference_model(train_model)
    assert stream_model.input_shape == (1, 1, depth)
    assert all(l.stateful for l in lstm_layers(stream_model))
    rng = np.random.default_rng(1)
    for _ in range(3):
        ids = rng.integers(0, depth, 16)
        window = np.eye(depth, dtype="float32")[ids][None]
        expected = np.asarray(train_model(window, training=False))[0]
        got = _stream_probs(stream_model, ids, depth)
        assert np.max(np.abs(got - expected)) <= 1e-5


def test_output_dropout_drops_the_same_units_at_every_step():
    import keras

    from charstream.model import build_stream_model

    model = build_stream_model(batch_size=4, seq_len=6, depth=5, units=8, layers=2,
                               output_dropout=0.5)
    drops = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert [d.name for d in drops] == ["lstm_1_out", "lstm_2_out"]
    ones = np.ones((4, 6, 8), "float32")
    kept = np.asarray(drops[0](ones, training=True)) != 0            # (4, 6, 8) bool
    assert (kept == kept[:, :1]).all() and 0 < kept.mean() < 1       # one mask per sequence
    np.testing.assert_array_equal(drops[0](ones, training=False), ones)
    # Without weights of their own, they change nothing the copies take.
    plain = build_stream_model(batch_size=4, seq_len=6, depth=5, units=8, layers=2)
    assert [w.shape for w in model.get_weights()] == [w.shape for w in plain.get_weights()]
    _randomize(model, 2)
    stream_model = build_inference_model(model)
    assert not any(isinstance(l, keras.layers.Dropout) for l in stream_model.layers)


def test_reset_returns_to_the_zero_state():
    train_model = build_training_model(depth=5, units=4)
    _randomize(train_model, 3)
    stream_model = build_inference_model(train_model)
    a = _stream_probs(stream_model, [1, 2, 3], 5)
    b = _stream_probs(stream_model, [1, 2, 3], 5)  # _stream_probs resets first
    np.testing.assert_array_equal(a, b)


def test_inference_copy_rejects_other_models():
    import keras

    inputs = keras.Input((4, 3))
    other = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match="expected a charstream training model"):
        build_inference_model(other)
