"""The run directory: the contract between training and streaming, in one place.

A run directory holds

    config.json                    every setting, the corpus (path, sha256, size), the version
    vocab.json                     the vocabulary
    checkpoints/epoch-NNNN.keras   the whole model and optimizer after each epoch
    history.csv, history.png       one row per epoch; the plot of it
    model.keras                    the final model
    stream.npz                     its weights for the native backend (charstream.weights)
    summary.json                   what the run reached
    sample.txt                     text streamed from the final model

`RunDir` is the only code that spells these names. It creates a run, reads one
back cross-checked (config against vocabulary, model and weights against both,
the corpus against its recorded sha256 whenever it is read again), finds the
newest checkpoint, and loads the stream weights of a run checked against
it (`load_weights`). The split itself is `charstream.data.split_corpus`. Every file is written to a
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
from .data.corpus import Corpus, split_corpus
from .data.corpus import read_corpus as data_read_corpus
from .data.text import Vocabulary
from .weights import load_stream_weights

CONFIG_FORMAT = "charstream.run"
CONFIG_VERSION = 1
_CHECKPOINT = re.compile(r"^epoch-(\d{4,})\.keras$")


class RunError(ConfigError):
    """A run directory, or a file in it, that cannot be used; the message names it."""


def read_corpus(config: TrainConfig) -> Corpus:
    """The corpus `config` names (`data`, `reduce`), read once
    (`charstream.data.read_corpus`).

    Raises:
        ConfigError: naming the file, if it is missing, unreadable, not UTF-8,
            empty, or (with `--no-reduce`) has more than 256 symbols.
    """
    try:
        return data_read_corpus(config.data, config.reduce)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None


@dataclasses.dataclass
class RunRecord:
    """What a run directory records, cross-checked."""

    settings: TrainConfig
    vocab: Vocabulary
    corpus: dict               # {"path", "sha256", "characters"}


class _RunFiles:
    """A run directory's path and the name of every file in it."""

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


class _RunReading(_RunFiles):
    """Reading a run back, every file checked and held to the others."""

    def read(self, against_alphabet: bool = True) -> RunRecord:
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
        return RunRecord(settings, vocab, corpus)

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

    def read_corpus(self, record: RunRecord, data: str | os.PathLike | None = None) -> Corpus:
        """The run's corpus again: from `data` (the same file at another path) or
        from where the run recorded it, checked against the recorded sha256 and
        the run's vocabulary.

        Raises:
            RunError / ConfigError: if it is missing, changed, or encodes otherwise.
        """
        # The path the run recorded is absolute; settings.data may be relative
        # to where training ran, or None (then $CHARSTREAM_DATA was used).
        path = data if data is not None else (record.corpus.get("path") or record.settings.data)
        corpus = read_corpus(record.settings.replace(data=None if path is None else str(path)))
        recorded = record.corpus.get("sha256")
        if corpus.sha256 != recorded:
            raise RunError(
                f"{corpus.path}: the corpus changed since {self.path} was trained "
                f"(sha256 {corpus.sha256[:12]}..., the run has {str(recorded)[:12]}...)")
        if corpus.vocab != record.vocab:
            raise RunError(
                f"{self.vocab_file}: does not match the vocabulary of {corpus.path} "
                f"({record.vocab.size} vs {corpus.vocab.size} symbols)")
        return corpus

    def held_out_ids(self, record: RunRecord | None = None) -> np.ndarray:
        """The ids of the run's held-out tail: the characters training never saw.

        Raises:
            RunError: if the run held nothing out, or its corpus changed.
        """
        record = record or self.read()
        if not record.settings.val_fraction:
            raise RunError(f"{self.path}: trained with val_fraction 0, so nothing was held out")
        return split_corpus(self.read_corpus(record).ids, record.settings.val_fraction).held_out

    def load_weights(self, record: RunRecord | None = None) -> dict:
        """`stream.npz`, checked (`charstream.weights.load_stream_weights`: the
        arrays' real shapes against its meta) and held to the run's vocabulary.

        Raises:
            FileNotFoundError: if there is no `stream.npz`.
            ValueError (RunError included): naming the file, if it is not valid or
                reads another number of symbols than `vocab.json` has.
        """
        record = record or self.read()
        weights = load_stream_weights(self.stream_file)
        self.check_depth(self.stream_file.name, weights["meta"].get("depth"), record.vocab)
        bias = weights["dense"][1]   # its real width: the meta may disagree with the arrays
        self.check_depth(self.stream_file.name, bias.shape[-1] if bias.ndim else None, record.vocab)
        return weights

    def load_keras_model(self, record: RunRecord):
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
        self.check_depth("model.keras", shape[-1], record.vocab)
        self.check_depth("model.keras", model.output_shape[-1], record.vocab)
        return model

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


class RunDir(_RunReading):
    """One run directory, by path; nothing is read or written until asked.

    Its names are `_RunFiles`', its reading `_RunReading`'s; creating and writing
    are here.
    """

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

    def write_summary(self, summary: dict) -> None:
        atomic_write_text(self.summary_file, json.dumps(summary, indent=2) + "\n")

    def write_sample(self, text: str) -> None:
        atomic_write_text(self.sample_file, text)

    def write_plot(self, png: bytes) -> None:
        with atomic_path(self.plot_file) as tmp:
            tmp.write_bytes(png)
