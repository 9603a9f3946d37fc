"""Paths a user can take from the command line, each trained for a few steps on a
tiny corpus and streamed from: stacked layers, raw (unreduced) Unicode text,
dropout, weight drop, early stopping, the tutorial preset, and the same seed twice."""
import json
import subprocess
import sys

import numpy as np
import pytest

from charstream import StreamGenerator, train
from charstream.weights import load_stream_weights

QUICK = ["--units", "12", "--epochs", "1", "--sample-length", "0", "--learning-rate", "0.01"]


def _train(tmp_path, name, *argv):
    run = tmp_path / name
    assert train.main([*argv, *QUICK, "--out", str(run)]) == 0
    return run


def _same_text_on_both_backends(run, prime, n=80):
    keras_text = StreamGenerator.load(run).generate(n, prime=prime, seed=3, temperature=0.7)
    native_text = StreamGenerator.load(run, backend="native").generate(
        n, prime=prime, seed=3, temperature=0.7)
    assert keras_text == native_text and len(keras_text) == n
    return keras_text


@pytest.mark.parametrize("mode", ["windows", "stream"])
def test_two_layers_train_export_and_stream_natively(tmp_path, corpus_file, mode):
    run = _train(tmp_path, "run", "--data", str(corpus_file), "--mode", mode, "--layers", "2",
                 "--batch-size", "16", "--samples", "3000")
    weights = load_stream_weights(run / "stream.npz")
    assert weights["meta"]["layers"] == 2 and weights["meta"]["units"] == [12, 12]
    assert len(weights["lstms"]) == 2
    _same_text_on_both_backends(run, "ROMEO:")


def test_no_reduce_on_unicode_text(tmp_path):
    text = ("Καλημέρα, κόσμε! Ça va? Straße — naïve café.\n" * 120)
    path = tmp_path / "unicode.txt"
    path.write_text(text, encoding="utf-8")
    run = _train(tmp_path, "run", "--data", str(path), "--no-reduce", "--batch-size", "8")
    vocab = json.loads((run / "vocab.json").read_text())["chars"]
    assert {"Κ", "é", "ß", "—", "Ç"} <= set(vocab) and len(vocab) == len(set(text))
    sample = _same_text_on_both_backends(run, "Καλημέρα")
    assert set(sample) <= set(text)
    with pytest.raises(ValueError, match="is not in the vocabulary"):
        StreamGenerator.load(run, backend="native").generate(5, prime="ROMEO")


@pytest.mark.parametrize("mode", ["windows", "stream"])
def test_dropout_and_recurrent_dropout(tmp_path, corpus_file, mode):
    run = _train(tmp_path, "run", "--data", str(corpus_file), "--mode", mode,
                 "--dropout", "0.2", "--recurrent-dropout", "0.1", "--output-dropout", "0.3",
                 "--layers", "2", "--batch-size", "16", "--samples", "3000")
    settings = json.loads((run / "config.json").read_text())["settings"]
    assert settings["dropout"] == 0.2 and settings["recurrent_dropout"] == 0.1
    assert settings["output_dropout"] == 0.3
    # Streaming runs the trained weights without dropout: the same on both backends.
    _same_text_on_both_backends(run, "JULIET:")


@pytest.mark.parametrize("mode", ["windows", "stream"])
def test_weight_drop_trains_and_streams_plain_lstms(tmp_path, corpus_file, mode):
    import keras

    run = _train(tmp_path, "run", "--data", str(corpus_file), "--mode", mode,
                 "--weight-drop", "0.3", "--dropout", "0.2", "--output-dropout", "0.2",
                 "--layers", "2", "--batch-size", "16", "--samples", "3000")
    assert json.loads((run / "config.json").read_text())["settings"]["weight_drop"] == 0.3
    # The masks are a training step's alone: model.keras is Keras's LSTMs, loadable
    # without charstream, and both backends stream the same text from it.
    model = keras.saving.load_model(run / "model.keras", safe_mode=True, compile=False)
    assert [type(layer).__name__ for layer in model.layers if "lstm" in layer.name
            and not layer.name.endswith("_out")] == ["LSTM", "LSTM"]
    _same_text_on_both_backends(run, "JULIET:")


