"""python -m charstream.train: learning, the run directory, resume, bad input."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from charstream import train
from charstream.training.plan import config_from_args
from charstream.training.plan import plan as plan_run
from charstream.config import PRESETS, TrainConfig

TINY = ["--mode", "windows", "--units", "16", "--batch-size", "64", "--samples", "1000",
        "--sample-length", "0"]
# 8 streams of 1,312 characters of the 10,636-character training part: 82 steps an epoch.
STREAM_TINY = ["--mode", "stream", "--units", "16", "--batch-size", "8", "--sample-length", "0"]


def _rows(run):
    with open(run / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("fixture", ["trained_run", "stream_run"])
def test_run_directory_contents(request, fixture, corpus_file):
    trained_run = request.getfixturevalue(fixture)
    epochs = 2 if fixture == "trained_run" else 3
    names = {p.name for p in trained_run.iterdir()}
    assert {"model.keras", "vocab.json", "config.json", "checkpoints", "history.csv",
            "history.png", "summary.json", "sample.txt"} <= names
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")]
    assert sorted(p.name for p in (trained_run / "checkpoints").iterdir()) == [
        f"epoch-{e:04d}.keras" for e in range(1, epochs + 1)]
    doc = json.loads((trained_run / "config.json").read_text())
    assert doc["settings"]["units"] == 24 and doc["settings"]["epochs"] == epochs
    assert set(doc["settings"]) == set(TrainConfig.__dataclass_fields__)
    from charstream.data.corpus import file_sha256

    assert doc["corpus"]["sha256"] == file_sha256(corpus_file)
    assert doc["corpus"]["path"] == str(corpus_file.resolve())
    assert doc["charstream_version"]
    assert [r["epoch"] for r in _rows(trained_run)] == [str(e) for e in range(epochs)]
    assert (trained_run / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["epochs"] == epochs and summary["ended_by"] == "epochs"
    assert summary["mode"] == doc["settings"]["mode"]
    assert summary["val_bits_per_char"] == pytest.approx(summary["val_loss"] / np.log(2))
    assert len((trained_run / "sample.txt").read_text()) == 30


@pytest.mark.parametrize("mode, batch", [("windows", "32"), ("stream", "4")])
def test_learns_a_small_repetitive_corpus(tmp_path, capsys, mode, batch):
    path = tmp_path / "abc.txt"
    path.write_text("the cat sat on the mat.\n" * 300)
    rc = train.main(["--data", str(path), "--mode", mode, "--units", "32", "--epochs", "4",
                     "--batch-size", batch, "--learning-rate", "0.01",
                     "--out", str(tmp_path / "run"), "--sample-length", "0"])
    assert rc == 0
    rows = _rows(tmp_path / "run")
    first, last = float(rows[0]["loss"]), float(rows[-1]["loss"])
    assert last < 0.2 < first  # ln(36) = 3.58 untrained; the text is deterministic
    assert float(rows[-1]["val_accuracy"]) > 0.95
    out = capsys.readouterr().out
    unit = "windows/s" if mode == "windows" else "targets/s"
    assert "validation loss" in out and "bits/char" in out and unit in out


def test_resume_continues_at_the_right_epoch(tmp_path, corpus_file, capsys):
    run = tmp_path / "run"
    assert train.main(["--data", str(corpus_file), *TINY, "--epochs", "1", "--out", str(run)]) == 0
    config_before = (run / "config.json").read_text()
    assert train.main(["--resume", str(run), "--epochs", "3", "--sample-length", "0"]) == 0
    out = capsys.readouterr().out
    assert "epochs 2..3" in out and "Epoch 2/3" in out and "Epoch 1/3" not in out
    assert [r["epoch"] for r in _rows(run)] == ["0", "1", "2"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch-0001.keras", "epoch-0002.keras", "epoch-0003.keras"]
    doc = json.loads((run / "config.json").read_text())
    assert doc == json.loads(config_before)  # the run keeps its settings
    # Finished: resuming to the same total has nothing to do.
    assert train.main(["--resume", str(run), "--epochs", "3"]) == 2
    assert "already trained for 3 epochs" in capsys.readouterr().err


@pytest.mark.parametrize("settings", [TINY, STREAM_TINY, [*STREAM_TINY, "--weight-drop", "0.3"]],
                         ids=["windows", "stream", "stream-weight-drop"])
def test_a_resumed_run_replays_the_uninterrupted_one(tmp_path, corpus_file, settings,
                                                    monkeypatch):
    # The order of each epoch (windows: the shuffle; stream: the streams' offset)
    # comes from (seed, epoch) alone, Keras does not reshuffle batches on top,
    # stream states restart with every epoch, and the learning rate is a function
    # of the step, so a run interrupted after epoch 1 and resumed trains the same
    # epoch 2 as one trained straight through.
    from charstream.training.callbacks import Checkpoint

    common = ["--data", str(corpus_file), *settings, "--seed", "4", "--epochs", "2"]
    assert train.main([*common, "--out", str(tmp_path / "straight")]) == 0
    save = Checkpoint.on_epoch_end

    def interrupted(self, epoch, logs=None):  # Ctrl-C right after epoch 1's checkpoint
        save(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "on_epoch_end", interrupted)
    assert train.main([*common, "--out", str(tmp_path / "split")]) == 130
    monkeypatch.setattr(Checkpoint, "on_epoch_end", save)
    assert train.main(["--resume", str(tmp_path / "split"), "--sample-length", "0"]) == 0
    straight, split = _rows(tmp_path / "straight"), _rows(tmp_path / "split")
    assert [r["epoch"] for r in split] == ["0", "1"]
    for key in ("loss", "val_loss", "learning_rate"):
        assert [float(r[key]) for r in split] == pytest.approx(
            [float(r[key]) for r in straight], rel=1e-5)


@pytest.mark.parametrize("settings", [
    ["--mode", "windows", "--batch-size", "8", "--samples", "8000"],    # 1,000 steps an epoch
    ["--mode", "stream", "--batch-size", "1", "--seq-len", "4"],         # 2,655 steps an epoch
], ids=["windows", "stream"])
def test_resume_after_sigkill_mid_epoch(tmp_path, corpus_file, settings):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "charstream.train", "--data", str(corpus_file), "--units", "16",
           *settings, "--epochs", "4", "--out", str(run), "--sample-length", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (run / "checkpoints" / "epoch-0001.keras").exists():
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.time() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # well inside epoch 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (run / "model.keras").exists()
    done = len(list((run / "checkpoints").glob("epoch-*.keras")))
    assert 1 <= done < 4
    rc = subprocess.run([sys.executable, "-m", "charstream.train", "--resume", str(run),
                         "--sample-length", "0"], capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr
    assert f"epochs {done + 1}..4" in rc.stdout
    assert [r["epoch"] for r in _rows(run)] == ["0", "1", "2", "3"]
    assert (run / "model.keras").exists()
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]



DYING_WRITE = """
import os, signal, sys
from pathlib import Path

