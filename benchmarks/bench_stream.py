"""Group `stream`: characters per second of one stream, of batched streams, and
the time from process start to the first character.

The weights are random (speed does not depend on them); the model is the
default 89,124-parameter LSTM(128). One step is `NativeLSTM.flops_per_step`
floating-point operations (142,224 for this model).
"""
import re
import subprocess
import sys

import numpy as np
import pytest

from charstream import ALPHABET, Vocabulary

from conftest import record_rate

FAST_CHARS = 500   # per round, for contenders at thousands of characters/s
SLOW_CHARS = 20    # per round, for contenders that call model.predict per character


@pytest.fixture(scope="module")
def train_model():
    import keras

    from charstream.model import build_training_model

    keras.utils.set_random_seed(0)
    return build_training_model()


def _valid(text, n):
    assert len(text) == n and set(text) <= set(ALPHABET)


@pytest.mark.benchmark(group="stream: one stream, characters/s")
def test_stream_generator(benchmark, train_model):
    from charstream import StreamGenerator

    gen = StreamGenerator.from_model(train_model, Vocabulary.default())
    chars = gen.stream(prime="romeo:", seed=0)
    for _ in range(50):  # warm-up outside the timing
        next(chars)
    text = benchmark.pedantic(lambda: "".join(next(chars) for _ in range(FAST_CHARS)),
                              rounds=5)
    record_rate(benchmark, FAST_CHARS, "chars/s")
    _valid(text, FAST_CHARS)


def _predict_loop(model, make_input, state, rng):
    """SLOW_CHARS characters, each from one `model.predict` on `make_input(text)`."""
    for _ in range(SLOW_CHARS):
        p = model.predict(make_input(state["text"]), verbose=0)[0].astype(np.float64)
        state["text"] += ALPHABET[rng.choice(36, p=p / p.sum())]
    return state["text"][-SLOW_CHARS:]


@pytest.mark.benchmark(group="stream: one stream, characters/s")
def test_tutorial_repredict_window(benchmark, train_model):
    """The tutorial's loop: one-hot the last 16 characters, model.predict, sample."""
    vocab, eye = Vocabulary.default(), np.eye(36, dtype=bool)
    state = {"text": "romeo: but soft,"}
    text = benchmark.pedantic(
        _predict_loop, (train_model, lambda t: eye[vocab.encode(t[-16:])][None], state,
                        np.random.default_rng(0)), rounds=3, warmup_rounds=1)
    record_rate(benchmark, SLOW_CHARS, "chars/s")
    _valid(text, SLOW_CHARS)


@pytest.mark.benchmark(group="stream: one stream, characters/s")
def test_predict_on_stateful_copy(benchmark, train_model):
    """The stateful copy, but stepped with model.predict per character."""
    from charstream.model import build_inference_model

    stream_model = build_inference_model(train_model)
    eye = np.eye(36, dtype=np.float32)
    state = {"text": "r"}
    text = benchmark.pedantic(
        _predict_loop, (stream_model, lambda t: eye[[ALPHABET.index(t[-1])]][None], state,
                        np.random.default_rng(0)), rounds=3, warmup_rounds=1)
    record_rate(benchmark, SLOW_CHARS, "chars/s")
    _valid(text, SLOW_CHARS)


@pytest.mark.benchmark(group="stream: one stream, characters/s")
def test_native_stream_generator(benchmark, random_run):
    from charstream import StreamGenerator

    gen = StreamGenerator.load(random_run, backend="native")
    chars = gen.stream(prime="romeo:", seed=0)
    for _ in range(50):
        next(chars)
    n = 20 * FAST_CHARS
    text = benchmark.pedantic(lambda: "".join(next(chars) for _ in range(n)), rounds=5)
    record_rate(benchmark, n, "chars/s")
    flops = gen.backend.net.flops_per_step
    benchmark.extra_info["GFLOP/s"] = round(n * flops / benchmark.stats.stats.median / 1e9, 2)
    _valid(text, n)


@pytest.mark.benchmark(group="stream: one stream, characters/s")
def test_native_kernel_only(benchmark, random_run):
    """The C loop alone (NativeLSTM.sample_many): the ceiling of the lazy iterator."""
    from charstream.native import NativeBackend, load_stream_weights

    net = NativeBackend(load_stream_weights(random_run / "stream.npz")).net
    n = 20_000
    u = np.random.default_rng(0).random(n)
    ids = benchmark.pedantic(net.sample_many, (3, n, 1.0, 0, u), rounds=5, warmup_rounds=1)
    record_rate(benchmark, n, "chars/s")
    benchmark.extra_info["GFLOP/s"] = round(
        n * net.flops_per_step / benchmark.stats.stats.median / 1e9, 2)
    assert ids.shape == (n,) and 0 <= ids.min() and ids.max() < 36


@pytest.mark.benchmark(group="stream: 64 batched streams, characters/s in total")
@pytest.mark.parametrize("backend", ["native", "keras"])
def test_batched_streams(benchmark, random_run, backend):
    from charstream import StreamGenerator

    gen = StreamGenerator.load(random_run, backend=backend, batch_size=64)
    rows = gen.stream_batch(["romeo:"] * 64, seeds=range(64))
    for _ in range(10):
        next(rows)
    steps = 400 if backend == "native" else 40
    out = benchmark.pedantic(lambda: [next(rows) for _ in range(steps)], rounds=3)
    record_rate(benchmark, 64 * steps, "chars/s")
    assert len(out) == steps and all(len(r) == 64 for r in out)


def _time_to_first_char(run, backend):
    """Seconds from process start to the first streamed character, and peak RSS."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "charstream.generate", str(run),
           "--backend", backend, "--length", "1", "--seed", "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    return out.stdout, rss


@pytest.mark.benchmark(group="stream: process start to first character")
@pytest.mark.parametrize("backend", ["native", "keras"])
def test_start_to_first_char(benchmark, random_run, backend):
    result = {}

    def run():
        result["out"], result["rss"] = _time_to_first_char(random_run, backend)

    benchmark.pedantic(run, rounds=3 if backend == "native" else 2)
    benchmark.extra_info["peak RSS MiB"] = round(result["rss"] / 1024, 1)
    assert len(result["out"]) == 2 and result["out"][0] in ALPHABET
