"""The run directory: the contract between training and streaming, in one place.

A run directory holds

    config.json                    every setting, the corpus (path, sha256, size), the version
    vocab.json                     the vocabulary
    checkpoints/epoch-NNNN.keras   the whole model and optimizer after each epoch
    history.csv, history.png       one row per epoch; the plot of it
    model.keras                    the final model
    stream.npz                     its weights for the native backend (charstream.native)
    summary.json                   what the run reached
    sample.txt                     text streamed from the final model

`RunDir` is the only code that spells these names. It creates a run, reads one
back cross-checked (config against vocabulary, model and weights against both,
the corpus against its recorded sha256 whenever it is read again), finds the
newest checkpoint, and owns the train/held-out split. Every file is written to a
temporary name and renamed (`charstream._io`). A bad run directory is one error
type, `RunError`; a missing file is a `FileNotFoundError` naming it.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from ._io import atomic_path, atomic_write_text
from ._version import __version__
from .config import ConfigError, TrainConfig
from .text import Vocabulary, corpus_path, encode_reduced, file_sha256, load_corpus

CONFIG_FORMAT = "charstream.run"
CONFIG_VERSION = 1
_CHECKPOINT = re.compile(r"^epoch-(\d{4,})\.keras$")


class RunError(ConfigError):
    """A run directory, or a file in it, that cannot be used; the message names it."""


def split_index(n_ids: int, val_fraction: float) -> int:
    """Where the held-out tail begins: training reads `ids[:split]`, evaluation
    `ids[split:]`. The one definition of the split."""
    return n_ids if val_fraction == 0 else int(n_ids * (1 - val_fraction))


def split_starts(n_ids: int, seq_len: int, val_fraction: float) -> tuple[range, range]:
    """Window starts for training and validation, from disjoint parts of the corpus.

    The corpus is cut at `split_index(n_ids, val_fraction)`. A training
    window and its target lie wholly in `ids[:split]`, a validation window in the
    contiguous tail `ids[split:]`, so no character is in both.

    Returns:
        `(train_starts, val_starts)` as `range`s (no memory per window);
        `val_starts` is empty when `val_fraction == 0`.

    Raises:
        ValueError: if either part is too short for one window.
    """
    split = split_index(n_ids, val_fraction)
    n_train = split - seq_len
    n_val = (n_ids - split) - seq_len if val_fraction else 0
    if n_train < 1:
        raise ValueError(
            f"the training part has {split} characters, too few for one window of "
            f"seq_len {seq_len} plus its target (need at least {seq_len + 1})")
    if val_fraction and n_val < 1:
        raise ValueError(
            f"the validation part (val_fraction {val_fraction}) has {n_ids - split} "
            f"characters, too few for one window of seq_len {seq_len} plus its target; "
            "use a longer corpus, a larger --val-fraction, or --val-fraction 0")
    return range(n_train), range(split, split + max(n_val, 0))



@dataclasses.dataclass
class Corpus:
    """A corpus as training and evaluation use it."""

    path: Path
    sha256: str
    ids: np.ndarray            # (n,) uint8
    vocab: Vocabulary

    def describe(self) -> dict:
        return {"path": str(self.path.resolve()), "sha256": self.sha256,
                "characters": int(len(self.ids))}


def read_corpus(config: TrainConfig) -> Corpus:
    """Load the corpus the config names, reduced (or not) and encoded.

    Raises:
        ConfigError: naming the file, if it is missing, unreadable, not UTF-8,
            empty, or (with `--no-reduce`) has more than 256 symbols.
    """
    path = corpus_path(config.data)
    try:
        text = load_corpus(path)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None
    if config.reduce:
        vocab, ids = Vocabulary.default(), encode_reduced(text)
    else:
        try:
            vocab = Vocabulary.from_text(text)
        except ValueError as err:
            raise ConfigError(f"{path}: --no-reduce: {err}") from None
        ids = vocab.encode(text)
    return Corpus(path, file_sha256(path), ids, vocab)


@dataclasses.dataclass
class Run:
    """What a run directory records, cross-checked."""

    settings: TrainConfig
    vocab: Vocabulary
    corpus: dict               # {"path", "sha256", "characters"}


class RunDir:
    """One run directory, by path; nothing is read or written until asked."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ names

    config_file = property(lambda self: self.path / "config.json")
    vocab_file = property(lambda self: self.path / "vocab.json")
    summary_file = property(lambda self: self.path / "summary.json")
    history_file = property(lambda self: self.path / "history.csv")
    plot_file = property(lambda self: self.path / "history.png")
    model_file = property(lambda self: self.path / "model.keras")
    stream_file = property(lambda self: self.path / "stream.npz")
    sample_file = property(lambda self: self.path / "sample.txt")
    checkpoints = property(lambda self: self.path / "checkpoints")

    def checkpoint(self, epoch: int) -> Path:
        """`checkpoints/epoch-NNNN.keras`, the state after `epoch` finished epochs."""
        return self.checkpoints / f"epoch-{epoch:04d}.keras"

    def newest_checkpoint(self) -> tuple[int, Path | None]:
        """`(epochs, path)` of the highest-numbered checkpoint, or `(0, None)`
        (temporary files never match)."""
        best = (0, None)
        for path in self.checkpoints.glob("epoch-*.keras"):
            match = _CHECKPOINT.match(path.name)
            if match and int(match.group(1)) > best[0]:
                best = (int(match.group(1)), path)
        return best

    def remove_temporaries(self) -> list[Path]:
        """Delete the temporary files a killed process left (`charstream._io` names
        them `.NAME.*.tmp*`); nothing reads them. Returns what was removed."""
        stale = [p for folder in (self.path, self.checkpoints) if folder.is_dir()
                 for p in folder.glob(".*.tmp*") if p.is_file()]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    # ------------------------------------------------------------------ creating

    @classmethod
    def new(cls, out: str | os.PathLike | None) -> "RunDir":
        """The directory a new run will write: `out`, else `runs/<timestamp>`.

        Raises:
            RunError: if it exists and is not an empty directory.
        """
        run = cls(out if out else Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
        if run.path.exists() and (not run.path.is_dir() or any(run.path.iterdir())):
            raise RunError(
                f"{run.path}: already exists and is not an empty directory "
                "(use --resume to continue a run, or choose another --out)")
        return run

    def create(self, config: TrainConfig, corpus: Corpus) -> None:
        """Make the directory and write `vocab.json` and `config.json`."""
        self.path.mkdir(parents=True, exist_ok=True)
        corpus.vocab.save(self.vocab_file)
        doc = {"format": CONFIG_FORMAT, "version": CONFIG_VERSION,
               "charstream_version": __version__, "settings": dataclasses.asdict(config),
               "corpus": corpus.describe(), "vocab_size": corpus.vocab.size}
        atomic_write_text(self.config_file, json.dumps(doc, indent=2) + "\n")

    # ------------------------------------------------------------------ reading

    def read(self, against_alphabet: bool = True) -> Run:
        """`config.json` and `vocab.json`, each checked, and checked against each other.

        A reduced run's vocabulary must be `ALPHABET`; a caller about to re-read the
        corpus passes `against_alphabet=False` and lets `read_corpus` hold the
        vocabulary to the corpus itself (the stronger check, with its own message).

        Raises:
            RunError: naming the file that is missing, not JSON, not a charstream
                file, or disagrees with the other.
        """
        doc = self._read_config()
        try:
            vocab = Vocabulary.load(self.vocab_file)
        except (FileNotFoundError, ValueError) as err:
            raise RunError(str(err)) from None
        settings: TrainConfig = doc["settings"]
        if against_alphabet and settings.reduce and vocab != Vocabulary.default():
            raise RunError(f"{self.path}: config.json says reduce, but vocab.json is not ALPHABET")
        corpus = doc.get("corpus")
        if not isinstance(corpus, dict):
            raise RunError(f"{self.config_file}: \"corpus\" must be an object")
        return Run(settings, vocab, corpus)

    def _read_config(self) -> dict:
        if not self.path.is_dir():
            raise RunError(f"{self.path}: not a directory")
        try:
            doc = json.loads(self.config_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunError(f"{self.path}: not a charstream run (no config.json)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RunError(f"{self.config_file}: unreadable: {err}") from None
        if not isinstance(doc, dict) or doc.get("format") != CONFIG_FORMAT:
            raise RunError(f"{self.config_file}: not a charstream run config")
        if doc.get("version") != CONFIG_VERSION:
            raise RunError(f"{self.config_file}: unsupported config version "
                           f"{doc.get('version')!r} (expected {CONFIG_VERSION})")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        settings = doc.get("settings")
        if not isinstance(settings, dict) or set(settings) - known:
            raise RunError(f"{self.config_file}: \"settings\" must hold only TrainConfig fields")
        try:
            doc["settings"] = TrainConfig(**settings).validate()
        except ConfigError as err:
            raise RunError(f"{self.config_file}: {err}") from None
        return doc

    def check_depth(self, name: str, depth, vocab: Vocabulary) -> None:
        """Raise unless the file `name` reads and predicts `vocab.size` symbols."""
        if depth != vocab.size:
            raise RunError(f"{self.path}: {name} reads and predicts {depth} symbols but "
                           f"vocab.json has {vocab.size}")

    def read_corpus(self, run: Run, data: str | os.PathLike | None = None) -> Corpus:
        """The run's corpus again: from `data` (the same file at another path) or
        from where the run recorded it, checked against the recorded sha256 and
        the run's vocabulary.

        Raises:
            RunError / ConfigError: if it is missing, changed, or encodes otherwise.
        """
        # The path the run recorded is absolute; settings.data may be relative
        # to where training ran, or None (then $CHARSTREAM_DATA was used).
        path = data if data is not None else (run.corpus.get("path") or run.settings.data)
        corpus = read_corpus(run.settings.replace(data=None if path is None else str(path)))
        recorded = run.corpus.get("sha256")
        if corpus.sha256 != recorded:
            raise RunError(
                f"{corpus.path}: the corpus changed since {self.path} was trained "
                f"(sha256 {corpus.sha256[:12]}..., the run has {str(recorded)[:12]}...)")
        if corpus.vocab != run.vocab:
            raise RunError(
                f"{self.vocab_file}: does not match the vocabulary of {corpus.path} "
                f"({run.vocab.size} vs {corpus.vocab.size} symbols)")
        return corpus

    def held_out_ids(self, run: Run | None = None) -> np.ndarray:
        """The ids of the run's held-out tail: the characters training never saw.

        Raises:
            RunError: if the run held nothing out, or its corpus changed.
        """
        run = run or self.read()
        if not run.settings.val_fraction:
            raise RunError(f"{self.path}: trained with val_fraction 0, so nothing was held out")
        ids = self.read_corpus(run).ids
        return ids[split_index(len(ids), run.settings.val_fraction):]

    def load_keras_model(self, run: Run):
        """`model.keras` in Keras's safe mode, its input and output checked
        against the vocabulary.

        Raises:
            FileNotFoundError: if there is no `model.keras`.
            RunError: if it is not a loadable charstream model.
        """
        import keras

        path = self.model_file
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such model file")
        try:
            model = keras.saving.load_model(path, compile=False, safe_mode=True)
        except Exception as err:  # Keras raises many types for a corrupt archive
            raise RunError(f"{path}: cannot load the model ({type(err).__name__}: {err})") from None
        shape = model.input_shape
        if not (isinstance(shape, tuple) and len(shape) == 3):
            raise RunError(f"{path}: expected a (batch, steps, depth) input, got {shape}")
        self.check_depth("model.keras", shape[-1], run.vocab)
        self.check_depth("model.keras", model.output_shape[-1], run.vocab)
        return model

    # ------------------------------------------------------------------ history

    def read_history(self) -> list[dict]:
        """The rows of `history.csv` by epoch, values as floats (`epoch` an int);
        [] if there is none. A row that does not parse ends the reading."""
        if not self.history_file.exists():
            return []
        with open(self.history_file, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        out = []
        for row in rows:
            try:
                out.append({k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()
                            if k is not None and v not in ("", None)})
            except ValueError:
                break
        return sorted(out, key=lambda r: r["epoch"])

    def write_history(self, rows: list[dict]) -> None:
        """Rewrite `history.csv` whole (columns in the order they first appear)."""
        columns: list[str] = []
        for row in rows:
            columns += [key for key in row if key not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.history_file, buf.getvalue())

    def seconds_trained(self, epochs: int) -> float:
        """The run's training time over its first `epochs` epochs (0 if unknown)."""
        return max((row.get("seconds", 0.0) for row in self.read_history()
                    if row["epoch"] < epochs), default=0.0)

    # ------------------------------------------------------------------ results

    def write_summary(self, summary: dict) -> None:
        atomic_write_text(self.summary_file, json.dumps(summary, indent=2) + "\n")

    def write_sample(self, text: str) -> None:
        atomic_write_text(self.sample_file, text)

    def write_plot(self, png: bytes) -> None:
        with atomic_path(self.plot_file) as tmp:
            tmp.write_bytes(png)
