"""The stream-mode training step: one call of the compiled graph trains a chunk.

Keras's `steps_per_execution` loop calls its compiled step once per batch from a
`tf.while_loop` outside it, so XLA (`jit_compile`) can fuse one step at a time and
TensorFlow's executor runs the loop's bookkeeping between steps. `train_in_chunks`
hands `fit` chunks of consecutive batches (`StreamChunks`) instead and loops over
them *inside* the step, so the whole chunk (every LSTM step forward and back, every
Adam update, the carried state) is one computation for XLA to compile: 1.27x
the per-batch loop's speed on a 2-core AVX2 CPU, 0.80x idiomatic PyTorch's
(`benchmarks/bench_train.py`, the tables in `docs/training.md`). With one thread
per TensorFlow op (`--intra-op-threads`, stream mode's default since), the chunk
loop without XLA is the faster: 0.95x PyTorch in the median of five runs, XLA 0.51x.
Its LSTMs run charstream's fused op (`charstream.training.fused`: 1.57x PyTorch in
the median of five runs), or `charstream.training.unrolled` without a compiler.

Each batch of a chunk goes through Keras's own `train_step` (loss, gradients,
clipping, Adam, metrics), one after another, so without XLA the training is the
per-batch loop's bit for bit (tested); XLA sums in other orders (a loss within
about 1e-5 after 256 steps) and draws dropout masks from another generator, which
is one reason `fit` turns it on by default only without dropout and with a
multi-threaded intra-op pool.
"""
from __future__ import annotations


def train_in_chunks(model, depth: int, jit_compile: bool) -> None:
    """Make `model.fit` train on `StreamChunks`: each of its steps is a whole chunk.

    The model stays the plain functional model it was (saved, loaded and exported as
    before); only this instance's `train_step` is replaced.

    Args:
        model: a compiled stream model (`charstream.model.build_stream_model`).
        depth: the vocabulary size, the width of the one-hot inputs.
        jit_compile: compile the chunk step with XLA.
    """
    import tensorflow as tf

    one_batch = type(model).train_step.__get__(model)  # Keras's own step

    def train_step(data):
        ids, targets = data  # (chunk, batch, seq_len) uint8 and int32, padding targets -1
        count = tf.reduce_sum(tf.cast(targets[:, 0, 0] >= 0, tf.int32))

        def body(k):
            inputs = tf.one_hot(tf.cast(ids[k], tf.int32), depth)  # (batch, seq_len, depth)
            one_batch((inputs, targets[k]))
            return (k + 1,)

        tf.while_loop(lambda k: k < count, body, (tf.constant(0),))
        return model.get_metrics_result()

    model.train_step = train_step
    model.steps_per_execution = 1  # a chunk per call already
    model.jit_compile = jit_compile
    model.train_function = None  # built again, around this step
