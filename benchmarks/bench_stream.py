"""Group `stream`: characters per second of one stream, three ways.

The weights are random (speed does not depend on them); the model is the
default 89,124-parameter LSTM(128).
"""
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

    gen = StreamGenerator(train_model, Vocabulary.default())
    chars = gen.stream(prime="romeo:", seed=0)
    for _ in range(50):  # warm-up outside the timing
        next(chars)
    text = benchmark.pedantic(lambda: "".join(next(chars) for _ in range(FAST_CHARS)),
                              rounds=5)
    record_rate(benchmark, FAST_CHARS, "chars/s")
    _valid(text, FAST_CHARS)


@pytest.mark.benchmark(group="stream: one stream, characters/s")
def test_tutorial_repredict_window(benchmark, train_model):
    """The tutorial's loop: one-hot the last 16 characters, model.predict, sample."""
    rng = np.random.default_rng(0)
    vocab = Vocabulary.default()
    eye = np.eye(36, dtype=bool)
    state = {"text": "romeo: but soft,"}

    def run():
        for _ in range(SLOW_CHARS):
            x = eye[vocab.encode(state["text"][-16:])][None]
            p = train_model.predict(x, verbose=0)[0].astype(np.float64)
            state["text"] += ALPHABET[rng.choice(36, p=p / p.sum())]
        return state["text"][-SLOW_CHARS:]

    text = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    record_rate(benchmark, SLOW_CHARS, "chars/s")
    _valid(text, SLOW_CHARS)


@pytest.mark.benchmark(group="stream: one stream, characters/s")
def test_predict_on_stateful_copy(benchmark, train_model):
    """The stateful copy, but stepped with model.predict per character."""
    from charstream.model import build_inference_model

    stream_model = build_inference_model(train_model)
    rng = np.random.default_rng(0)
    state = {"id": 0, "text": ""}

    def run():
        for _ in range(SLOW_CHARS):
            x = np.zeros((1, 1, 36), np.float32)
            x[0, 0, state["id"]] = 1
            p = stream_model.predict(x, verbose=0)[0].astype(np.float64)
            state["id"] = int(rng.choice(36, p=p / p.sum()))
            state["text"] += ALPHABET[state["id"]]
        return state["text"][-SLOW_CHARS:]

    text = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    record_rate(benchmark, SLOW_CHARS, "chars/s")
    _valid(text, SLOW_CHARS)