writes, original = [], Path.write_text


def dying_write(self, text, *args, **kwargs):
    # history.csv is rewritten through a temporary file after every epoch; on
    # epoch 2's rewrite, write half of it and die as a SIGKILL would kill.
    if self.name.startswith(".history.csv."):
        writes.append(self)
        if len(writes) == 2:
            original(self, text[:len(text) // 2], *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
    return original(self, text, *args, **kwargs)


Path.write_text = dying_write
from charstream import train
sys.exit(train.main(sys.argv[1:]))
"""


def test_a_kill_during_the_history_write_loses_nothing(tmp_path, corpus_file):
    run = tmp_path / "run"
    argv = ["--data", str(corpus_file), *STREAM_TINY, "--epochs", "3", "--out", str(run)]
    out = subprocess.run([sys.executable, "-c", DYING_WRITE, *argv], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == -signal.SIGKILL, out.stderr
    # The half-written temporary file is there; history.csv is epoch 1's, whole.
    assert [p.name for p in run.glob(".history.csv.*")]
    assert [r["epoch"] for r in _rows(run)] == ["0"]
    assert (run / "history.csv").read_text().endswith("\n")
    # Epoch 2's checkpoint came after the history write: not there either.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-0001.keras"]
    rc = subprocess.run([sys.executable, "-m", "charstream.train", "--resume", str(run),
                         "--sample-length", "0"], capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr
    assert [r["epoch"] for r in _rows(run)] == ["0", "1", "2"]
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]

def test_a_stop_asked_during_fit_ends_it_after_the_current_step():
    # Inside fit the handler only sets the flag; StopWhenAsked raises after the
    # step, or at fit's start if the signal came before it, and marks when it watches.
    from charstream.training.callbacks import StopFlag, StopWhenAsked

    stop = StopWhenAsked(StopFlag)
    try:
        stop.on_train_begin()
        assert StopFlag.fitting
        stop.on_train_batch_end(0)  # nothing asked
        StopFlag.requested = True
        for hook in (stop.on_train_batch_end, stop.on_test_batch_end, stop.on_epoch_end):
            with pytest.raises(KeyboardInterrupt):
                hook(0)
        with pytest.raises(KeyboardInterrupt):
            stop.on_train_begin()
        stop.on_train_end()
        assert not StopFlag.fitting
    finally:
        StopFlag.requested = StopFlag.fitting = False


def _stop_a_run(tmp_path, corpus_file, signals):
    """Start a small windows run, send `signals` once epoch 1's checkpoint is on
    disk, and return `(returncode, stderr)`. faulthandler: a crash shows its stack."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-X", "faulthandler", "-m", "charstream.train", "--data",
           str(corpus_file), "--units", "16", "--mode", "windows", "--batch-size", "8",
           "--samples", "8000", "--epochs", "5", "--out", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "epoch-0001.keras").exists() and time.time() < deadline:
        time.sleep(0.05)
    for sig in signals:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGINT, signal.SIGINT]],
                         ids=["sigterm", "sigint-twice"])
