"""Weight drop: DropConnect on each LSTM's recurrent kernel, for training.

AWD-LSTM's regulariser (Merity et al., 2017): on every training batch, a share
`rate` of the hidden-to-hidden weights is zeroed (the rest scaled by
`1 / (1 - rate)`), with one mask for every stream and every step of the batch,
and a new mask for the next batch. Unlike recurrent dropout, which drops units of
`h`, it leaves the state intact and costs one mask per batch, not per step.

Keras's LSTM cell reads its recurrent kernel as it is, so `drop_recurrent_weights`
replaces each LSTM *instance's* `inner_loop` with `lstm_sequence` fed the masked
kernel. The layers stay Keras's `LSTM` with the same three weights: `model.keras`
loads without charstream, and `stream.npz`, the native step and the inference
copies are what they were (at inference there is nothing to drop).

The masks are stateless, drawn from `(seed, optimizer step, layer)`: a resumed
run draws the same masks as an uninterrupted one.
"""
from __future__ import annotations


def lstm_sequence(x, h0, c0, kernel, recurrent, bias):
    """Keras's LSTM (gates `i, f, g, o`; sigmoid, tanh) over a whole sequence,
    with its gradient written out.

    The input projection is one matmul over every step, and the backward pass
    stacks the gates' gradients of all steps so that each weight's gradient is one
    matmul, not one per step.

    Args:
        x: `(batch, steps, inputs)` float32, `steps` known when traced.
        h0, c0: `(batch, units)` the state to start from (tensors, not variables).
        kernel: `(inputs, 4 units)`; recurrent: `(units, 4 units)`; bias: `(4 units,)`.

    Returns:
        `(outputs, h, c)`: `(batch, steps, units)` every step's `h`, then the last
        `h` and `c`, `(batch, units)` each.
    """
    import tensorflow as tf

    @tf.custom_gradient
    def run(x, h0, c0, kernel, recurrent, bias):
        steps, inputs = x.shape[1], x.shape[2]
        units = recurrent.shape[0]
        # (batch, steps, 4 units): every step's x @ kernel + bias at once
        xz = tf.reshape(tf.matmul(tf.reshape(x, [-1, inputs]), kernel) + bias,
                        [-1, steps, 4 * units])
        h, c = h0, c0
        h_prev, c_prev, gates, tanh_c = [], [], [], []   # per step, for the gradient
        for t in range(steps):
            zi, zf, zg, zo = tf.split(xz[:, t] + tf.matmul(h, recurrent), 4, axis=1)
            i, f, g, o = tf.sigmoid(zi), tf.sigmoid(zf), tf.tanh(zg), tf.sigmoid(zo)
            h_prev.append(h)
            c_prev.append(c)
            c = f * c + i * g
            tc = tf.tanh(c)
            h = o * tc
            gates.append((i, f, g, o))
            tanh_c.append(tc)
        outputs = tf.stack(h_prev[1:] + [h], axis=1)

        def grad(d_outputs, d_h, d_c):
            dh_next, dc_next = d_h, d_c
            dz = [None] * steps   # (batch, 4 units) each: the gates' pre-activations
            for t in reversed(range(steps)):
                i, f, g, o = gates[t]
                tc = tanh_c[t]
                dh = d_outputs[:, t] + dh_next
                dc = dc_next + dh * o * (1 - tc * tc)
                dz[t] = tf.concat([dc * g * i * (1 - i), dc * c_prev[t] * f * (1 - f),
                                   dc * i * (1 - g * g), dh * tc * o * (1 - o)], axis=1)
                dc_next = dc * f
                dh_next = tf.matmul(dz[t], recurrent, transpose_b=True)
            dz_all = tf.reshape(tf.stack(dz, axis=1), [-1, 4 * units])   # (batch·steps, 4u)
            h_all = tf.reshape(tf.stack(h_prev, axis=1), [-1, units])      # h_{t-1}
            x_all = tf.reshape(x, [-1, inputs])
            dx = tf.reshape(tf.matmul(dz_all, kernel, transpose_b=True), [-1, steps, inputs])
            return (dx, dh_next, dc_next, tf.matmul(x_all, dz_all, transpose_a=True),
                    tf.matmul(h_all, dz_all, transpose_a=True), tf.reduce_sum(dz_all, 0))

        return (outputs, h, c), grad

    return run(x, h0, c0, kernel, recurrent, bias)


def recurrent_mask(rate: float, seed: int, step, layer: int, shape):
    """The weight-drop mask of one layer at one optimizer step: `shape` float32,
    0 with probability `rate`, else `1 / (1 - rate)`. The same arguments give the
    same mask, in any process."""
    import tensorflow as tf

    seeds = tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64) * 1024 + layer])
    keep = tf.random.stateless_uniform(shape, seeds) >= rate
    return tf.cast(keep, tf.float32) / (1.0 - rate)


def sequence_inputs(layer, sequences, initial_state, training):
    """`(x, h0, c0)` for a whole-sequence LSTM in place of `layer`'s cell: the
    inputs under Keras's own input-dropout mask (the same at every step) while
    training, and the state read now (Keras assigns the new state to the same
    variables after the call, and the gradient must see the old one)."""
    import tensorflow as tf

    h0, c0 = (tf.convert_to_tensor(s) for s in initial_state)
    x = sequences
    if training and layer.dropout:
        x = x * tf.expand_dims(layer.cell.get_dropout_mask(sequences[:, 0, :]), 1)
    return x, h0, c0


def _inner_loop(layer, index: int, rate: float, seed: int, step):
    """A replacement for `layer.inner_loop` (Keras's RNN) that runs `lstm_sequence`,
    with the recurrent kernel masked while training."""
    import tensorflow as tf

    cell = layer.cell

    def inner_loop(sequences, initial_state, mask, training=False):
        if mask is not None:
            raise ValueError(f"{layer.name}: weight drop does not take a mask")
        x, h0, c0 = sequence_inputs(layer, sequences, initial_state, training)
        recurrent = tf.convert_to_tensor(cell.recurrent_kernel)
        if training:
            recurrent = recurrent * recurrent_mask(rate, seed, step(), index,
                                                   recurrent.shape)
        outputs, h, c = lstm_sequence(x, h0, c0, tf.convert_to_tensor(cell.kernel),
                                      recurrent, tf.convert_to_tensor(cell.bias))
        return h, outputs, [h, c]

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
        ValueError: if `rate` is not in `(0, 1)`, or an LSTM uses recurrent
            dropout, a mask, other activations or no bias (cases the
            whole-sequence LSTM does not compute).
    """
    from ..model import lstm_layers

    if not 0 < rate < 1:
        raise ValueError(f"weight_drop must be in (0, 1), got {rate!r}")
    for index, layer in enumerate(lstm_layers(model)):
        cell = layer.cell
        if cell.recurrent_dropout or not cell.use_bias or layer.go_backwards or (
                cell.activation.__name__, cell.recurrent_activation.__name__) != (
                "tanh", "sigmoid"):
            raise ValueError(
                f"{layer.name}: weight drop needs an LSTM with tanh and sigmoid, a bias, "
                "no recurrent dropout and forward time")
        layer.inner_loop = _inner_loop(layer, index, rate, seed,
                                       lambda: model.optimizer.iterations)
