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


def _corpus_text() -> str:
    env = os.environ.get("CHARSTREAM_DATA")
    path = Path(env) if env else SHARED_CORPUS
    if path.is_file():
        return path.read_text(encoding="utf-8")
    return charstream.load_corpus()  # downloads and caches tiny Shakespeare


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


def record_rate(benchmark, amount: float, unit: str) -> None:
    """Store `amount / median seconds` in the JSON and the table (e.g. GB/s)."""
    benchmark.extra_info[unit] = round(amount / benchmark.stats.stats.median, 3)


@pytest.fixture(scope="session")
def random_run(tmp_path_factory):
    """A run directory holding the default model with random weights (speed does
    not depend on the weights): model.keras, stream.npz, vocab.json, config.json."""
    import keras

    from charstream.config import TrainConfig, write_run_config
    from charstream.model import build_inference_model, build_training_model
    from charstream.native import STREAM_FILE, export_stream_weights

    run = tmp_path_factory.mktemp("bench") / "run"
    run.mkdir()
    keras.utils.set_random_seed(0)
    model = build_training_model()
    model.save(run / "model.keras")
    export_stream_weights(build_inference_model(model), run / STREAM_FILE, 16)
    charstream.Vocabulary.default().save(run / "vocab.json")
    write_run_config(run / "config.json", TrainConfig(),
                     {"path": "random", "sha256": "", "characters": 0}, 36)
    return run
