"""Group `stream`: characters per second of one stream, of batched streams, and
the time from process start to the first character.

The weights are random (speed does not depend on them); the model is the
default 89,124-parameter LSTM(128). One step is `NativeLSTM.flops_per_step`
floating-point operations (142,224 for this model).

Every contender samples under charstream's contract (`charstream.streaming.sampling`): the
doubles of `default_rng(seed)`, one per character. After timing, each one's
whole text is replayed through a fresh copy of its own model, and every
character must be the one `charstream._reference.sample_id` draws from that
step's probabilities with that step's double; batched streams must also equal
the single streams they promise to equal.
"""
import re
import subprocess
import sys

import numpy as np
import pytest

from charstream import ALPHABET, Vocabulary
from charstream import _reference as ref
from charstream.streaming.sampling import Uniforms, sample_id

from _shared import record_rate

FAST_CHARS = 500   # per round, for contenders at thousands of characters/s
SLOW_CHARS = 20    # per round, for contenders that call model.predict per character
PRIME, SEED = "romeo:", 0


@pytest.fixture(scope="module")
def train_model(random_run):
    from charstream.run import RunDir

    run = RunDir(random_run)
    return run.load_keras_model(run.read())


def _replay(next_probs, text: str, seed: int = SEED) -> None:
    """Check `text` against the contract: `next_probs(k)` gives the distribution
    before character k (called for k = 0, 1, ... in order)."""
    draws = Uniforms(seed).take(len(text))
    for k, (ch, u) in enumerate(zip(text, draws)):
        assert ch == ALPHABET[ref.sample_id(next_probs(k), 1.0, None, u)], f"character {k}"


def _stepper(backend, text: str):
    """`next_probs` for a stateful backend: fed the prime, then `text` one by one."""
    prime = [ALPHABET.index(c) for c in PRIME]
    backend.reset()
    for i in prime[:-1]:
        backend.probs([i])
    fed = [prime[-1]] + [ALPHABET.index(c) for c in text]
    return lambda k: backend.probs([fed[k]])[0]


# ------------------------------------------------------------------ one stream

@pytest.mark.benchmark(group="stream: one stream, characters/s")
@pytest.mark.parametrize("backend", ["keras", "native"])
def test_stream_generator(benchmark, random_run, backend):
    from charstream import StreamGenerator

    benchmark.extra_info["contender"] = f"stream_generator ({backend})"
    gen = StreamGenerator.load(random_run, backend=backend)
    chars = gen.stream(prime=PRIME, seed=SEED)
    for _ in range(50):  # warm-up outside the timing
        next(chars)
    n = FAST_CHARS if backend == "keras" else 20 * FAST_CHARS
    rounds = benchmark.pedantic(lambda: "".join(next(chars) for _ in range(n)), rounds=5)
    record_rate(benchmark, n, "chars/s")
    if backend == "native":
        benchmark.extra_info["GFLOP/s"] = round(
            n * gen.backend.net.flops_per_step / benchmark.stats.stats.median / 1e9, 2)
    # Replay the whole stream (warm-up and all rounds) with a fresh generator.
    full = StreamGenerator.load(random_run, backend=backend).generate(
        50 + 5 * n, prime=PRIME, seed=SEED)
    assert full.endswith(rounds)
    _replay(_stepper(StreamGenerator.load(random_run, backend=backend).backend, full), full)


def _contract_loop(model, make_input, state, draws):
    """SLOW_CHARS characters, each from one `model.predict` on `make_input(text)`,
    sampled under the contract."""
    for _ in range(SLOW_CHARS):
        p = model.predict(make_input(state["text"]), verbose=0)[0].astype(np.float64)
        state["text"] += ALPHABET[sample_id(p / p.sum(), 1.0, None, next(draws))]
    return state["text"][-SLOW_CHARS:]


@pytest.mark.benchmark(group="stream: one stream, characters/s")
def test_tutorial_repredict_window(benchmark, train_model):
    """The tutorial's loop: one-hot the last 16 characters, model.predict, sample."""
    vocab, eye = Vocabulary.default(), np.eye(36, dtype=np.float32)
    window = lambda t: eye[vocab.encode(t[-16:])][None]
    state = {"text": "romeo: but soft,"}
    benchmark.pedantic(_contract_loop, (train_model, window, state, Uniforms(SEED)),
                       rounds=3, warmup_rounds=1)
    record_rate(benchmark, SLOW_CHARS, "chars/s")
    text = state["text"][16:]

    def next_probs(k):  # the same windowed predict, on the same window
        p = train_model.predict(window("romeo: but soft," + text[:k]), verbose=0)[0]
        return p.astype(np.float64) / p.astype(np.float64).sum()

    _replay(next_probs, text)


