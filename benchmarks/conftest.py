"""Contenders and inputs for the benchmark suite.

Run with `pytest benchmarks --benchmark-only` (see the README); the default
`pytest` run collects only tests/. Each benchmark times one contender, then
asserts that it produced the reference's result.
"""
from __future__ import annotations

import numpy as np
import pytest
from _shared import corpus_path, corpus_text

import charstream
from charstream import _reference as ref


@pytest.fixture(scope="session")
def corpus() -> str:
    return corpus_text()


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


# Settings of the carried-state training step (bench_train.py). What `python -m
# charstream.train` uses on a machine without a GPU is "chunks of 32, fused": chunks
# of 32 batches looped inside one step (`charstream.training.steps`), the LSTM run
# by charstream's fused C++ op (`charstream.training.fused`: a whole sequence
# forward and back, the streams split over the cores), with one intra-op thread
# (`--intra-op-threads`: a process-wide setting, so `benchmarks/train_rounds.py
# --intra-op-threads 1` sets it for every contender). Without a compiler it falls
# back to "chunks of 32, U^T once" (`charstream.training.unrolled`: Keras's cell,
# its recurrent gradient through a kernel transposed once per batch).
TRAIN_CONTENDERS = {
    "plain-fit": dict(unroll=False, steps_per_execution=1),
    "steps_per_execution=32": dict(unroll=False, steps_per_execution=32),
    "spe=32, unroll": dict(unroll=True, steps_per_execution=32),
    "chunks of 32, unroll": dict(unroll=True, steps_per_execution=1, chunks=True),
    "chunks of 32, U^T once": dict(unroll=True, steps_per_execution=1, chunks=True,
                                   unrolled=True, fused=False),
    "chunks of 32, fused": dict(unroll=True, steps_per_execution=1, chunks=True,
                                unrolled=True, fused=True),
    "chunks of 32, unroll, XLA": dict(unroll=True, steps_per_execution=1,
                                                   chunks=True, jit_compile=True),
    "XLA (spe=32, jit_compile)": dict(unroll=False, steps_per_execution=32, jit_compile=True),
    # charstream's settings fed bool one-hot instead of float32: the graph casts
    # (and oneDNN prints "supports DT_BOOL only on platforms with AVX-512").
    "bool input (spe=32, unroll)": dict(unroll=True, steps_per_execution=32, bool_input=True),
}


# A benchmark names the contenders it times by asking for one of these fixtures;
# each is parametrized over its table as (name, contender).
CONTENDER_FIXTURES = {
    "reduce_contender": REDUCE_CONTENDERS,
    "encode_contender": ENCODE_CONTENDERS,
    "train_contender": {**TRAIN_CONTENDERS, "torch-nn.LSTM": None},
}


def pytest_generate_tests(metafunc):
    for fixture, table in CONTENDER_FIXTURES.items():
        if fixture in metafunc.fixturenames:
            metafunc.parametrize(fixture, list(table.items()), ids=list(table))


@pytest.fixture(scope="session")
def plain_fit_settings() -> dict:
    """The reference of the training contenders: Keras's `fit` as it comes."""
    return TRAIN_CONTENDERS["plain-fit"]


@pytest.fixture(scope="session")
def random_run(tmp_path_factory, corpus):
    """A run directory holding the default model with random weights (speed does
    not depend on the weights): config.json, vocab.json, model.keras, stream.npz."""
    import keras

    from charstream.config import TrainConfig
    from charstream.model import build_training_model, stream_weights
    from charstream.weights import export_stream_weights
    from charstream.run import RunDir, read_corpus

    run = RunDir(tmp_path_factory.mktemp("bench") / "run")
    config = TrainConfig(data=str(corpus_path()))
    run.create(config, read_corpus(config))
    keras.utils.set_random_seed(0)
    model = build_training_model()
    model.save(run.model_file)
    export_stream_weights(stream_weights(model), run.stream_file, 16)
    return run.path
