"""`python -m charstream.train`: train the char-LSTM and write a run directory.

A run directory holds `config.json`, `vocab.json`, `checkpoints/epoch-NNNN.keras`
(one per finished epoch), `history.csv`, `history.png`, `model.keras`,
`summary.json` and `sample.txt`. Every file is written to a temporary name and
renamed, so a run killed at any moment (even SIGKILL) loses at most the epoch in
progress and `--resume` picks it up from its newest checkpoint.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import re
import signal
import sys
import tempfile
import time
import typing
from pathlib import Path

from ._io import atomic_path, atomic_write_text
from .config import PRESETS, ConfigError, TrainConfig, read_run_config, write_run_config
from .text import Vocabulary, corpus_path, encode_reduced, file_sha256, load_corpus

PROG = "python -m charstream.train"
CHECKPOINT = re.compile(r"^epoch-(\d{4,})\.keras$")
# Settings that --resume may change; the rest must match the run. --data may
# name the corpus at another path (another machine's mount) if its sha256 matches.
RESUMABLE = {"epochs", "patience", "strategy", "cpu_devices", "data"}


# ----------------------------------------------------------------------------- CLI

def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _samples(text: str):
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The CLI, derived from `TrainConfig`'s fields (every default is SUPPRESSed so
    that the flags a user typed can be told from the defaults)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Train a character-level LSTM and write a run directory.",
        argument_default=argparse.SUPPRESS)
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind = hints[f.name]
        help_text = f"{f.metadata['help']} (default: {'all' if f.name == 'samples' else f.default})"
        if kind is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction,
                                help=f.metadata["help"] + f" (default: {f.default})")
        elif f.name == "samples":
            parser.add_argument(_flag(f.name), type=_samples, metavar="N|all", help=help_text)
        else:
            base = typing.get_args(kind)[0] if typing.get_args(kind) else kind
            parser.add_argument(_flag(f.name), type=base, help=help_text,
                                metavar=f.metadata.get("metavar"),
                                choices=f.metadata.get("choices"))
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="start from a named recipe; 'tutorial' is the tutorial exactly")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="run directory to create (default: runs/<timestamp>)")
    parser.add_argument("--resume", metavar="DIR", default=None,
                        help="continue the run in DIR from its newest checkpoint "
                        "(--epochs is the total to reach)")
    parser.add_argument("--auto-resume", action="store_true", default=False,
                        help="with --out DIR: continue the run already in DIR if there is "
                        "one, else start it, so that the same command works after a crash "
                        "or preemption (like Keras's BackupAndRestore)")
    parser.add_argument("--sample-length", type=int, default=400, metavar="N",
                        help="characters streamed into sample.txt at the end (default: 400)")
    return parser


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, set]:
    """The config the flags ask for: defaults, then the preset, then explicit flags."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if hasattr(args, f.name)}
    config = TrainConfig()
    if args.preset:
        config = config.replace(**PRESETS[args.preset])
    return config.replace(**given).validate(), set(given)


# ----------------------------------------------------------------------------- data

@dataclasses.dataclass
class Corpus:
    path: Path
    sha256: str
    ids: "typing.Any"          # (n,) uint8
    vocab: Vocabulary

    def describe(self) -> dict:
        return {"path": str(self.path.resolve()), "sha256": self.sha256,
                "characters": int(len(self.ids))}


def prepare_corpus(config: TrainConfig) -> Corpus:
    """Load, reduce (or not) and encode the corpus the config names."""
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


# ----------------------------------------------------------------------------- run dir

def newest_checkpoint(run_dir: Path) -> tuple[int, Path | None]:
    """The highest-numbered `checkpoints/epoch-NNNN.keras` (temp files never match)."""
    best = (0, None)
    for path in (run_dir / "checkpoints").glob("epoch-*.keras"):
        match = CHECKPOINT.match(path.name)
        if match and int(match.group(1)) > best[0]:
            best = (int(match.group(1)), path)
    return best


