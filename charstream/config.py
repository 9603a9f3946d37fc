"""The one settings object for training, and the run directory's JSON files.

`TrainConfig` is the single source of the training settings: the CLI flags of
`python -m charstream.train` are derived from its fields (help text, type and
default), and it is saved as `config.json` beside the model. No Keras here, so
a run directory can be read without starting TensorFlow.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ._io import atomic_write_text
from ._version import __version__

CONFIG_FORMAT = "charstream.run"
CONFIG_VERSION = 1


STRATEGIES = ("default", "mirrored", "multiworker")
MODES = ("windows", "stream")


class ConfigError(ValueError):
    """A setting, a corpus or a run directory that training cannot use."""


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
        None, "corpus text file (UTF-8); default: $CHARSTREAM_DATA, else tiny "
        "Shakespeare downloaded and cached by Keras")
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
    dropout: float = _setting(0.0, "input dropout of each LSTM, in [0, 1)")
    recurrent_dropout: float = _setting(
        0.0, "recurrent dropout of each LSTM, in [0, 1) (non-zero disables cuDNN)")
    batch_size: int = _setting(
        32, "stream: contiguous streams; windows: windows per training step, per "
        "replica under --strategy mirrored or multiworker")
    epochs: int = _setting(8, "total epochs (with --resume: the total to reach)")
    max_time: Optional[float] = _setting(
        None, "stop training once this much time is spent (e.g. 90s, 5m, 1h30m; "
        "counted across --resume) and finish the run as after its last epoch",
        metavar="DURATION", parse=parse_duration, default_text="none")
    samples: Optional[int] = _setting(
        None, "training data per epoch: windows, the first N windows of the training "
        "part; stream, its first N characters; 'all' for everything", metavar="N|all",
        parse=parse_samples, default_text="all")
    learning_rate: float = _setting(2e-3, "Adam learning rate (gradients clipped to [-1, 1])")
    lr_decay: bool = _setting(
        True, "decay the learning rate linearly, step by step, to 10%% of "
        "--learning-rate at the end of the run (at --epochs, or at --max-time if that "
        "comes first)")
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
        "the same training)")

    def validate(self) -> "TrainConfig":
        """Raise `ConfigError` naming the first setting out of range."""
        for name in ("seq_len", "units", "layers", "batch_size", "epochs",
                     "steps_per_execution"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.samples is not None and (
                isinstance(self.samples, bool) or not isinstance(self.samples, int)
                or self.samples < 1):
            raise ConfigError(f"samples must be a positive integer or 'all', got {self.samples!r}")
        for name in ("dropout", "recurrent_dropout", "val_fraction"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
        lr = self.learning_rate
        if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"learning_rate must be a positive number, got {lr!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 0:
            raise ConfigError(f"patience must be a non-negative integer, got {self.patience!r}")
        if self.patience and not self.val_fraction:
            raise ConfigError("patience needs validation data: val_fraction is 0")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "stream" and self.strategy != "default":
            # Each stream's state lives in one replica's variables; splitting a
            # batch across replicas would need per-replica states and streams.
            raise ConfigError(
                f"--mode stream trains on one device: its carried LSTM states cannot be "
                f"split across the replicas of --strategy {self.strategy}; use --mode "
                "windows to train on several devices")
        mt = self.max_time
        if mt is not None and (isinstance(mt, bool) or not isinstance(mt, (int, float))
                               or not math.isfinite(mt) or mt <= 0):
            raise ConfigError(f"max_time must be a positive number of seconds or None, got {mt!r}")
        if (isinstance(self.cpu_devices, bool) or not isinstance(self.cpu_devices, int)
                or self.cpu_devices < 0):
            raise ConfigError(f"cpu_devices must be a non-negative integer, got {self.cpu_devices!r}")
        if self.cpu_devices > 1 and self.strategy == "multiworker":
            # MultiWorkerMirroredStrategy trains on the GPUs of each worker, else on
            # one CPU device: logical CPUs would not be replicas.
            raise ConfigError(f"cpu_devices {self.cpu_devices} applies to --strategy mirrored, "
                              "not multiworker (which uses each worker's GPUs, else its CPU)")
        for name in ("reduce", "shuffle", "lr_decay"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.unroll is not None and not isinstance(self.unroll, bool):
            raise ConfigError(f"unroll must be true, false or null, got {self.unroll!r}")
        return self

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# Named recipes: overrides of the defaults, before any explicit flag.
PRESETS: dict[str, dict] = {
    # The tutorial exactly: its first 200,000 windows in order, batch 32, 10 epochs,
    # Adam(1e-3) without decay. The held-out tail is still scored.
    "tutorial": dict(mode="windows", seq_len=16, samples=200_000, batch_size=32,
                     epochs=10, learning_rate=1e-3, lr_decay=False, shuffle=False),
}


def write_run_config(path: Path, config: TrainConfig, corpus: dict, vocab_size: int) -> None:
    """Write `config.json`: every setting, the corpus and the package version."""
    doc = {
        "format": CONFIG_FORMAT,
        "version": CONFIG_VERSION,
        "charstream_version": __version__,
        "settings": dataclasses.asdict(config),
        "corpus": corpus,          # {"path": ..., "sha256": ..., "characters": ...}
        "vocab_size": vocab_size,
    }
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")


def read_run_config(run_dir: str | os.PathLike) -> dict:
    """Read and check a run directory's `config.json`.

    Returns:
        The document, with `"settings"` turned into a `TrainConfig`.

    Raises:
        ConfigError: naming the file, if it is missing, not JSON, or not a run config.
    """
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise ConfigError(f"{run_dir}: not a directory")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{run_dir}: not a charstream run (no config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: unreadable: {err}") from None
    if not isinstance(doc, dict) or doc.get("format") != CONFIG_FORMAT:
        raise ConfigError(f"{path}: not a charstream run config")
    if doc.get("version") != CONFIG_VERSION:
        raise ConfigError(
            f"{path}: unsupported config version {doc.get('version')!r} (expected {CONFIG_VERSION})")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = doc.get("settings")
    if not isinstance(settings, dict) or set(settings) - known:
        raise ConfigError(f"{path}: \"settings\" must hold only TrainConfig fields")
    try:
        doc["settings"] = TrainConfig(**settings).validate()
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return doc
