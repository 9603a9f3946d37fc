"""--strategy mirrored over two logical CPU devices trains like one device."""
import csv
import subprocess
import sys

import pytest


def _train(tmp_path, corpus_file, name, *extra):
    run = tmp_path / name
    out = subprocess.run(
        [sys.executable, "-m", "charstream.train", "--data", str(corpus_file), "--units", "16",
         "--samples", "2048", "--epochs", "2", "--learning-rate", "0.01", "--seed", "3",
         "--out", str(run), "--sample-length", "0", *extra],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    with open(run / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return out.stdout, [float(r["loss"]) for r in rows], [float(r["val_loss"]) for r in rows]


def test_mirrored_matches_single_device_at_the_same_global_batch(tmp_path, corpus_file):
    _, single, single_val = _train(tmp_path, corpus_file, "single", "--batch-size", "32")
    stdout, mirrored, mirrored_val = _train(
        tmp_path, corpus_file, "mirrored", "--strategy", "mirrored", "--cpu-devices", "2",
        "--batch-size", "16")
    assert "2 replicas" in stdout and "global batch 32" in stdout
    # Same seed, the same windows in each step, gradients averaged over the
    # replicas: the same training up to float summation order.
    assert mirrored == pytest.approx(single, abs=1e-4)
    assert mirrored_val == pytest.approx(single_val, abs=1e-4)
    assert single[-1] < single[0]


def test_bad_strategy_settings(tmp_path, capsys):
    from charstream import train

    with pytest.raises(SystemExit) as info:
        train.main(["--strategy", "ring", "--out", str(tmp_path / "r")])
    assert info.value.code == 2 and "invalid choice: 'ring'" in capsys.readouterr().err
    assert train.main(["--cpu-devices", "-1", "--out", str(tmp_path / "r")]) == 2
    assert "cpu_devices must be a non-negative integer, got -1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