def test_patience_stops_a_run_early(tmp_path):
    # Training text of one kind, a held-out tail of another: every epoch that fits
    # the training part better scores the tail worse, so patience 1 stops at epoch 2.
    path = tmp_path / "drift.txt"
    path.write_text("abcabcabc " * 400 + "zyx zyx zyx " * 40)
    run = tmp_path / "run"
    assert train.main(["--data", str(path), "--units", "12", "--batch-size", "8",
                       "--learning-rate", "0.01", "--epochs", "10", "--patience", "1",
                       "--val-fraction", "0.12", "--out", str(run), "--sample-length", "0"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(json.dumps(r)) for r in _history(run)]
    assert summary["ended_by"] == "patience" and summary["epochs"] == 2 < 10
    assert float(rows[1]["val_loss"]) > float(rows[0]["val_loss"])
    # The best weights (epoch 1's) are the ones kept.
    assert summary["val_loss"] == pytest.approx(float(rows[0]["val_loss"]), abs=1e-6)


def _history(run):
    import csv

    with open(run / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_tutorial_preset_on_a_short_corpus(tmp_path, corpus_file, capsys):
    run = tmp_path / "run"
    assert train.main(["--data", str(corpus_file), "--preset", "tutorial", "--epochs", "1",
                       "--units", "8", "--out", str(run), "--sample-length", "0"]) == 0
    settings = json.loads((run / "config.json").read_text())["settings"]
    assert {k: settings[k] for k in ("mode", "seq_len", "samples", "batch_size",
                                     "learning_rate", "lr_decay", "shuffle")} == dict(
        mode="windows", seq_len=16, samples=200_000, batch_size=32, learning_rate=1e-3,
        lr_decay=False, shuffle=False)
    # 11,818 characters: fewer windows than the cap, so all 10,620 training windows.
    assert "training on 10,620 windows per epoch" in capsys.readouterr().out
    assert [float(r["learning_rate"]) for r in _history(run)] == [pytest.approx(1e-3)]


def test_tutorial_preset_caps_a_long_corpus_at_200000_windows_in_order():
    from charstream.config import PRESETS, TrainConfig
    from charstream.data.corpus import Corpus
    from charstream.data.text import Vocabulary
    from charstream.training.distribute import Cluster
    from charstream.training.pipeline import build_pipeline
    from charstream.training.plan import Plan

    config = TrainConfig(**PRESETS["tutorial"]).validate()
    ids = np.random.default_rng(0).integers(0, 36, 260_000).astype(np.uint8)
    corpus = Corpus(None, "", ids, Vocabulary.default())
    import tensorflow as tf

    pipeline = build_pipeline(Plan(None, config, corpus), Cluster(tf.distribute.get_strategy()))
    assert pipeline.targets == 200_000 and len(pipeline.train) == 200_000 // 32
    for b in (0, 1, 6249):  # the tutorial's order: the first 200,000 windows, unshuffled
        np.testing.assert_array_equal(pipeline.train.batch_starts(b), np.arange(32 * b, 32 * b + 32))


def test_the_same_seed_trains_the_same_weights(tmp_path, corpus_file):
    common = [sys.executable, "-m", "charstream.train", "--data", str(corpus_file), "--units", "8",
              "--batch-size", "8", "--samples", "3000", "--epochs", "2", "--sample-length", "0"]
    runs = []
    # Two processes, one seed; the second with TensorFlow's own intra-op threads
    # (every core per op) instead of stream mode's one: the pool changes the speed,
    # not the arithmetic.
    for name, seed, threads in (("a", "7", "1"), ("b", "7", "0")):
        out = subprocess.run([*common, "--seed", seed, "--intra-op-threads", threads,
                              "--out", str(tmp_path / name)],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        runs.append(tmp_path / name)
    assert train.main([*common[3:], "--seed", "8", "--out", str(tmp_path / "c")]) == 0
    a, b, c = (np.load(run / "stream.npz") for run in (*runs, tmp_path / "c"))
    assert sorted(a.files) == sorted(b.files)
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name])          # bit for bit
    assert not np.array_equal(a["lstm_1_kernel"], c["lstm_1_kernel"])
