"""The char-LSTM: the windowed and stream training models, the stateful inference
copy, and the weights read out of any of them.

Nothing here knows about files or the command line.
"""
from __future__ import annotations

import keras

from . import _checks


def check_architecture(seq_len=16, depth=36, units=128, layers=1, dropout=0.0,
                       recurrent_dropout=0.0, learning_rate=1e-3, output_dropout=0.0) -> None:
    """Raise `ValueError` naming the first out-of-range model setting."""
    _checks.positive_int(seq_len, "seq_len")
    _checks.positive_int(depth, "depth")
    if depth > 256:
        raise ValueError(f"depth must be at most 256, got {depth}")
    _checks.positive_int(units, "units")
    _checks.positive_int(layers, "layers")
    _checks.fraction(dropout, "dropout")
    _checks.fraction(recurrent_dropout, "recurrent_dropout")
    _checks.fraction(output_dropout, "output_dropout")
    _checks.positive_number(learning_rate, "learning_rate")


def _compile(model: keras.Model, loss: str, learning_rate: float,
             steps_per_execution: int) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate, clipvalue=1.0),
        loss=loss, metrics=["accuracy"], steps_per_execution=steps_per_execution)
    return model


def _lstm_stack(x, units: int, layers: int, dropout: float, recurrent_dropout: float,
                unroll: bool, stateful: bool = False, sequences: bool = False,
                output_dropout: float = 0.0):
    """`layers` LSTMs on `x`; all but the last return sequences (the last too if
    `sequences`). With `output_dropout`, a `Dropout` after each LSTM whose mask is
    the same at every step of a sequence (`noise_shape` `(batch, 1, units)`: the
    variational dropout of Gal & Ghahramani, AWD-LSTM's "locked" dropout); it has
    no weights, and the inference copies leave it out."""
    for k in range(layers):
        whole = sequences or k < layers - 1
        x = keras.layers.LSTM(
            units, return_sequences=whole, dropout=dropout,
            recurrent_dropout=recurrent_dropout, stateful=stateful, unroll=unroll,
            name=f"lstm_{k + 1}")(x)
        if output_dropout:
            x = keras.layers.Dropout(output_dropout, noise_shape=(x.shape[0], 1, units)
                                     if whole else None, name=f"lstm_{k + 1}_out")(x)
    return x


def build_training_model(seq_len: int = 16, depth: int = 36, units: int = 128,
                         layers: int = 1, dropout: float = 0.0,
                         recurrent_dropout: float = 0.0,
                         learning_rate: float = 1e-3, unroll: bool = False,
                         steps_per_execution: int = 1,
                         output_dropout: float = 0.0) -> keras.Model:
    """The tutorial's model: `LSTM(units)` over `seq_len` one-hot steps, then softmax.

    With the defaults it has 89,124 parameters (84,480 in the LSTM, 4,644 in the
    Dense). The LSTMs keep Keras's cuDNN-eligible defaults (tanh, sigmoid, no
    recurrent dropout unless asked, no unrolling), so a GPU gets the fused kernel.

    Args:
        seq_len: steps per window.
        depth: vocabulary size (input and output width).
        units: LSTM width.
        layers: stacked LSTMs; all but the last return sequences.
        dropout: input dropout of each LSTM, in `[0, 1)`.
        recurrent_dropout: recurrent dropout of each LSTM, in `[0, 1)` (disables
            cuDNN when non-zero).
        learning_rate: Adam's step size (gradients are clipped to `[-1, 1]`).
        unroll: unroll the `seq_len` steps into the graph (faster on a CPU for
            short windows; disables cuDNN).
        steps_per_execution: training steps per call into the compiled graph.
        output_dropout: dropout on each LSTM's outputs, in `[0, 1)`, the same
            units at every step of a sequence (a `Dropout` layer after each LSTM).

    Returns:
        A compiled `keras.Model` mapping `(batch, seq_len, depth)` to
        `(batch, depth)` probabilities, trained on one-hot targets.

    Raises:
        ValueError: for any setting out of range.
    """
    check_architecture(seq_len, depth, units, layers, dropout, recurrent_dropout,
                       learning_rate, output_dropout)
    inputs = keras.Input((seq_len, depth), name="chars")
    x = _lstm_stack(inputs, units, layers, dropout, recurrent_dropout, unroll,
                    output_dropout=output_dropout)
    outputs = keras.layers.Dense(depth, activation="softmax", name="next_char")(x)
    model = keras.Model(inputs, outputs, name="charstream_train")
    return _compile(model, "categorical_crossentropy", learning_rate, steps_per_execution)


