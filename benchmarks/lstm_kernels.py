"""The ways to run the LSTM inside charstream's chunk step, timed side by side
in one process, with PyTorch's `nn.LSTM` as the yardstick.

    python benchmarks/lstm_kernels.py               # the default model, 5 rounds
    python benchmarks/lstm_kernels.py --large       # the large preset's shapes
    XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/lstm_kernels.py --xla
    TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=2 python benchmarks/lstm_kernels.py

Contenders (each trains from the same weights on the same batches as
bench_train.py; the rounds alternate between contenders so that the machine's
drift hits all of them alike):

- `keras-cell`: Keras's LSTM, unrolled, its cell step by step.
- `charstream`: `charstream.training.unrolled`, what stream mode trains with
  without a compiler (or `--no-fused-lstm`): Keras's cell math, with the gradient
  of `h @ U` through a `U^T` made once per batch.
- `fused`: what stream mode trains with: `charstream.training.fused`, the C++ op
  that runs a whole sequence forward and back, the streams split over the cores.
- `block-lstm`: TensorFlow's fused CPU kernel for a whole sequence,
  `tf.raw_ops.BlockLSTM` (gates reordered to its i, c, f, o layout; its V2, in
  Keras's order, has a registered gradient that computes in the V1 layout, so its
  weight gradients are wrong: checked here, and the reason V1 is used).
- `whole-sequence`: `lstm_sequence` below, an LSTM over a whole sequence with its
  gradient written out: one input projection for all steps and one matmul per
  weight gradient (weight drop trained with it until Keras's own cell, fed the
  masked kernel, proved faster under one thread per op).
- `keras-cell, XLA` (with `--xla`, the default model only): Keras's cell in the
  chunk step compiled with XLA (`--jit-compile`), under whatever `XLA_FLAGS` say.
- `torch` (the default model only): `bench_train.TorchRun`.

After timing, each contender's mean loss must equal the `keras-cell` one's within
`bench_train.TOLERANCE` (PyTorch's within `TORCH_TOLERANCE`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


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


def block_lstm_loop(layer):
    """`layer.inner_loop` through `tf.raw_ops.BlockLSTM` (time-major, ICFO)."""
    import tensorflow as tf

    def inner_loop(sequences, initial_state, mask, training=False):
        x, h0, c0 = sequence_inputs(layer, sequences, initial_state, training)
        w = tf.concat([layer.cell.kernel.value, layer.cell.recurrent_kernel.value], 0)
        wi, wf, wc, wo = tf.split(w, 4, axis=1)
        bi, bf, bc, bo = tf.split(layer.cell.bias.value, 4)
        zeros = tf.zeros([layer.units])
        steps = tf.cast(tf.shape(x)[1], tf.int64)
        *_, cs, _, _, _, _, h = tf.raw_ops.BlockLSTM(
            seq_len_max=steps, x=tf.transpose(x, [1, 0, 2]), cs_prev=c0, h_prev=h0,
            w=tf.concat([wi, wc, wf, wo], 1), wci=zeros, wcf=zeros, wco=zeros,
            b=tf.concat([bi, bc, bf, bo], 0), forget_bias=0.0, cell_clip=-1.0)
        return h[-1], tf.transpose(h, [1, 0, 2]), [h[-1], cs[-1]]

    return inner_loop


def sequence_loop(layer):
    """`layer.inner_loop` through `lstm_sequence`, with nothing dropped."""
    def inner_loop(sequences, initial_state, mask, training=False):
        x, h0, c0 = sequence_inputs(layer, sequences, initial_state, training)
        cell = layer.cell
        outputs, h, c = lstm_sequence(x, h0, c0, cell.kernel.value, cell.recurrent_kernel.value,
                                      cell.bias.value)
        return h, outputs, [h, c]

    return inner_loop


ENV = ("XLA_FLAGS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def unrolled_loop(layer):
    """`layer.inner_loop` through `charstream.training.unrolled`'s TensorFlow ops
    (stream mode's loop without a compiler, or with `--no-fused-lstm`)."""
    from charstream.training.unrolled import lstm_inner_loop

    return lstm_inner_loop(layer)


LOOPS = {"keras-cell": None, "charstream": unrolled_loop, "fused": "unroll_lstms",
         "block-lstm": block_lstm_loop, "whole-sequence": sequence_loop}


def patched(model, loop):
    """`model` with each LSTM's `inner_loop` from `loop(layer)`; "unroll_lstms" is
    the fused op installed as `python -m charstream.train` installs it (no gradient
    for the model's input)."""
    from charstream.model import lstm_layers
    from charstream.training.fused import library
    from charstream.training.unrolled import unroll_lstms

    if loop == "unroll_lstms":
        if library() is None:
            sys.exit("the fused LSTM op did not build (see the warning)")
        unroll_lstms(model, fused=True)
    elif loop is not None:
        for layer in lstm_layers(model):
            layer.inner_loop = loop(layer)
    return model


def default_runs(xla=False):
    """{name: a `train()` callable}: bench_train's contenders on the default model."""
    import keras

    import bench_train as bt
    import charstream
    import charstream.model as cm
    from _shared import corpus_text
    from charstream.training.batches import StreamBatches, StreamChunks

    ids = charstream.encode_reduced(corpus_text())
    split = int(len(ids) * 0.9)
    batches = StreamBatches(ids[:split], bt.BATCH, bt.SEQ, 36, seed=0)
    chunks = StreamChunks(ids[:split], bt.BATCH, bt.SEQ, 36, bt.CHUNK, seed=0)
    keras.utils.set_random_seed(0)
    weights = cm.build_stream_model(bt.BATCH, bt.SEQ).get_weights()
    build, runs = cm.build_stream_model, {}
    for name, loop in LOOPS.items():
        cm.build_stream_model = lambda *a, _loop=loop, **k: patched(build(*a, **k), _loop)
        try:
            runs[name] = bt.KerasRun(dict(unroll=True, steps_per_execution=1, chunks=True),
                                     weights, batches, chunks).train
        finally:
            cm.build_stream_model = build
    if xla:
        runs["keras-cell, XLA"] = bt.KerasRun(
            dict(unroll=True, steps_per_execution=1, chunks=True, jit_compile=True),
            weights, batches, chunks).train
    runs["torch"] = bt.TorchRun(weights, batches).train
    return runs


def large_runs(chunks=4):
    """{name: a `train()` callable}: the large preset's model (2 x LSTM(256), 64
    streams of 32 steps, input dropout 0.1) on `chunks` chunks of random ids."""
    import keras
    import tensorflow as tf

    from charstream.model import build_stream_model
    from charstream.training.steps import train_in_chunks

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 36, (chunks, 32, 64, 32)).astype("uint8")
    targets = rng.integers(0, 36, ids.shape).astype("int32")
    options = tf.data.Options()
    options.autotune.enabled = False   # else a fit call can stall at its end (bench_train.premade)
    data = tf.data.Dataset.from_tensor_slices((ids, targets)).with_options(options)
    keras.utils.set_random_seed(0)
    weights = build_stream_model(64, 32, units=256, layers=2).get_weights()
    runs = {}
    for name, loop in LOOPS.items():
        keras.utils.set_random_seed(0)   # the same dropout masks in every contender
        model = patched(build_stream_model(64, 32, units=256, layers=2, dropout=0.1,
                                           unroll=True, learning_rate=4e-3), loop)
        train_in_chunks(model, 36, False)
        model.set_weights(weights)
        model.optimizer.build(model.trainable_variables)
        state = [*model.variables, *model.optimizer.variables]  # weights, states, masks' seeds
        fresh = [v.numpy() for v in state]

        def train(state=state, fresh=fresh, model=model):
            for v, value in zip(state, fresh):
                v.assign(value)
            return model.fit(data, verbose=0, shuffle=False).history["loss"][0]

        train()  # traces the graph (untimed)
        runs[name] = train
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", action="store_true", help="the large preset's shapes")
    parser.add_argument("--xla", action="store_true", help="add Keras's cell under XLA")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    import bench_train as bt

    runs = large_runs() if args.large else default_runs(args.xla)
    times = {name: [] for name in runs}
    losses = {}
    for _ in range(args.rounds):
        for name, train in runs.items():
            start = time.perf_counter()
            losses[name] = train()
            times[name].append(time.perf_counter() - start)
    base = np.median(times["keras-cell"])
    what = "128 batches of 64 streams x 32 steps" if args.large else f"{bt.STEPS} steps"
    settings = " ".join(f"{k}={os.environ[k]}" for k in ENV if k in os.environ)
    print(f"median seconds of {what}, {args.rounds} alternating rounds {settings}".rstrip())
    for name, t in times.items():
        vs_torch = (f", {np.median(times['torch']) / np.median(t):.2f}x torch"
                    if "torch" in times else "")
        print(f"  {name:16s} {np.median(t):6.3f} s  ({base / np.median(t):.2f}x keras-cell{vs_torch})"
              f"  rounds {' '.join(f'{x:.2f}' for x in t)}  mean loss {losses[name]:.6f}")
    for name, loss in losses.items():  # every contender trained the same thing
        bound = bt.TORCH_TOLERANCE if name == "torch" else bt.TOLERANCE
        if abs(loss - losses["keras-cell"]) > bound:
            print(f"{name}: mean loss {loss:.6f}, keras-cell's {losses['keras-cell']:.6f}: "
                  f"off by more than {bound}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