def truncate_history(path: Path, epochs_done: int) -> None:
    """Keep only the rows of the epochs a checkpoint holds (and no torn last line)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if not lines:
        return
    keep = [lines[0]]
    for line in lines[1:]:
        if not line.endswith("\n"):
            break
        row = next(csv.reader([line]))
        try:
            if row and int(row[0]) < epochs_done:
                keep.append(line)
        except ValueError:
            break
    atomic_write_text(path, "".join(keep))


def read_history(path: Path) -> dict[str, list[float]]:
    """history.csv as columns of floats, rows ordered by epoch."""
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    rows.sort(key=lambda r: int(r["epoch"]))
    return {key: [float(r[key]) for r in rows] for key in (rows[0] if rows else {})}


def plot_history(history: dict[str, list[float]], path: Path) -> None:
    """The tutorial's print_model_history: loss and accuracy by epoch, train and val."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(e) + 1 for e in history.get("epoch", [])]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in ((axes[0], "loss", "loss (nats/char)"),
                              (axes[1], "accuracy", "accuracy")):
        for key, name in ((metric, "train"), (f"val_{metric}", "validation")):
            if key in history:
                ax.plot(epochs, history[key], marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("charstream training history")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def _new_run_dir(out: str | None) -> Path:
    run_dir = Path(out) if out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise ConfigError(
            f"{run_dir}: already exists and is not an empty directory "
            "(use --resume to continue a run, or choose another --out)")
    return run_dir


# ----------------------------------------------------------------------------- training

def save_model(model, path: Path, writer: bool = True) -> None:
    """`model.save(path)` through a temporary file renamed into place.

    Under multiworker, saving may run collective ops (reading distributed
    variables), so every worker saves; a worker that is not the `writer` saves into
    a temporary directory that is deleted at once, and `path` is the chief's alone.
    """
    if writer:
        with atomic_path(path) as tmp:
            model.save(tmp)
        return
    with tempfile.TemporaryDirectory(prefix="charstream-worker-") as scratch:
        model.save(Path(scratch) / path.name)


def _callbacks(run_dir: Path, config: TrainConfig, writer: bool = True):
    """The training callbacks; only the `writer` (the chief, under multiworker)
    writes the run directory."""
    import keras

    class AtomicCheckpoint(keras.callbacks.Callback):
        """Save the whole model (weights and optimizer) after every epoch."""

        def on_epoch_end(self, epoch, logs=None):
            save_model(self.model, run_dir / "checkpoints" / f"epoch-{epoch + 1:04d}.keras", writer)

    class StopWhenAsked(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if _Stop.requested:
                raise KeyboardInterrupt

        on_test_batch_end = on_epoch_end = on_train_batch_end

    callbacks = [StopWhenAsked(), keras.callbacks.TerminateOnNaN()]
    if writer:
        # CSVLogger before the checkpoint: a kill between the two leaves a
        # row without its checkpoint, which resume drops and recomputes.
        callbacks.append(keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True))
    callbacks.append(AtomicCheckpoint())
    if config.lr_decay:
        last = max(config.epochs - 1, 1)
        callbacks.append(keras.callbacks.LearningRateScheduler(
            lambda epoch, lr: config.learning_rate * (1 - 0.9 * min(epoch, last) / last)))
    if config.patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True))
    return callbacks


@dataclasses.dataclass
class Pipeline:
    train: typing.Any          # what fit trains on
    val: typing.Any            # what it validates on, or None
    windows: int               # training windows per epoch, all workers together
    steps: dict                # steps_per_epoch / validation_steps for fit, if needed
    callbacks: list            # what keeps the window order in step with the epoch


def _input_pipeline(config: TrainConfig, corpus: Corpus, strategy, global_batch: int,
                    train_starts: range, val_starts: range, initial_epoch: int) -> Pipeline:
    """The batches `fit` trains and validates on, one-hot on demand."""
    from .batches import Uint8WindowBatches, WindowBatches
    from .distribute import worker_dataset

    depth, seq_len = corpus.vocab.size, config.seq_len
    val_batch = max(global_batch, 1024)  # scoring needs no gradients: bigger batches
    if config.strategy == "multiworker":
        # Each worker builds only its own replicas' share of every global batch.
        train, steps, windows = worker_dataset(
            strategy, corpus.ids, train_starts, global_batch, seq_len, depth,
            shuffle=config.shuffle, seed=config.seed, epochs=range(initial_epoch, config.epochs))
        pipeline = Pipeline(train, None, windows, {"steps_per_epoch": steps}, [])
        if len(val_starts):
            pipeline.val, pipeline.steps["validation_steps"], _ = worker_dataset(
                strategy, corpus.ids, val_starts, val_batch, seq_len, depth)
        return pipeline
    # tf.distribute sums per-replica inputs with AddN, which has no bool kernel.
    batches = WindowBatches if strategy.num_replicas_in_sync == 1 else Uint8WindowBatches
    train = batches(corpus.ids, train_starts, global_batch, seq_len, depth,
                    shuffle=config.shuffle, seed=config.seed, epoch=initial_epoch)
    val = batches(corpus.ids, val_starts, val_batch, seq_len, depth) if len(val_starts) else None
    return Pipeline(train, val, len(train_starts), {}, [train.epoch_callback()])