def build_stream_model(batch_size: int = 32, seq_len: int = 16, depth: int = 36,
                       units: int = 128, layers: int = 1, dropout: float = 0.0,
                       recurrent_dropout: float = 0.0, learning_rate: float = 1e-3,
                       unroll: bool = False, steps_per_execution: int = 1,
                       output_dropout: float = 0.0) -> keras.Model:
    """The same layers for carried-state training (`--mode stream`).

    Every LSTM is `stateful=True` and returns its whole sequence, so the Dense
    layer predicts the next character at every step and each batch starts from
    the state the previous batch left (`reset_states` starts the streams over).
    The weights are the windowed model's, layer for layer: `windowed_copy` and
    `build_inference_model` take them.

    Args:
        batch_size: streams (a stateful model has a fixed batch).
        seq_len, depth, units, layers, dropout, recurrent_dropout, learning_rate,
            unroll, steps_per_execution, output_dropout: as `build_training_model`.

    Returns:
        A compiled `keras.Model` mapping `(batch_size, seq_len, depth)` to
        `(batch_size, seq_len, depth)` probabilities, trained on integer targets.

    Raises:
        ValueError: for any setting out of range.
    """
    _checks.positive_int(batch_size, "batch_size")
    check_architecture(seq_len, depth, units, layers, dropout, recurrent_dropout,
                       learning_rate, output_dropout)
    inputs = keras.Input(batch_shape=(batch_size, seq_len, depth), name="chars")
    x = _lstm_stack(inputs, units, layers, dropout, recurrent_dropout, unroll,
                    stateful=True, sequences=True, output_dropout=output_dropout)
    outputs = keras.layers.Dense(depth, activation="softmax", name="next_char")(x)
    model = keras.Model(inputs, outputs, name="charstream_stream_train")
    return _compile(model, "sparse_categorical_crossentropy", learning_rate,
                    steps_per_execution)


def lstm_layers(model: keras.Model) -> list:
    """The model's LSTM layers, bottom first."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.LSTM)]


def _layers_of(model: keras.Model):
    """`(lstms, dense)` of a charstream model, checked."""
    lstms = lstm_layers(model)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    if not lstms or len(dense) != 1 or model.layers[-1] is not dense[0]:
        raise ValueError(
            "expected a charstream training model (LSTM layers then one Dense), got "
            f"layers {[type(layer).__name__ for layer in model.layers]}")
    return lstms, dense[0]


def _rebuild(train_model: keras.Model, inputs, stateful: bool, name: str) -> keras.Model:
    """The training model's layers on `inputs`, many-to-one, with its weights."""
    lstms, dense = _layers_of(train_model)
    x = inputs
    for k, lstm in enumerate(lstms):
        x = keras.layers.LSTM(
            lstm.units, stateful=stateful, return_sequences=k < len(lstms) - 1,
            name=lstm.name)(x)
    outputs = keras.layers.Dense(dense.units, activation="softmax", name=dense.name)(x)
    model = keras.Model(inputs, outputs, name=name)
    model.set_weights(train_model.get_weights())
    return model


def build_inference_model(train_model: keras.Model, batch_size: int = 1) -> keras.Model:
    """A stateful copy of `train_model` that reads one character per call.

    The same layers, rebuilt on `keras.Input(batch_shape=(batch_size, 1, depth))`
    with `stateful=True` on every LSTM, then given the training model's weights.
    Call `reset_states(model)` before each new text.

    Args:
        train_model: a model from `build_training_model` or `build_stream_model`
            (or loaded from a run).
        batch_size: independent streams advanced together.

    Returns:
        A `keras.Model` mapping `(batch_size, 1, depth)` to `(batch_size, depth)`.

    Raises:
        ValueError: if `train_model` is not LSTMs followed by one softmax Dense.
    """
    _checks.positive_int(batch_size, "batch_size")
    depth = train_model.input_shape[-1]
    inputs = keras.Input(batch_shape=(batch_size, 1, depth), name="char")
    return _rebuild(train_model, inputs, True, "charstream_stream")


def windowed_copy(train_model: keras.Model, seq_len: int) -> keras.Model:
    """`train_model`'s layers as the windowed many-to-one model: each
    `(seq_len, depth)` window from a zero state to the next character's
    probabilities. A windowed model's copy computes what the model does."""
    _checks.positive_int(seq_len, "seq_len")
    depth = train_model.input_shape[-1]
    return _rebuild(train_model, keras.Input((seq_len, depth), name="chars"), False,
                    "charstream_windowed")


def stream_weights(model: keras.Model) -> dict:
    """`{"lstms": [(kernel, recurrent, bias), ...], "dense": (W, b)}` of any
    charstream model (training, stream-training or inference copy), as
    `layer.get_weights()` gives them: what `NativeBackend` and `stream.npz` take."""
    lstms, dense = _layers_of(model)
    for layer in lstms:  # the cell the native step computes (charstream.weights.CELL)
        if (layer.activation.__name__, layer.recurrent_activation.__name__) != ("tanh", "sigmoid"):
            raise ValueError(f"{layer.name}: the native step needs tanh and sigmoid "
                             f"activations, got {layer.activation.__name__} and "
                             f"{layer.recurrent_activation.__name__}")
    return {"lstms": [tuple(layer.get_weights()) for layer in lstms],
            "dense": tuple(dense.get_weights())}


def reset_states(model: keras.Model) -> None:
    """Zero every stateful LSTM's state (Keras 3 models have no `reset_states`)."""
    for layer in lstm_layers(model):
        layer.reset_state()
