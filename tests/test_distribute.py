"""Training through tf.distribute: mirrored over two logical CPUs, multiworker
across two processes on 127.0.0.1, both against single-device training."""
import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from charstream.config import ConfigError
from charstream.training.distribute import parse_tf_config

# Same seed, the same windows in each global batch, gradients averaged over the
# replicas: the same training up to float summation order.
TOLERANCE = 1e-4
# A tiny model; 4096 windows make an epoch of 128 steps of 32 (seconds, long
# enough to kill a worker in the middle of one).
# No dropout: each replica would draw its own masks, so the match is exact only without.
TINY = ["--mode", "windows", "--dropout", "0", "--units", "16", "--samples", "4096", "--epochs", "3", "--learning-rate", "0.01",
        "--seed", "3", "--sample-length", "0"]


def _history(run):
    with open(run / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {key: [float(r[key]) for r in rows] for key in ("epoch", "loss", "val_loss")}


def _assert_same_training(history, reference):
    assert history["epoch"] == reference["epoch"] == [0, 1, 2]
    assert history["loss"] == pytest.approx(reference["loss"], abs=TOLERANCE)
    assert history["val_loss"] == pytest.approx(reference["val_loss"], abs=TOLERANCE)


@pytest.fixture(scope="module")
def single_device(tmp_path_factory, corpus_file):
    """The reference: one device, global batch 32."""
    run = tmp_path_factory.mktemp("single") / "run"
    out = subprocess.run(
        [sys.executable, "-m", "charstream.train", "--data", str(corpus_file), *TINY,
         "--batch-size", "32", "--out", str(run)],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    history = _history(run)
    assert history["loss"][-1] < history["loss"][0]
    return history


def test_mirrored_matches_single_device_at_the_same_global_batch(tmp_path, corpus_file,
                                                                  single_device):
    run = tmp_path / "mirrored"
    out = subprocess.run(
        [sys.executable, "-m", "charstream.train", "--data", str(corpus_file), *TINY,
         "--strategy", "mirrored", "--cpu-devices", "2", "--batch-size", "16",
         "--out", str(run)],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "2 replicas" in out.stdout and "global batch 32" in out.stdout
    _assert_same_training(_history(run), single_device)


# ----------------------------------------------------------------------------- multiworker

def _free_ports(n):
    """n distinct free ports (held open together so they differ, then released)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


class Workers:
    """Worker processes of one localhost cluster, each with its own TF_CONFIG and
    log file; every process is killed on exit, whatever happened."""

    def __init__(self, tmp_path, name, per_worker_args):
        ports = _free_ports(len(per_worker_args))
        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        self.logs = [tmp_path / f"{name}-{i}.log" for i in range(len(ports))]
        self.procs = []
        for i, args in enumerate(per_worker_args):
            env = {**os.environ, "TF_CONFIG": json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": i}})}
            with open(self.logs[i], "w") as log:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "charstream.train", *args], env=env,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def wait(self, timeout=300):
        deadline = time.monotonic() + timeout
        codes = [proc.wait(timeout=max(deadline - time.monotonic(), 1)) for proc in self.procs]
        return codes, [log.read_text() for log in self.logs]


def test_multiworker_matches_single_device_and_only_the_chief_writes(
        tmp_path, corpus_file, single_device):
    run, elsewhere = tmp_path / "run", tmp_path / "worker-1-out"
    common = ["--data", str(corpus_file), *TINY, "--strategy", "multiworker",
              "--batch-size", "16"]
    # Worker 1 is given another --out: if it wrote anything, it would be there.
    with Workers(tmp_path, "mw", [common + ["--out", str(run)],
                                  common + ["--out", str(elsewhere)]]) as cluster:
        codes, logs = cluster.wait()
    assert codes == [0, 0], logs
    assert "worker 0 of 2 (chief): 2 replicas across 2 workers, global batch 32" in logs[0]
    assert "worker 1 of 2: training for" in logs[1]
    _assert_same_training(_history(run), single_device)
    assert not elsewhere.exists()
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints", "config.json", "history.csv", "history.png", "model.keras",
        "stream.npz", "summary.json", "vocab.json"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch-0001.keras", "epoch-0002.keras", "epoch-0003.keras"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["samples_per_second"] > 0


@pytest.mark.parametrize("restart", ["resume", "auto-resume"])
def test_killed_worker_loses_at_most_its_epoch_and_the_run_resumes(
        tmp_path, corpus_file, single_device, restart):
    run = tmp_path / "run"
    first = ["--data", str(corpus_file), *TINY, "--strategy", "multiworker",
             "--batch-size", "16", "--out", str(run)]
    if restart == "auto-resume":  # one fixed command, as a cluster manager reruns it
        first.append("--auto-resume")
        again = first
        advice = "restart every worker with: the same command (it has --auto-resume)"
    else:
        again = ["--resume", str(run), "--strategy", "multiworker"]
        advice = f"restart every worker with: python -m charstream.train {' '.join(again)}"
    with Workers(tmp_path, "killed", [first, first]) as cluster:
        deadline = time.monotonic() + 240
        while not (run / "checkpoints" / "epoch-0001.keras").exists():
            assert time.monotonic() < deadline and cluster.procs[0].poll() is None
            time.sleep(0.02)
        cluster.procs[1].kill()  # SIGKILL in the middle of epoch 2
        # The chief notices the missing heartbeats and stops with a clear error
        # (TensorFlow's coordination service takes about 10 s), bounded here.
        code = cluster.procs[0].wait(timeout=120)
        chief_log = cluster.logs[0].read_text()
    assert code == 1, chief_log
    assert "a worker failed or left" in chief_log and advice in chief_log
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-0001.keras"]

    with Workers(tmp_path, "resumed", [again, again]) as cluster:
        codes, logs = cluster.wait()
    assert codes == [0, 0], logs
    assert "epochs 2..3" in logs[0] and "epochs 2..3" in logs[1]
    # Epoch 1 from the checkpoint, epochs 2 and 3 replayed: the run an
    # uninterrupted single device trains.
    _assert_same_training(_history(run), single_device)


def test_workers_that_disagree_refuse_to_train(tmp_path, corpus_file):
    common = ["--data", str(corpus_file), *TINY, "--strategy", "multiworker",
              "--batch-size", "16", "--out", str(tmp_path / "run")]
    with Workers(tmp_path, "disagree", [common, common + ["--seed", "4"]]) as cluster:
        codes, logs = cluster.wait(timeout=120)
    assert codes == [1, 1], logs
    for log in logs:
        assert "the workers disagree on the settings" in log
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("tf_config, message", [
    (None, "--strategy multiworker needs the TF_CONFIG environment variable"),
    ("{not json", "expected JSON with \"cluster\" and \"task\""),
    ('{"cluster": {"worker": ["a:1"]}}', "expected JSON with \"cluster\" and \"task\""),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}',
     "task index must be in [0, 2) for the 2 worker addresses, got 2"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker", "index": 0}}',
     "\"chief\" and \"worker\" tasks only, got ['ps']"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "evaluator", "index": 0}}',
     "task type must be \"worker\" or \"chief\", got 'evaluator'"),
])
def test_bad_tf_config_is_named(tf_config, message):
    environ = {} if tf_config is None else {"TF_CONFIG": tf_config}
    with pytest.raises(ConfigError) as info:
        parse_tf_config(environ)
    assert message in str(info.value)
    if tf_config:
        assert repr(tf_config) in str(info.value)


def test_the_chief_is_task_chief_else_worker_zero():
    def task(cluster, kind, index):
        return parse_tf_config({"TF_CONFIG": json.dumps(
            {"cluster": cluster, "task": {"type": kind, "index": index}})})

    workers = {"worker": ["a:1", "b:1"]}
    assert task(workers, "worker", 0).is_chief and not task(workers, "worker", 1).is_chief
    with_chief = {"chief": ["c:1"], **workers}
    assert task(with_chief, "chief", 0).is_chief and task(with_chief, "chief", 0).workers == 3
    assert not task(with_chief, "worker", 0).is_chief


def test_bad_strategy_settings(tmp_path, capsys, monkeypatch):
    from charstream import train

    with pytest.raises(SystemExit) as info:
        train.main(["--strategy", "ring", "--out", str(tmp_path / "r")])
    assert info.value.code == 2 and "invalid choice: 'ring'" in capsys.readouterr().err
    assert train.main(["--cpu-devices", "-1", "--out", str(tmp_path / "r")]) == 2
    assert "cpu_devices must be a non-negative integer, got -1" in capsys.readouterr().err
    monkeypatch.delenv("TF_CONFIG", raising=False)
    multiworker = ["--mode", "windows", "--strategy", "multiworker"]
    assert train.main([*multiworker, "--out", str(tmp_path / "r")]) == 2
    assert "needs the TF_CONFIG environment variable" in capsys.readouterr().err
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}}))
    assert train.main(multiworker) == 2
    assert "--strategy multiworker needs --out DIR" in capsys.readouterr().err
    assert train.main([*multiworker, "--cpu-devices", "2", "--out", str(tmp_path / "r")]) == 2
    assert "cpu_devices 2 applies to --strategy mirrored, not multiworker" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("n, global_batch, workers, local", [
    (4096, 32, 2, 1), (1000, 64, 2, 2), (1001, 64, 3, 1), (130, 64, 4, 1), (65, 64, 2, 1)])
def test_each_worker_builds_only_its_share_of_every_global_batch(n, global_batch, workers, local):
    import numpy as np

    from charstream.training.batches import WindowBatches
    from charstream.training.distribute import shard_starts, shard_steps

    replicas = workers * local
    steps, windows = shard_steps(n, global_batch, replicas)
    order = WindowBatches(np.zeros(n + 16, np.uint8), range(n), global_batch, 16, 36,
                          shuffle=True, seed=5, epoch=3)
    shares = [list(shard_starts(order, steps, replicas, w * local, local))
              for w in range(workers)]
    seen = []
    for b in range(steps):
        # Step b: every replica's chunk, in replica order, is exactly global batch b.
        chunks = [shares[w][b * local + j] for w in range(workers) for j in range(local)]
        assert np.array_equal(np.concatenate(chunks), order.batch_starts(b))
        sizes = [len(c) for c in chunks]
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
        seen.extend(np.concatenate(chunks))
    assert len(seen) == len(set(seen)) == windows  # no window twice in an epoch
    # Only a last batch smaller than the replicas is dropped (the 130 and 65 cases).
    remainder = n % global_batch
    assert windows == n - (remainder if remainder < replicas else 0)


def test_too_few_windows_for_the_replicas():
    from charstream.training.distribute import shard_steps

    with pytest.raises(ConfigError, match="3 windows cannot give each of 4 replicas one"):
        shard_steps(3, 64, 4)


def test_the_keras_workaround_is_undone_after_fit():
    import keras
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as keras_trainer

    from charstream.training.distribute import multiworker_keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    original, strategy = keras_trainer.reduce_per_replica, model._distribute_strategy
    with pytest.raises(ZeroDivisionError), multiworker_keras(model, tf.distribute.get_strategy()):
        assert keras_trainer.reduce_per_replica is not original
        assert model._distribute_strategy is None
        1 / 0
    assert keras_trainer.reduce_per_replica is original
    assert model._distribute_strategy is strategy


def test_stream_mode_runs_each_op_on_one_thread_windows_mode_as_tensorflow_does():
    # The pool can only be sized before TensorFlow starts (long ago in this
    # process), so each mode is asked in a fresh one.
    code = ("import sys, tensorflow as tf; from charstream.config import TrainConfig; "
            "from charstream.training.distribute import make_strategy; "
            "t = sys.argv[2]; make_strategy(TrainConfig(mode=sys.argv[1], "
            "intra_op_threads=None if t == '-' else int(t))); "
            "print(tf.config.threading.get_intra_op_parallelism_threads())")
    for mode, flag, expected in (("stream", "-", "1"), ("windows", "-", "0"),
                                 ("windows", "3", "3")):
        out = subprocess.run([sys.executable, "-c", code, mode, flag], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[-1] == expected, (mode, flag)