def test_a_stop_signal_stops_cleanly_and_says_how_to_resume(tmp_path, corpus_file, signals):
    code, err = _stop_a_run(tmp_path, corpus_file, signals)
    assert code == 130, err
    assert f"--resume {tmp_path / 'run'}" in err and "Traceback" not in err, err


def test_a_stream_run_prints_nothing_on_stderr(tmp_path, corpus_file):
    """TensorFlow's start-up and XLA's compile messages stay out of what a user sees:
    a healthy run writes nothing on stderr (`--verbose` shows them)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CHARSTREAM_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")}
    done = subprocess.run(
        [sys.executable, "-m", "charstream.train", "--data", str(corpus_file), *STREAM_TINY,
         "--epochs", "1", "--samples", "3000", "--dropout", "0",  # XLA compiles too
         "--out", str(tmp_path / "run")],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "tensorflow" not in subprocess.run(
        [sys.executable, "-c", "import sys, charstream.train; print(*sys.modules)"],
        env=env, capture_output=True, text=True, timeout=120).stdout.split()


def _bad(capsys, argv, match, out=None):
    rc = train.main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert match in err
    assert len(err.strip().splitlines()) == 1, err
    if out is not None:
        assert not out.exists()
    return err


@pytest.mark.parametrize("extra, match", [
    (["--units", "0"], "units must be a positive integer, got 0"),
    (["--dropout", "-0.5"], "dropout must be in [0, 1), got -0.5"),
    (["--batch-size", "0"], "batch_size must be a positive integer, got 0"),
    (["--val-fraction", "1"], "val_fraction must be in [0, 1), got 1.0"),
    (["--learning-rate", "nan"], "learning_rate must be a positive number"),
    (["--patience", "2", "--val-fraction", "0"], "patience needs validation data"),
    (["--weight-drop", "1"], "weight_drop must be in [0, 1), got 1.0"),
    (["--intra-op-threads", "-1"], "intra_op_threads must be a non-negative integer, got -1"),
    (["--weight-drop", "0.2", "--recurrent-dropout", "0.1"],
     "weight_drop (0.2) and recurrent_dropout (0.1) cannot both be set: choose one"),
])
def test_out_of_range_settings(tmp_path, capsys, corpus_file, extra, match):
    out = tmp_path / "run"
    _bad(capsys, ["--data", str(corpus_file), "--out", str(out), *extra], match, out)


def test_bad_flag_values_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["--samples", "lots", "--out", str(tmp_path / "r")])
    assert info.value.code == 2
    assert "expected a positive integer or 'all', got 'lots'" in capsys.readouterr().err


def test_bad_corpora(tmp_path, capsys):
    out = tmp_path / "run"
    _bad(capsys, ["--data", str(tmp_path / "missing.txt"), "--out", str(out)],
         "missing.txt: no such corpus file", out)
    short = tmp_path / "short.txt"
    short.write_text("a" * 100)
    _bad(capsys, ["--data", str(short), "--out", str(out)], "validation part", out)
    short.write_text("a" * 10)
    _bad(capsys, ["--data", str(short), "--out", str(out), "--val-fraction", "0"],
         "training part has 10 characters", out)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe" * 100)
    _bad(capsys, ["--data", str(binary), "--out", str(out)], "not UTF-8 text", out)


def test_out_must_be_new(tmp_path, capsys, corpus_file):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _bad(capsys, ["--data", str(corpus_file), "--out", str(out)], "already exists")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_bad_resumes(tmp_path, capsys, corpus_file, trained_run):
    _bad(capsys, ["--resume", str(tmp_path)], "not a charstream run (no config.json)")
    _bad(capsys, ["--resume", str(tmp_path / "nope")], "not a directory")
    _bad(capsys, ["--resume", str(trained_run), "--epochs", "5", "--units", "99"],
         "--units cannot change on --resume")
    _bad(capsys, ["--resume", str(trained_run), "--out", str(tmp_path / "x")], "exclusive")
    # A copy of the run whose corpus or vocabulary no longer matches.
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    vocab = json.loads((run / "vocab.json").read_text())
    vocab["chars"] = vocab["chars"][::-1]
    (run / "vocab.json").write_text(json.dumps(vocab))
    _bad(capsys, ["--resume", str(run), "--epochs", "3"], "does not match the vocabulary")
    doc = json.loads((run / "config.json").read_text())
    changed = tmp_path / "changed.txt"
    changed.write_text(corpus_file.read_text() + "more")
    doc["settings"]["data"] = doc["corpus"]["path"] = str(changed)
    (run / "config.json").write_text(json.dumps(doc))
    _bad(capsys, ["--resume", str(run), "--epochs", "3"], "the corpus changed")
    _bad(capsys, ["--resume", str(trained_run), "--epochs", "3", "--data", str(changed)],
         "the corpus changed")


def test_resume_finds_the_same_corpus_at_another_path(tmp_path, corpus_file, trained_run):
    moved = tmp_path / "elsewhere.txt"  # e.g. another machine's mount of the corpus
    moved.write_bytes(corpus_file.read_bytes())
    args = train.build_parser().parse_args(
        ["--resume", str(trained_run), "--epochs", "3", "--data", str(moved)])
    plan = plan_run(args)
    corpus, config, done, checkpoint = plan.corpus, plan.config, plan.initial_epoch, plan.checkpoint
    assert corpus.path == moved and config.data == str(moved)
    assert done == 2 and checkpoint.name == "epoch-0002.keras"


def test_flags_come_from_the_config_and_presets():
    parser = train.build_parser()
    flags = {a.dest for a in parser._actions}
    assert set(TrainConfig.__dataclass_fields__) <= flags
    args = parser.parse_args(["--preset", "tutorial", "--epochs", "3", "--no-shuffle"])
    config, given = config_from_args(args)
    assert given == {"epochs", "shuffle"}
    assert config.samples == 200_000 and config.batch_size == 32 and config.epochs == 3
    assert PRESETS["tutorial"]["shuffle"] is False
    assert config_from_args(parser.parse_args(["--samples", "all"]))[0].samples is None


def test_same_seed_same_initial_weights(corpus_file):
    import keras

    from charstream.model import build_training_model

    weights = []
    for _ in range(2):
        keras.utils.set_random_seed(5)
        weights.append(build_training_model(units=8).get_weights())
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def test_auto_resume_continues_the_run_in_out_or_starts_it(tmp_path, corpus_file, capsys):
    run = tmp_path / "run"
    command = ["--data", str(corpus_file), "--mode", "windows", "--units", "8", "--samples", "256",
               "--batch-size", "64", "--sample-length", "0", "--out", str(run), "--auto-resume"]
    assert train.main(command + ["--epochs", "1"]) == 0    # nothing there yet: a new run
    assert f"writing {run}" in capsys.readouterr().out
    assert train.main(command + ["--epochs", "2"]) == 0    # the same command continues it
    out = capsys.readouterr().out
    assert f"resuming {run}" in out and "epochs 2..2" in out
    with open(run / "history.csv", newline="") as fh:
        assert [row["epoch"] for row in csv.DictReader(fh)] == ["0", "1"]
    _bad(capsys, command + ["--epochs", "3", "--units", "9"], "--units cannot change on --resume")
    _bad(capsys, ["--auto-resume", "--resume", str(run)], "--auto-resume goes with --out DIR")
