"""Weight drop: DropConnect on each LSTM's recurrent kernel, for training.

AWD-LSTM's regulariser (Merity et al., 2017): on every training batch, a share
`rate` of the hidden-to-hidden weights is zeroed (the rest scaled by
`1 / (1 - rate)`), with one mask for every stream and every step of the batch,
and a new mask for the next batch. Unlike recurrent dropout, which drops units of
`h`, it leaves the state intact and costs one mask per batch, not per step.

`drop_recurrent_weights` wraps each LSTM *instance's* `inner_loop` so that, while
training, Keras's own cell reads the masked kernel in place of the variable: the
gradient reaches the variable through the mask, and everything else (the cell's
arithmetic, input dropout, cuDNN where there is a GPU) stays Keras's. The layers
stay Keras's `LSTM` with the same three weights: `model.keras` loads without
charstream, and `stream.npz`, the native step and the inference copies are what
they were (at inference there is nothing to drop).

The masks are stateless, drawn from `(seed, optimizer step, layer)`: a resumed
run draws the same masks as an uninterrupted one.
"""
from __future__ import annotations


def recurrent_mask(rate: float, seed: int, step, layer: int, shape):
    """The weight-drop mask of one layer at one optimizer step: `shape` float32,
    0 with probability `rate`, else `1 / (1 - rate)`. The same arguments give the
    same mask, in any process."""
    import tensorflow as tf

    seeds = tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64) * 1024 + layer])
    keep = tf.random.stateless_uniform(shape, seeds) >= rate
    return tf.cast(keep, tf.float32) / (1.0 - rate)


def _inner_loop(layer, index: int, rate: float, seed: int, step):
    """`layer.inner_loop` (Keras's LSTM), with the cell's recurrent kernel masked
    for the duration of a training call."""
    import tensorflow as tf

    keras_loop, cell = layer.inner_loop, layer.cell

    def inner_loop(sequences, initial_state, mask, training=False):
        if not training:
            return keras_loop(sequences, initial_state, mask, training=training)
        variable = cell.recurrent_kernel
        masked = tf.convert_to_tensor(variable) * recurrent_mask(
            rate, seed, step(), index, variable.shape)   # (units, 4 units)
        # Bypass Layer.__setattr__, which would track the tensor as a weight: the
        # cell reads `recurrent_kernel` while this call traces, then gets it back.
        object.__setattr__(cell, "recurrent_kernel", masked)
        try:
            return keras_loop(sequences, initial_state, mask, training=training)
        finally:
            object.__setattr__(cell, "recurrent_kernel", variable)

    return inner_loop


def drop_recurrent_weights(model, rate: float, seed: int) -> None:
    """Train `model`'s LSTMs with weight drop `rate` on their recurrent kernels.

    Only this instance changes (its layers' `inner_loop`); call it again after
    loading a checkpoint.

    Args:
        model: a compiled charstream model (`charstream.model`), whose optimizer
            counts the steps the masks are drawn from.
        rate: the share of recurrent weights dropped, in `(0, 1)`.
        seed: the run's seed.

    Raises:
        ValueError: if `rate` is not in `(0, 1)`.
    """
    from ..model import lstm_layers

    if not 0 < rate < 1:
        raise ValueError(f"weight_drop must be in (0, 1), got {rate!r}")
    for index, layer in enumerate(lstm_layers(model)):
        layer.inner_loop = _inner_loop(layer, index, rate, seed,
                                       lambda: model.optimizer.iterations)
