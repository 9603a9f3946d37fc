"""The fused LSTM: a whole sequence forward and back as two TensorFlow ops in C++.

Stream-mode training with TensorFlow's own ops runs about 60 ops per LSTM step,
each a trip through the executor, and its two inter-op threads overlap little of
them (docs/training.md). `lstm_op.cc` beside this file runs a sequence, input
projection included, as one forward op and one backward op, the batch's streams
split into `shards` groups that TensorFlow's inter-op threads run side by side
(streams are independent; steps are not).

TensorFlow's custom ops are built against the installed TensorFlow's headers and
ABI, so the op is compiled here on first use (`g++`, about 25 s), with the flags
`tf.sysconfig` gives, and cached under `$CHARSTREAM_CACHE` (default
`~/.cache/charstream`) by a key of the source, TensorFlow's version, the flags and
this CPU's features. Without a compiler, or if the build fails, `library()` warns
once and returns None, and training runs `charstream.training.unrolled`'s loop.
`CXX` picks the compiler.

`lstm_sequence` gives the pair its gradient (`tf.custom_gradient`); `lstm_steps`,
its drop-in for `charstream.training.unrolled.lstm_steps`, is what the layers'
loop (`unrolled.lstm_inner_loop`, installed by `unroll_lstms`) runs when the op
is there.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

SOURCE = Path(__file__).with_name("lstm_op.cc")
# Eigen packs each matrix product's operands into buffers it allocates per product;
# above 128 KB (every product of the large preset) they came from malloc, fresh
# pages each call: page faults and munmap took a fifth of the op's time there. Up to
# 2 MB they go on the stack instead, whose pages stay mapped. Hidden visibility
# keeps this library's Eigen instantiations its own (not TensorFlow's, built with
# the default limit).
OWN_FLAGS = ("-DEIGEN_STACK_ALLOCATION_LIMIT=2097152", "-fvisibility=hidden",
             "-fvisibility-inlines-hidden")


def cache_dir() -> Path:
    """Where built ops are kept: `$CHARSTREAM_CACHE`, else `$XDG_CACHE_HOME/charstream`
    or `~/.cache/charstream`."""
    if os.environ.get("CHARSTREAM_CACHE"):
        return Path(os.environ["CHARSTREAM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "charstream"


def _cpu_features() -> str:
    """The CPU's feature flags (the op is built with -march=native)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return sys.platform


def _command(compiler: str, out: Path | None = None) -> list[str]:
    """The compiler's command line; without `out`, its flags only (the cache key)."""
    import tensorflow as tf

    files = [str(SOURCE), "-o", str(out)] if out is not None else []
    return [compiler, "-shared", "-fPIC", "-O3", "-march=native", "-DNDEBUG", "-w",
            *OWN_FLAGS, *tf.sysconfig.get_compile_flags(), *files,
            *tf.sysconfig.get_link_flags()]


def build(directory: Path | None = None) -> Path:
    """Compile `lstm_op.cc` (or find it compiled) and return the shared library.

    Raises:
        RuntimeError: no compiler, or the build failed (the compiler's last lines).
    """
    import tensorflow as tf

    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (set CXX)")
    key = hashlib.sha256("\0".join([SOURCE.read_text(), tf.__version__,
                                    " ".join(_command(compiler)),
                                    _cpu_features()]).encode()).hexdigest()[:16]
    directory = directory or cache_dir()
    target = directory / f"lstm_op-{key}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    print(f"charstream: compiling the fused LSTM op for TensorFlow {tf.__version__} "
          f"(once, about 25 s) into {target}", file=sys.stderr, flush=True)
    # compiled to a temporary name, then renamed: a second process never loads half a file
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        partial = Path(tmp) / target.name
        done = subprocess.run(_command(compiler, partial), capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-8:])
            raise RuntimeError(f"{compiler} failed to build {SOURCE.name} "
                               f"(exit {done.returncode}):\n{tail}")
        os.replace(partial, target)
    return target


@lru_cache(maxsize=None)
def library():
    """The loaded op library (its ops `charstream_lstm_forward` and
    `charstream_lstm_backward`), or None, with a warning, when it cannot be built."""
    import tensorflow as tf

    try:
        return tf.load_op_library(str(build()))
    except (RuntimeError, OSError, tf.errors.NotFoundError) as error:
        warnings.warn(f"charstream: the fused LSTM op is unavailable, training with "
                      f"TensorFlow's ops instead: {error}", RuntimeWarning, stacklevel=2)
        return None


def default_shards(batch: int) -> int:
    """How many groups of streams to run side by side: one per core this process
    may use, at least 8 streams each, at most 2 (the measured machine's cores;
    more groups only add threads competing with TensorFlow's own)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, batch // 8, 2))


def lstm_sequence(ops, x, h0, c0, kernel, recurrent, bias, shards: int,
                  input_gradient: bool = True):
    """An LSTM over a whole sequence through the fused op pair.

    Args:
        ops: `library()`.
        x: `(batch, steps, inputs)` float32.
        h0, c0: `(batch, units)` float32, the state to start from.
        kernel: `(inputs, 4 units)`; recurrent: `(units, 4 units)`; bias: `(4 units,)`,
            float32, gates `i, f, g, o` (Keras's layout).
        shards: groups of streams run side by side.
        input_gradient: whether `x` needs a gradient (a model's input does not).

    Returns:
        `(h, c)`: `(batch, steps, units)` every step's `h` and `c`.
    """
    import tensorflow as tf

    @tf.custom_gradient
    def run(x, h0, c0, kernel, recurrent, bias):
        h, c, gates = ops.charstream_lstm_forward(x, h0, c0, kernel, recurrent, bias,
                                                  shards=shards)

        def grad(dh, dc):
            # Only the last step's c leaves the layer (the carried state), so the op
            # takes the gradient for that one; the loss reads every h.
            dh = tf.zeros_like(h) if dh is None else dh
            dc_last = tf.zeros_like(c0) if dc is None else dc[:, -1]
            dx, *rest = ops.charstream_lstm_backward(
                x, kernel, recurrent, bias, gates, c, h, h0, c0, dh, dc_last,
                shards=shards, input_gradient=input_gradient)
            dkernel, drecurrent, dbias, dh0, dc0 = rest
            return (dx if input_gradient else None), dh0, dc0, dkernel, drecurrent, dbias

        return (h, c), grad

    return run(x, h0, c0, kernel, recurrent, bias)


def lstm_steps(ops, cell, sequences, h, c, training, shards: int, input_gradient: bool = True):
    """`charstream.training.unrolled.lstm_steps` through the fused op: the same
    arguments and results (and `shards`, `input_gradient` as `lstm_sequence`'s)."""
    import tensorflow as tf

    if training and 0.0 < cell.dropout < 1.0:   # one mask for every step, as Keras's
        sequences = sequences * cell.get_dropout_mask(sequences[:, 0])[:, None]
    bias = cell.bias if cell.use_bias else tf.zeros([4 * cell.units])
    hs, cs = lstm_sequence(ops, sequences, h, c, tf.convert_to_tensor(cell.kernel),
                           tf.convert_to_tensor(cell.recurrent_kernel),
                           tf.convert_to_tensor(bias), shards, input_gradient)
    return hs, hs[:, -1], cs[:, -1]
