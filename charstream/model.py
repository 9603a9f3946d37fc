"""The char-LSTM: the 16-step training model and its stateful inference copy.

Nothing here knows about files or the command line.
"""
from __future__ import annotations

import math

import keras


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _fraction(value, name: str) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


def check_architecture(seq_len=16, depth=36, units=128, layers=1, dropout=0.0,
                       recurrent_dropout=0.0, learning_rate=1e-3) -> None:
    """Raise `ValueError` naming the first out-of-range model setting."""
    _positive_int(seq_len, "seq_len")
    _positive_int(depth, "depth")
    if depth > 256:
        raise ValueError(f"depth must be at most 256, got {depth}")
    _positive_int(units, "units")
    _positive_int(layers, "layers")
    _fraction(dropout, "dropout")
    _fraction(recurrent_dropout, "recurrent_dropout")
    if (not isinstance(learning_rate, (int, float)) or not math.isfinite(learning_rate)
            or learning_rate <= 0):
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}")


def build_training_model(seq_len: int = 16, depth: int = 36, units: int = 128,
                         layers: int = 1, dropout: float = 0.0,
                         recurrent_dropout: float = 0.0,
                         learning_rate: float = 1e-3) -> keras.Model:
    """The tutorial's model: `LSTM(units)` over `seq_len` one-hot steps, then softmax.

    With the defaults it has 89,124 parameters (84,480 in the LSTM, 4,644 in the
    Dense). The LSTMs keep Keras's cuDNN-eligible defaults (tanh, sigmoid, no
    recurrent dropout unless asked), so a GPU gets the fused kernel.

    Args:
        seq_len: steps per window.
        depth: vocabulary size (input and output width).
        units: LSTM width.
        layers: stacked LSTMs; all but the last return sequences.
        dropout: input dropout of each LSTM, in `[0, 1)`.
        recurrent_dropout: recurrent dropout of each LSTM, in `[0, 1)` (disables
            cuDNN when non-zero).
        learning_rate: Adam's step size (gradients are clipped to `[-1, 1]`).

    Returns:
        A compiled `keras.Model` mapping `(batch, seq_len, depth)` to
        `(batch, depth)` probabilities.

    Raises:
        ValueError: for any setting out of range.
    """
    check_architecture(seq_len, depth, units, layers, dropout, recurrent_dropout,
                       learning_rate)
    inputs = keras.Input((seq_len, depth), name="chars")
    x = inputs
    for k in range(layers):
        x = keras.layers.LSTM(
            units, return_sequences=k < layers - 1, dropout=dropout,
            recurrent_dropout=recurrent_dropout, name=f"lstm_{k + 1}")(x)
    outputs = keras.layers.Dense(depth, activation="softmax", name="next_char")(x)
    model = keras.Model(inputs, outputs, name="charstream_train")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate, clipvalue=1.0),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def lstm_layers(model: keras.Model) -> list:
    """The model's LSTM layers, bottom first."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.LSTM)]


def build_inference_model(train_model: keras.Model, batch_size: int = 1) -> keras.Model:
    """A stateful copy of `train_model` that reads one character per call.

    The same layers, rebuilt on `keras.Input(batch_shape=(batch_size, 1, depth))`
    with `stateful=True` on every LSTM, then given the training model's weights.
    Call `reset_states(model)` before each new text.

    Args:
        train_model: a model from `build_training_model` (or loaded from a run).
        batch_size: independent streams advanced together.

    Returns:
        A `keras.Model` mapping `(batch_size, 1, depth)` to `(batch_size, depth)`.

    Raises:
        ValueError: if `train_model` is not LSTMs followed by one softmax Dense.
    """
    _positive_int(batch_size, "batch_size")
    lstms = lstm_layers(train_model)
    dense = [layer for layer in train_model.layers if isinstance(layer, keras.layers.Dense)]
    if not lstms or len(dense) != 1 or train_model.layers[-1] is not dense[0]:
        raise ValueError(
            "expected a charstream training model (LSTM layers then one Dense), got "
            f"layers {[type(layer).__name__ for layer in train_model.layers]}")
    depth = train_model.input_shape[-1]
    inputs = keras.Input(batch_shape=(batch_size, 1, depth), name="char")
    x = inputs
    for k, lstm in enumerate(lstms):
        x = keras.layers.LSTM(
            lstm.units, stateful=True, return_sequences=k < len(lstms) - 1,
            name=lstm.name)(x)
    outputs = keras.layers.Dense(dense[0].units, activation="softmax", name=dense[0].name)(x)
    model = keras.Model(inputs, outputs, name="charstream_stream")
    model.set_weights(train_model.get_weights())
    return model


def reset_states(model: keras.Model) -> None:
    """Zero every stateful LSTM's state (Keras 3 models have no `reset_states`)."""
    for layer in lstm_layers(model):
        layer.reset_state()