def train(config: TrainConfig, run_dir: Path, corpus: Corpus, initial_epoch: int = 0,
          checkpoint: Path | None = None, verbose: int = 2) -> dict:
    """Fit the model for epochs `initial_epoch .. config.epochs` and save it.

    Under `--strategy multiworker` every worker calls this with the same arguments;
    all of them train, only the chief writes `run_dir`.

    Returns:
        The summary that is also written to `summary.json`.
    """
    import keras

    from .batches import split_starts
    from .distribute import check_agreement, make_strategy, multiworker_keras
    from .model import build_training_model

    task = _task(config)
    multiworker = task is not None
    writer = task is None or task.is_chief
    if multiworker:
        print(f"{task}: waiting for every worker in TF_CONFIG", flush=True)
    strategy = make_strategy(config)
    replicas = strategy.num_replicas_in_sync
    # --batch-size is per replica; each step consumes the global batch, split evenly
    # over the replicas. The learning rate is not rescaled: pass --learning-rate
    # yourself when the global batch grows (linear scaling is the usual rule).
    global_batch = config.batch_size * replicas
    train_starts, val_starts = split_starts(len(corpus.ids), config.seq_len, config.val_fraction)
    if config.samples is not None and config.samples < len(train_starts):
        train_starts = train_starts[:config.samples]
    if multiworker:
        check_agreement(strategy, json.dumps(
            {"settings": {k: v for k, v in dataclasses.asdict(config).items()
                          if k not in ("data", "strategy", "cpu_devices")},  # may differ
             "corpus": corpus.sha256, "initial_epoch": initial_epoch,
             "checkpoint": checkpoint.name if checkpoint else None}, sort_keys=True))
    pipeline = _input_pipeline(config, corpus, strategy, global_batch, train_starts,
                               val_starts, initial_epoch)

    keras.utils.set_random_seed(config.seed)
    with strategy.scope():  # variables are created on every replica
        if checkpoint is not None:
            model = keras.saving.load_model(checkpoint, safe_mode=True)
        else:
            model = build_training_model(config.seq_len, corpus.vocab.size, config.units,
                                         config.layers, config.dropout,
                                         config.recurrent_dropout, config.learning_rate)
    context = multiworker_keras(model, strategy) if multiworker else contextlib.nullcontext()
    if writer:
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        truncate_history(run_dir / "history.csv", initial_epoch)

    if multiworker:
        print(f"{task}{' (chief)' if writer else ''}: {replicas} replicas across "
              f"{task.workers} workers, global batch {global_batch}", flush=True)
    elif replicas > 1:
        print(f"{replicas} replicas ({', '.join(strategy.extended.worker_devices)}), "
              f"global batch {global_batch}", flush=True)
    print(f"training on {pipeline.windows:,} windows per epoch "
          f"({len(val_starts):,} held out), {model.count_params():,} parameters, "
          f"epochs {initial_epoch + 1}..{config.epochs}", flush=True)
    started = time.perf_counter()
    with context:
        # shuffle=False: the batches come shuffled from (seed, epoch). Keras's own
        # default would also shuffle the batch order with Python's global RNG,
        # which --no-shuffle could not turn off and a resume could not replay.
        fit = model.fit(pipeline.train, validation_data=pipeline.val, epochs=config.epochs,
                        initial_epoch=initial_epoch, verbose=verbose, shuffle=False,
                        callbacks=pipeline.callbacks + _callbacks(run_dir, config, writer),
                        **pipeline.steps)
        seconds = time.perf_counter() - started
        if model.stop_training and any(
                not math.isfinite(v) for v in fit.history.get("loss", [0.0])):
            raise RuntimeError("training stopped: the loss became NaN (try a lower --learning-rate)")
        val_scores = (model.evaluate(pipeline.val, verbose=0,
                                     steps=pipeline.steps.get("validation_steps"))
                      if pipeline.val is not None else None)
    save_model(model, run_dir / "model.keras", writer)
    if writer:
        from .model import build_inference_model
        from .native import STREAM_FILE, export_stream_weights

        export_stream_weights(build_inference_model(model), run_dir / STREAM_FILE, config.seq_len)

    epochs_run = len(fit.history.get("loss", []))
    summary = {
        "epochs": initial_epoch + epochs_run,
        "seconds": round(seconds, 1),
        "samples_per_second": round(epochs_run * pipeline.windows / seconds, 1) if seconds else None,
        "train_loss": fit.history["loss"][-1] if epochs_run else None,
        "train_accuracy": fit.history["accuracy"][-1] if epochs_run else None,
    }
    if val_scores is not None:
        val_loss, val_acc = val_scores
        summary.update(val_loss=val_loss, val_bits_per_char=val_loss / math.log(2),
                       val_accuracy=val_acc, val_windows=int(len(val_starts)))
    if writer:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        plot_history(read_history(run_dir / "history.csv"), run_dir / "history.png")
    return summary


