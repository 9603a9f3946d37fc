"""The unrolled LSTM that stream-mode training runs: Keras's cell, with the
recurrent gradient through a kernel transposed once per batch.

A profile of the chunk step (one thread per op, one round of 256 steps,
`benchmarks/profile_step.py --loop keras-cell`; docs/training.md) put 72% of the
op time in oneDNN's matmuls, the largest share in the gradient of each step's
`h @ U`: `dz @ U^T`, which TensorFlow's MatMul gradient computes with
`transpose_b` (80 us a call against 43 us for the forward matmul of the same
size). Multiplying by a `U^T` made once per batch instead takes about as long as
the forward one. Grappler folds a 2-D transpose back into the matmul
(`FoldTransposeIntoMatMul`), so it is made through a 3-D transpose, which it
leaves alone.

`unroll_lstms(model)` replaces each LSTM *instance's* `inner_loop` with
`lstm_steps`: the arithmetic of Keras's `LSTMCell` (fused implementation, gates
`i, f, c, o`), step by step, every op the same but that one gradient matmul,
which sums in another order (weights within 1e-6 of Keras's after 256 steps).
The layers stay Keras's: `model.keras`, `stream.npz` and inference are unchanged.
It reads `cell.recurrent_kernel` when called, so weight drop's masked kernel
(`charstream.training.weight_drop`, which wraps this loop) is what it multiplies.
"""
from __future__ import annotations


def transposed(matrix):
    """`matrix.T` for a 2-D tensor, through a 3-D transpose that Grappler does not
    fold into the matmul that consumes it."""
    import tensorflow as tf

    rows, cols = matrix.shape
    return tf.reshape(tf.transpose(tf.reshape(matrix, [rows, 1, cols]), [1, 2, 0]),
                      [cols, rows])


def recurrent_matmul(h, kernel, kernel_t):
    """`h @ kernel`, `(batch, units) @ (units, 4 units)`, whose gradient for `h`
    multiplies by `kernel_t` (`kernel.T`, made once by the caller for every step)."""
    import tensorflow as tf

    @tf.custom_gradient
    def matmul(h, kernel):
        def grad(dz):   # (batch, 4 units)
            return tf.matmul(dz, kernel_t), tf.matmul(h, dz, transpose_a=True)

        return tf.matmul(h, kernel), grad

    return matmul(h, kernel)


def lstm_steps(cell, sequences, h, c, training):
    """Keras's `LSTMCell.call` (implementation 2) over every step of `sequences`.

    Args:
        cell: the layer's `LSTMCell` (implementation 2: Keras turns recurrent
            dropout into implementation 1); its input-dropout mask is its own, the
            same for every step of the call, as in Keras's loop.
        sequences: `(batch, steps, inputs)` float32, `steps` known when traced.
        h, c: `(batch, units)` the state to start from.
        training: whether the cell's dropout applies.

    Returns:
        `(outputs, h, c)`: `(batch, steps, units)` every step's `h`, then the last
        `h` and `c`.
    """
    import tensorflow as tf

    kernel = cell.kernel
    recurrent = tf.convert_to_tensor(cell.recurrent_kernel)   # (units, 4 units), read once
    recurrent_t = transposed(recurrent)   # (4 units, units), once for all steps
    outputs = []
    for x in tf.unstack(sequences, axis=1):   # (batch, inputs) each
        if training and 0.0 < cell.dropout < 1.0:
            x = x * cell.get_dropout_mask(x)
        z = tf.matmul(x, kernel) + recurrent_matmul(h, recurrent, recurrent_t)
        if cell.use_bias:
            z = z + cell.bias
        z_i, z_f, z_c, z_o = tf.split(z, 4, axis=1)
        i, f = cell.recurrent_activation(z_i), cell.recurrent_activation(z_f)
        c = f * c + i * cell.activation(z_c)
        o = cell.recurrent_activation(z_o)
        h = o * cell.activation(c)
        outputs.append(h)
    return tf.stack(outputs, axis=1), h, c


def lstm_inner_loop(layer, ops=None, input_gradient=True):
    """A replacement for `layer.inner_loop` (Keras's RNN) that runs `lstm_steps`,
    or the fused op (`charstream.training.fused`) when `ops` is its library (the
    gradient for the layer's input only when `input_gradient`), or Keras's own
    loop where neither computes the same thing."""
    keras_loop = layer.inner_loop

    def inner_loop(sequences, initial_state, mask, training=False):
        if mask is not None or None in sequences.shape:
            return keras_loop(sequences, initial_state, mask, training=training)
        if ops is not None and sequences.dtype == "float32":
            from .fused import default_shards, lstm_steps as fused_steps

            outputs, h, c = fused_steps(ops, layer.cell, sequences, *initial_state, training,
                                        default_shards(sequences.shape[0]), input_gradient)
        else:
            outputs, h, c = lstm_steps(layer.cell, sequences, *initial_state, training)
        return h, outputs, [h, c]

    return inner_loop


def unroll_lstms(model, fused: bool = True) -> None:
    """Train `model`'s unrolled LSTMs with `lstm_steps`, or with the fused op when
    `fused` and it builds (this instance only).

    LSTMs that are not unrolled (cuDNN on a GPU), run backwards or use Keras's
    implementation 1 (which recurrent dropout implies) keep Keras's loop.
    """
    from ..model import lstm_layers

    ops = None
    if fused:
        from .fused import library

        ops = library()
    inputs = {id(tensor) for tensor in model.inputs}
    for layer in lstm_layers(model):
        if layer.unroll and not layer.go_backwards and layer.cell.implementation != 1:
            # a model's input (the one-hot characters) needs no gradient
            layer.inner_loop = lstm_inner_loop(layer, ops, id(layer.input) not in inputs)
