"""`TrainConfig`: every training setting, validated, and the named presets.

`TrainConfig` is the single source of the training settings: the CLI flags of
`python -m charstream.train` are derived from its fields (help text, type,
default, choices and parser live in each field's metadata), and `charstream.run`
saves it as the run's `config.json`. No Keras here.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Optional

from . import _checks

STRATEGIES = ("default", "mirrored", "multiworker")
MODES = ("windows", "stream")


class ConfigError(ValueError):
    """A setting or a corpus that training cannot use (a bad run directory is its
    subclass `charstream.run.RunError`)."""


def _setting(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([hms]?)")
_UNIT = {"h": 3600, "m": 60, "s": 1, "": 1}


def parse_samples(text: str) -> Optional[int]:
    """`--samples`: a positive integer, or 'all' (None)."""
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"expected a positive integer or 'all', got {text!r}")
    return value


def parse_duration(text: str) -> float:
    """Seconds in a duration such as `90`, `90s`, `5m`, `1.5h` or `1h30m`.

    Raises:
        ValueError: quoting `text`, if it is not a positive duration.
    """
    parts = _DURATION.findall(text.strip().lower()) if isinstance(text, str) else []
    if not parts or "".join(n + u for n, u in parts) != text.strip().lower():
        raise ValueError(f"expected a duration such as 90s, 5m or 1h30m, got {text!r}")
    seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    if not seconds > 0:
        raise ValueError(f"expected a positive duration, got {text!r}")
    return seconds


@dataclass
class TrainConfig:
    """Every training setting, with its default. Field order is the CLI's order."""

    data: Optional[str] = _setting(
        None, "corpus text file (UTF-8)", metavar="PATH",
        default_text="$CHARSTREAM_DATA, else tiny Shakespeare downloaded and cached by Keras")
    reduce: bool = _setting(
        True, "lowercase and map to the tutorial's 36-character alphabet; "
        "--no-reduce trains on the corpus's raw characters (up to 256)")
    mode: str = _setting(
        "stream", "stream: the text as --batch-size contiguous streams, --seq-len "
        "characters of each per step, a target at every character, the LSTM state "
        "carried from step to step (how the model streams); windows: the tutorial's "
        "shuffled --seq-len windows, each from a zero state, one target each",
        choices=MODES)
    seq_len: int = _setting(
        16, "characters per training window (windows) or per step of each stream "
        "(stream: how far back gradients flow); the tutorial's 16")
    units: int = _setting(128, "LSTM width (the tutorial's 128)")
    layers: int = _setting(1, "stacked LSTM layers")
    dropout: float = _setting(
        0.05, "input dropout of each LSTM, in [0, 1): each step, a share of the input "
        "features is dropped (for layer 1, the one-hot characters)")
    recurrent_dropout: float = _setting(
        0.0, "recurrent dropout of each LSTM, in [0, 1) (non-zero disables cuDNN)")
    output_dropout: float = _setting(
        0.0, "dropout on each LSTM's outputs (what the next LSTM and the softmax read), "
        "in [0, 1): the same units dropped at every step of a batch (variational)")
    weight_drop: float = _setting(
        0.0, "DropConnect on each LSTM's recurrent kernel while training, in [0, 1): "
        "that share of the hidden-to-hidden weights zeroed, one mask per batch "
        "(AWD-LSTM's weight drop); not with --recurrent-dropout")
    batch_size: int = _setting(
        32, "stream: contiguous streams; windows: windows per training step, per "
        "replica under --strategy mirrored or multiworker")
    epochs: int = _setting(24, "total epochs (with --resume: the total to reach)")
    max_time: Optional[float] = _setting(
        None, "stop training once this much time is spent (e.g. 90s, 5m, 1h30m; "
        "counted across --resume) and finish the run as after its last epoch",
        metavar="DURATION", parse=parse_duration, default_text="none")
    samples: Optional[int] = _setting(
        None, "training data per epoch: windows, the first N windows of the training "
        "part; stream, its first N characters; 'all' for everything", metavar="N|all",
        parse=parse_samples, default_text="all")
    learning_rate: float = _setting(3e-3, "Adam learning rate (gradients clipped to [-1, 1])")
    lr_decay: bool = _setting(
        True, "decay the learning rate linearly, epoch by epoch, to --lr-final times "
        "--learning-rate in the last epoch (or, with --max-time, by the time spent, "
        "whichever is further along)")
    lr_final: float = _setting(
        0.02, "where --lr-decay ends, as a fraction of --learning-rate, in (0, 1]")
    val_fraction: float = _setting(
        0.1, "held-out fraction: the contiguous tail of the corpus, never trained on; "
        "0 turns validation off")
    shuffle: bool = _setting(
        True, "windows: shuffle the window order every epoch (stream mode moves the "
        "streams' start by a seeded offset instead)")
    seed: int = _setting(0, "seed of the initial weights and the shuffle order")
    patience: int = _setting(
        0, "stop after this many epochs without a better validation loss, "
        "keeping the best weights; 0 = never stop early")
    strategy: str = _setting(
        "default", "default: one device; mirrored: tf.distribute.MirroredStrategy over "
        "the local GPUs (or --cpu-devices logical CPUs); multiworker: "
        "MultiWorkerMirroredStrategy across the processes or machines in $TF_CONFIG. "
        "--batch-size is per replica", choices=STRATEGIES)
    cpu_devices: int = _setting(
        0, "split the CPU into this many logical devices for --strategy mirrored "
        "(to try it on a machine without GPUs); 0 = the devices as they are")
    unroll: Optional[bool] = _setting(
        None, "unroll the LSTMs over --seq-len steps: faster on a CPU, but a GPU then "
        "cannot use cuDNN", default_text="on when no GPU is visible")
    steps_per_execution: int = _setting(
        32, "training steps per call into the compiled graph (fewer Python round trips; "
        "the same training); in stream mode, a chunk of that many consecutive batches "
        "that a loop inside the graph trains on one after another")
    intra_op_threads: Optional[int] = _setting(
        None, "threads one TensorFlow op may use; 0 = TensorFlow's choice (every core). "
        "The stream step's ops are small: run whole, each on one core, while "
        "TensorFlow's inter-op threads run independent ops side by side: faster on a "
        "2-core CPU (docs/training.md), and the same arithmetic",
        default_text="1 in stream mode, TensorFlow's choice in windows mode")
    fused_lstm: bool = _setting(
        True, "stream mode: train the LSTMs with charstream's fused C++ op (a whole "
        "sequence forward and back, streams split over the cores; compiled with g++ "
        "on first use and cached), else with TensorFlow's ops step by step")
    jit_compile: Optional[bool] = _setting(
        None, "compile the training step with XLA: in stream mode the whole chunk of "
        "--steps-per-execution steps, forward, back and Adam, as one computation",
        default_text="in stream mode, on when no GPU is visible, there is no "
        "dropout (whose masks XLA draws differently) and --intra-op-threads is not 1; "
        "windows, off")

    def validate(self) -> "TrainConfig":
        """Raise `ConfigError` naming the first setting out of range."""
        err = ConfigError
        for name in ("seq_len", "units", "layers", "batch_size", "epochs",
                     "steps_per_execution"):
            _checks.positive_int(getattr(self, name), name, err)
        _checks.optional_positive_int(self.samples, "samples", "'all'", err)
        for name in ("dropout", "recurrent_dropout", "output_dropout", "weight_drop",
                     "val_fraction"):
            _checks.fraction(getattr(self, name), name, err)
        if self.weight_drop and self.recurrent_dropout:
            raise err(f"weight_drop ({self.weight_drop!r}) and recurrent_dropout "
                      f"({self.recurrent_dropout!r}) cannot both be set: choose one")
        _checks.positive_number(self.learning_rate, "learning_rate", err)
        _checks.positive_number(self.lr_final, "lr_final", err)
        if self.lr_final > 1:
            raise err(f"lr_final must be in (0, 1], got {self.lr_final!r}")
        if self.intra_op_threads is not None:
            _checks.non_negative_int(self.intra_op_threads, "intra_op_threads", err)
        for name in ("seed", "patience", "cpu_devices"):
            _checks.non_negative_int(getattr(self, name), name, err)
        for name in ("reduce", "shuffle", "lr_decay", "fused_lstm"):
            _checks.boolean(getattr(self, name), name, err)
        for name in ("unroll", "jit_compile"):
            if getattr(self, name) is not None:
                _checks.boolean(getattr(self, name), name, err)
        if self.max_time is not None:
            _checks.positive_number(self.max_time, "max_time", err)
        _checks.one_of(self.strategy, "strategy", STRATEGIES, err)
        _checks.one_of(self.mode, "mode", MODES, err)
        if self.patience and not self.val_fraction:
            raise err("patience needs validation data: val_fraction is 0")
        if self.mode == "stream" and self.strategy != "default":
            # Each stream's state lives in one replica's variables; splitting a
            # batch across replicas would need per-replica states and streams.
            raise err(
                f"--mode stream trains on one device: its carried LSTM states cannot be "
                f"split across the replicas of --strategy {self.strategy}; use --mode "
                "windows to train on several devices")
        if self.cpu_devices > 1 and self.strategy == "multiworker":
            # MultiWorkerMirroredStrategy trains on the GPUs of each worker, else on
            # one CPU device: logical CPUs would not be replicas.
            raise err(f"cpu_devices {self.cpu_devices} applies to --strategy mirrored, "
                      "not multiworker (which uses each worker's GPUs, else its CPU)")
        return self

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# Named recipes: overrides of the defaults, before any explicit flag.
PRESETS: dict[str, dict] = {
    # The tutorial exactly: its first 200,000 windows in order, batch 32, 10 epochs,
    # Adam(1e-3) without decay. The held-out tail is still scored.
    "tutorial": dict(mode="windows", seq_len=16, units=128, layers=1, dropout=0.0,
                     samples=200_000, batch_size=32, epochs=10, learning_rate=1e-3,
                     lr_decay=False, shuffle=False),
    # A bigger model: two LSTM(256) layers (0.8 M parameters), 64 streams of
    # 32-step chunks, input dropout 0.1 and weight drop 0.25 (without it the model
    # overfits: 1.41 nats held out at best): 1.393 nats in about 27 minutes on a
    # 2-core CPU (docs/training.md).
    "large": dict(mode="stream", units=256, layers=2, dropout=0.1, weight_drop=0.25,
                  batch_size=64, seq_len=32, learning_rate=4e-3, lr_final=0.05, epochs=30),
}