def _print_summary(summary: dict, run_dir: Path) -> None:
    def fmt(key, spec=".4f"):
        value = summary.get(key)
        return "n/a" if value is None else format(value, spec)

    print(f"\ndone: {summary['epochs']} epochs in {summary['seconds']:.0f} s "
          f"({fmt('samples_per_second', ',.0f')} samples/s)")
    print(f"train loss {fmt('train_loss')}, accuracy {fmt('train_accuracy')}")
    if "val_loss" in summary:
        print(f"validation loss {fmt('val_loss')} nats/char = {fmt('val_bits_per_char')} "
              f"bits/char, accuracy {fmt('val_accuracy')} "
              f"({summary['val_windows']:,} held-out windows)")
    print(f"run directory: {run_dir}")


def _write_sample(run_dir: Path, length: int) -> None:
    if length <= 0:
        return
    from .stream import StreamGenerator

    gen = StreamGenerator.load(run_dir)
    chars = []
    print("\nsample:\n", flush=True)
    for ch in gen.stream(prime="\n", temperature=0.8, seed=0, max_chars=length):
        chars.append(ch)
        sys.stdout.write(ch)
        sys.stdout.flush()
    print()
    atomic_write_text(run_dir / "sample.txt", "".join(chars))


def _resume_plan(args, given: set, config: TrainConfig):
    run_dir = Path(args.resume)
    doc = read_run_config(run_dir)
    saved: TrainConfig = doc["settings"]
    changed = sorted(name for name in given - RESUMABLE
                     if getattr(config, name) != getattr(saved, name))
    if changed or args.preset:
        what = ", ".join(_flag(n) for n in changed) or "--preset"
        raise ConfigError(
            f"{run_dir}: {what} cannot change on --resume (the run was trained with "
            "other settings); only --epochs, --patience, --strategy, --cpu-devices and --data "
            "(the same corpus at another path) may")
    config = saved.replace(**{n: getattr(config, n) for n in given & RESUMABLE}).validate()
    # An explicit --data, else the corpus the run recorded, never whatever
    # $CHARSTREAM_DATA says today; either way its sha256 must be the run's.
    if "data" not in given:
        config = config.replace(data=saved.data or doc.get("corpus", {}).get("path"))
    corpus = prepare_corpus(config)
    if corpus.sha256 != doc.get("corpus", {}).get("sha256"):
        raise ConfigError(
            f"{corpus.path}: the corpus changed since {run_dir} was trained "
            f"(sha256 {corpus.sha256[:12]}..., the run has "
            f"{str(doc.get('corpus', {}).get('sha256'))[:12]}...)")
    try:
        vocab = Vocabulary.load(run_dir / "vocab.json")
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None
    if vocab != corpus.vocab:
        raise ConfigError(
            f"{run_dir / 'vocab.json'}: does not match the vocabulary of {corpus.path} "
            f"({vocab.size} vs {corpus.vocab.size} symbols)")
    done, checkpoint = newest_checkpoint(run_dir)
    if done >= config.epochs:
        raise ConfigError(
            f"{run_dir}: already trained for {done} epochs; pass --epochs N with N > {done} "
            "to train further")
    return run_dir, config, corpus, done, checkpoint