@pytest.mark.benchmark(group="stream: one stream, characters/s")
def test_predict_on_stateful_copy(benchmark, train_model):
    """The stateful copy, but stepped with model.predict per character."""
    from charstream.model import build_inference_model, reset_states

    stream_model = build_inference_model(train_model)
    eye = np.eye(36, dtype=np.float32)
    step = lambda t: eye[[ALPHABET.index(t[-1])]][None]
    state = {"text": "r"}
    benchmark.pedantic(_contract_loop, (stream_model, step, state, Uniforms(SEED)),
                       rounds=3, warmup_rounds=1)
    record_rate(benchmark, SLOW_CHARS, "chars/s")
    text = state["text"][1:]
    reset_states(stream_model)

    def next_probs(k):
        p = stream_model.predict(step("r" + text[:k]), verbose=0)[0]
        return p.astype(np.float64) / p.astype(np.float64).sum()

    _replay(next_probs, text)


@pytest.mark.benchmark(group="stream: one stream, characters/s")
def test_native_kernel_only(benchmark, random_run):
    """The C loop alone (NativeLSTM.sample_many): the ceiling of the lazy iterator."""
    from charstream.streaming.native import NativeBackend
    from charstream.weights import load_stream_weights

    weights = load_stream_weights(random_run / "stream.npz")
    net = NativeBackend(weights).net
    n = 20_000
    u = Uniforms(SEED).take(n)
    start = ALPHABET.index(PRIME[-1])

    def run():
        net.reset()
        for i in PRIME[:-1]:
            net.probs([ALPHABET.index(i)])
        return net.sample_many(start, n, 1.0, 0, u)

    ids = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    record_rate(benchmark, n, "chars/s")
    benchmark.extra_info["GFLOP/s"] = round(
        n * net.flops_per_step / benchmark.stats.stats.median / 1e9, 2)
    text = "".join(ALPHABET[i] for i in ids)
    _replay(_stepper(NativeBackend(weights), text), text)


# ------------------------------------------------------------------ 64 streams

BATCH = 64


def _single(random_run, backend, seed, n):
    from charstream import StreamGenerator

    return StreamGenerator.load(random_run, backend=backend).generate(n, prime=PRIME, seed=seed)


@pytest.mark.benchmark(group="stream: 64 batched streams, characters/s in total")
@pytest.mark.parametrize("backend", ["native", "keras"])
def test_batched_streams(benchmark, random_run, backend):
    from charstream import StreamGenerator

    gen = StreamGenerator.load(random_run, backend=backend, batch_size=BATCH)
    rows = gen.stream_batch([PRIME] * BATCH, seeds=range(BATCH))
    out = [next(rows) for _ in range(10)]
    steps = 400 if backend == "native" else 40
    benchmark.pedantic(lambda: out.extend(next(rows) for _ in range(steps)), rounds=3)
    record_rate(benchmark, BATCH * steps, "chars/s")
    texts = ["".join(r[k] for r in out) for k in range(BATCH)]
    if backend == "native":  # bit for bit the single streams, every one of them
        for k in range(BATCH):
            assert texts[k] == _single(random_run, "native", k, len(out)), k
    else:  # the contract, over the batched Keras step's own probabilities
        fresh = StreamGenerator.load(random_run, backend="keras", batch_size=BATCH)
        draws = np.stack([Uniforms(k).take(len(out)) for k in range(BATCH)], axis=1)
        ids = np.array([[ALPHABET.index(c) for c in t] for t in texts]).T  # (steps, 64)
        fresh.backend.reset()
        for c in PRIME[:-1]:
            fresh.backend.probs([ALPHABET.index(c)] * BATCH)
        last = [ALPHABET.index(PRIME[-1])] * BATCH
        for t in range(len(out)):
            p = fresh.backend.probs(last)
            assert [ref.sample_id(p[k], 1.0, None, draws[t, k]) for k in range(BATCH)] == \
                list(ids[t]), t
            last = ids[t]


@pytest.mark.benchmark(group="stream: 64 batched streams, characters/s in total")
def test_native_batched_kernel_only(benchmark, random_run):
    """64 streams stepped by `NativeLSTM.step_sample_into` directly: no iterator,
    no characters, the ceiling of `stream_batch`."""
    from charstream.streaming.native import NativeBackend
    from charstream.weights import load_stream_weights

    net = NativeBackend(load_stream_weights(random_run / "stream.npz"), batch=BATCH).net
    steps = 2000
    u = np.ascontiguousarray(np.stack([Uniforms(k).take(steps) for k in range(BATCH)], axis=1))

    def run():
        net.reset()
        for c in PRIME[:-1]:
            net.probs(np.full(BATCH, ALPHABET.index(c), np.int32))
        ids = np.full(BATCH, ALPHABET.index(PRIME[-1]), np.int32)
        out = np.empty((steps, BATCH), np.int32)
        for t in range(steps):
            net.step_sample_into(ids, 1.0, 0, u[t], out[t])
            ids = out[t]
        return out

    out = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    record_rate(benchmark, BATCH * steps, "chars/s")
    for k in (0, 17, 63):
        assert "".join(ALPHABET[i] for i in out[:, k]) == _single(random_run, "native", k, steps)


# ------------------------------------------------------------------ start-up

def _time_to_first_char(run, backend):
    """The process's output (prime and first character) and its peak RSS."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "charstream.generate", str(run),
           "--backend", backend, "--length", "1", "--seed", str(SEED), "--prime", PRIME]
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
    assert result["out"] == PRIME + _single(random_run, backend, SEED, 1) + "\n"
