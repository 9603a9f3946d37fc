"""Contenders and inputs for the benchmark suite.

Run with `pytest benchmarks --benchmark-only` (see the README); the default
`pytest` run collects only tests/. Each benchmark times one contender, then
asserts that it produced the reference's result.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import charstream
from charstream import _reference as ref

SHARED_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"


def _corpus_path() -> Path:
    """$CHARSTREAM_DATA, else ../shared beside the checkout, else tiny Shakespeare
    downloaded and cached by Keras."""
    env = os.environ.get("CHARSTREAM_DATA")
    path = Path(env) if env else SHARED_CORPUS
    return path if path.is_file() else charstream.text.corpus_path()


def _corpus_text() -> str:
    return charstream.load_corpus(_corpus_path())


@pytest.fixture(scope="session")
def corpus() -> str:
    return _corpus_text()


@pytest.fixture(scope="session")
def texts(corpus) -> dict[str, str]:
    """The corpus at 1x, 4x and 16x (by repetition) and a non-ASCII-heavy text."""
    rng = np.random.default_rng(0)
    # Greek, accented Latin, CJK and the odd case-changing letter, between ASCII words.
    words = corpus[:200_000].split()
    foreign = ["Καλημέρα", "ΣΟΦΊΑ", "Straße", "İstanbul", "Ørsted", "naïve", "東京", "\u212aelvin"]
    mixed = " ".join(rng.choice(foreign) if rng.random() < 0.3 else w for w in words)
    return {"1x": corpus, "4x": corpus * 4, "16x": corpus * 16, "non-ascii": mixed}


@pytest.fixture(scope="session")
def corpus_ids(corpus) -> np.ndarray:
    return charstream.encode_reduced(corpus)


# ------------------------------------------------------------------ contenders

REDUCE_CONTENDERS = {
    "cython-reduce_text": charstream.reduce_text,
    "python-translate": ref.reduce_text_translate,
    "python-tutorial-loop": ref.tutorial_reduce,
}
ENCODE_CONTENDERS = {
    "cython-encode_reduced": charstream.encode_reduced,
    "python-translate": ref.encode_reduced_translate,
}


# Settings of the carried-state training step (bench_train.py); "charstream" is
# what `python -m charstream.train` uses on a machine without a GPU.
TRAIN_CONTENDERS = {
    "plain-fit": dict(unroll=False, steps_per_execution=1),
    "steps_per_execution=32": dict(unroll=False, steps_per_execution=32),
    "charstream (spe=32, unroll)": dict(unroll=True, steps_per_execution=32),
    "XLA (spe=32, jit_compile)": dict(unroll=False, steps_per_execution=32, jit_compile=True),
    # charstream's settings fed bool one-hot instead of float32: the graph casts
    # (and oneDNN prints "supports DT_BOOL only on platforms with AVX-512").
    "bool input (spe=32, unroll)": dict(unroll=True, steps_per_execution=32, bool_input=True),
}


def record_rate(benchmark, amount: float, unit: str) -> None:
    """Store `amount / median seconds` in the JSON and the table (e.g. GB/s)."""
    benchmark.extra_info[unit] = round(amount / benchmark.stats.stats.median, 3)


@pytest.fixture(scope="session")
def random_run(tmp_path_factory, corpus):
    """A run directory holding the default model with random weights (speed does
    not depend on the weights): config.json, vocab.json, model.keras, stream.npz."""
    import keras

    from charstream.config import TrainConfig
    from charstream.model import build_training_model, stream_weights
    from charstream.native import export_stream_weights
    from charstream.run import RunDir, read_corpus

    run = RunDir(tmp_path_factory.mktemp("bench") / "run")
    config = TrainConfig(data=str(_corpus_path()))
    run.create(config, read_corpus(config))
    keras.utils.set_random_seed(0)
    model = build_training_model()
    model.save(run.model_file)
    export_stream_weights(stream_weights(model), run.stream_file, 16)
    return run.path