class _Stop:
    """Set by SIGINT/SIGTERM. The handler raises KeyboardInterrupt at once, but
    one that lands while a `__del__` runs (TensorFlow frees iterators at every
    epoch's end, just when a checkpoint appears) is swallowed by Python, so the
    training loop also checks the flag after every batch."""

    requested = False


def _on_stop_signal(signum, frame):
    _Stop.requested = True
    raise KeyboardInterrupt


def _task(config: TrainConfig):
    """This process's `distribute.Task` under `--strategy multiworker`, else None."""
    if config.strategy != "multiworker":
        return None
    from .distribute import parse_tf_config

    return parse_tf_config()


def _restart_command(args, run_dir: Path, task) -> str:
    if args.auto_resume:
        return "the same command (it has --auto-resume)"
    command = f"{PROG} --resume {run_dir}"
    return f"{command} --strategy multiworker" if task is not None else command


def _peer_failure_message(task, err: BaseException, run_dir: Path, again: str) -> str:
    done, _ = newest_checkpoint(run_dir)
    detail = " ".join(str(err).split())[:300] or type(err).__name__
    return (f"{task}: training stopped because a worker failed or left "
            f"({type(err).__name__}: {detail}); {run_dir} holds {done} finished epochs; "
            f"restart every worker with: {again}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        config, given = config_from_args(args)
        if args.auto_resume:
            if args.resume or not args.out:
                raise ConfigError("--auto-resume goes with --out DIR (not --resume)")
            if (Path(args.out) / "config.json").exists():
                args.resume, args.out = args.out, None
        if args.resume:
            if args.out:
                raise ConfigError("--out and --resume are exclusive: --resume writes into its DIR")
            run_dir, config, corpus, done, checkpoint = _resume_plan(args, given, config)
            task = _task(config)
        else:
            task = _task(config)
            if task is not None and not args.out:
                raise ConfigError(
                    "--strategy multiworker needs --out DIR: the same directory for every "
                    "worker, on a filesystem they all share (only the chief writes it)")
            # Under multiworker the chief creates the run directory; the others
            # must not race it to the check.
            run_dir = _new_run_dir(args.out) if task is None or task.is_chief else Path(args.out)
            corpus = prepare_corpus(config)
            from .batches import split_starts

            split_starts(len(corpus.ids), config.seq_len, config.val_fraction)  # fails early
            done, checkpoint = 0, None
    except (ConfigError, ValueError, RuntimeError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2

    writer = task is None or task.is_chief
    if not args.resume and writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        corpus.vocab.save(run_dir / "vocab.json")
        write_run_config(run_dir / "config.json", config, corpus.describe(), corpus.vocab.size)
    action = ("resuming" if args.resume else "writing") if writer else "training for"
    print(f"{f'{task}: ' if task else ''}{action} {run_dir} "
          f"(corpus {corpus.path}, {len(corpus.ids):,} characters, "
          f"{corpus.vocab.size} symbols)", flush=True)

    _Stop.requested = False
    # SIGINT only where it is not ignored (a background job's shell ignores it).
    previous = {sig: signal.signal(sig, _on_stop_signal) for sig in (signal.SIGINT, signal.SIGTERM)
                if sig == signal.SIGTERM or signal.getsignal(sig) is not signal.SIG_IGN}
    verbose = 1 if sys.stdout.isatty() else 2
    try:
        summary = train(config, run_dir, corpus, done, checkpoint, verbose)
    except KeyboardInterrupt:
        done, _ = newest_checkpoint(run_dir)
        again = _restart_command(args, run_dir, task)
        print(f"\ninterrupted after {done} finished epochs; continue with: {again}"
              f"{' on every worker' if task is not None else ''}", file=sys.stderr)
        return 130
    except ConfigError as err:  # found once the strategy knows the replicas
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        from .distribute import is_peer_failure

        if task is None or not is_peer_failure(err):
            raise
        again = _restart_command(args, run_dir, task)
        print(f"{PROG}: error: {_peer_failure_message(task, err, run_dir, again)}",
              file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _print_summary(summary, run_dir)
    if writer:
        _write_sample(run_dir, args.sample_length)
    return 0


if __name__ == "__main__":
    sys.exit(main())
