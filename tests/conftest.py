"""Shared fixtures. Tests make their own small texts; only a few read the corpus."""
import os
from pathlib import Path

import pytest

@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """Tiny Shakespeare at $CHARSTREAM_DATA (`.ci/run` points it at the shared copy);
    the tests that need it skip without it rather than download."""
    env = os.environ.get("CHARSTREAM_DATA")
    if not env or not Path(env).is_file():
        pytest.skip(f"tiny Shakespeare not found (CHARSTREAM_DATA={env!r}); set CHARSTREAM_DATA")
    return Path(env)


@pytest.fixture(scope="session")
def shakespeare(shakespeare_path) -> str:
    return shakespeare_path.read_text(encoding="utf-8")


# A small, learnable corpus: a few verses repeated with variations, mixed case and
# punctuation so reduction has work to do. About 12,000 characters.
VERSES = [
    "ROMEO: But soft, what light through yonder window breaks?",
    "JULIET: O Romeo, Romeo! wherefore art thou Romeo?",
    "FIRST CITIZEN: Before we proceed any further, hear me speak.",
    "ALL: Speak, speak.",
]


def make_corpus(n: int = 60, seed: int = 0) -> str:
    import random

    rng = random.Random(seed)
    lines = [rng.choice(VERSES) for _ in range(n * len(VERSES))]
    return "\n\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "verses.txt"
    path.write_text(make_corpus(), encoding="utf-8")
    return path


def load_run(run_dir):
    """`(model, vocab, reduce)` of a run directory, through charstream.run."""
    from charstream.run import RunDir

    run = RunDir(run_dir)
    recorded = run.read()
    return run.load_keras_model(recorded), recorded.vocab, recorded.settings.reduce


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, corpus_file) -> Path:
    """One tiny windows-mode run, trained in-process once and shared by the stream tests."""
    from charstream import train

    run = tmp_path_factory.mktemp("runs") / "tiny"
    rc = train.main(["--data", str(corpus_file), "--mode", "windows", "--units", "24",
                     "--epochs", "2", "--batch-size", "64", "--learning-rate", "0.01",
                     "--samples", "4000", "--out", str(run), "--sample-length", "30"])
    assert rc == 0
    return run


@pytest.fixture(scope="session")
def raw_run(tmp_path_factory) -> Path:
    """A tiny `--no-reduce` run whose vocabulary is " abc": prompts with other
    characters cannot be represented."""
    from charstream import train

    path = tmp_path_factory.mktemp("raw") / "abc.txt"
    path.write_text("abc abc cab " * 300)
    run = path.parent / "run"
    assert train.main(["--data", str(path), "--no-reduce", "--units", "4", "--epochs", "1",
                       "--batch-size", "4", "--out", str(run), "--sample-length", "0"]) == 0
    return run


@pytest.fixture(scope="session")
def stream_run(tmp_path_factory, corpus_file) -> Path:
    """One tiny stream-mode run (a stateful (8, 16, 36) training model)."""
    from charstream import train

    run = tmp_path_factory.mktemp("runs") / "tiny-stream"
    rc = train.main(["--data", str(corpus_file), "--mode", "stream", "--units", "24",
                     "--epochs", "3", "--batch-size", "8", "--learning-rate", "0.01",
                     "--out", str(run), "--sample-length", "30"])
    assert rc == 0
    return run
