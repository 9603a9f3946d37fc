"""`python -m charstream.train`: train the char-LSTM and write a run directory.

A run directory holds `config.json`, `vocab.json`, `checkpoints/epoch-NNNN.keras`
(one per finished epoch), `history.csv`, `history.png`, `model.keras`,
`stream.npz`, `summary.json` and `sample.txt`. Every file is written to a
temporary name and renamed, so a run killed at any moment (even SIGKILL) loses
at most the epoch in progress and `--resume` picks it up from its newest
checkpoint.
"""
from __future__ import annotations

import argparse
import contextlib
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
RESUMABLE = {"epochs", "patience", "strategy", "cpu_devices", "data", "max_time"}


# ----------------------------------------------------------------------------- CLI

def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _arg_type(parse):
    """An argparse `type` from a parser that raises ValueError with the message."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    convert.__name__ = parse.__name__
    return convert


def build_parser() -> argparse.ArgumentParser:
    """The CLI, derived from `TrainConfig`'s fields (every default is SUPPRESSed so
    that the flags a user typed can be told from the defaults)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Train a character-level LSTM and write a run directory.",
        argument_default=argparse.SUPPRESS)
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind = hints[f.name]
        base = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        help_text = f"{f.metadata['help']} (default: {f.metadata.get('default_text', f.default)})"
        if base is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction,
                                help=help_text)
        else:
            parse = f.metadata.get("parse")
            parser.add_argument(_flag(f.name), type=_arg_type(parse) if parse else base,
                                help=help_text, metavar=f.metadata.get("metavar"),
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
    parser.add_argument("--verbose", action="store_true", default=False,
                        help="show TensorFlow's start-up messages too (or set "
                        "CHARSTREAM_VERBOSE=1)")
    return parser


def config_from_args(args: argparse.Namespace,
                     validate: bool = True) -> tuple[TrainConfig, set]:
    """The config the flags ask for: defaults, then the preset, then explicit flags.

    A resume validates later, once the flags are laid over the run's own settings.
    """
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if hasattr(args, f.name)}
    config = TrainConfig()
    if args.preset:
        config = config.replace(**PRESETS[args.preset])
    config = config.replace(**given)
    return (config.validate() if validate else config), set(given)


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


def plot_history(rows: list[dict], path: Path) -> None:
    """The tutorial's print_model_history: loss and accuracy by epoch, train and val."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] + 1 for row in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in ((axes[0], "loss", "loss (nats/char)"),
                              (axes[1], "accuracy", "accuracy")):
        for key, name in ((metric, "train"), (f"val_{metric}", "validation")):
            if rows and all(key in row for row in rows):
                ax.plot(epochs, [row[key] for row in rows], marker="o", label=name)
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


def _callbacks(run_dir: Path, config: TrainConfig, writer: bool = True, *,
               pipeline=None, clock=None, history=None, budget=None):
    """The training callbacks, in the order they must see each epoch's end: the
    held-out score first, then history, then the checkpoint (a kill between the two
    leaves a row without its checkpoint, which resume drops and recomputes). Only
    the `writer` (the chief, under multiworker) writes the run directory."""
    import keras

    from .callbacks import Checkpoint, Clock, History, LinearDecay, StopWhenAsked

    clock = clock or Clock()
    callbacks = [StopWhenAsked(_Stop), keras.callbacks.TerminateOnNaN()]
    if pipeline is not None:
        callbacks += pipeline.callbacks
    if budget is not None:
        callbacks.append(budget)
    if config.lr_decay:
        callbacks.append(LinearDecay(config.learning_rate, 0.1, config.epochs, clock,
                                     config.max_time))
    if writer:
        callbacks.append(History(run_dir / "history.csv", clock, history))
    callbacks.append(Checkpoint(lambda model, epoch: save_model(
        model, run_dir / "checkpoints" / f"epoch-{epoch:04d}.keras", writer)))
    if config.patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True))
    return callbacks


@dataclasses.dataclass
class Pipeline:
    train: typing.Any          # what fit trains on
    val: typing.Any            # what Keras validates on, or None (stream: a callback scores)
    targets: int               # training targets per epoch, all workers together
    steps_per_epoch: int       # optimizer steps per epoch
    held_out: int              # held-out targets
    fit_args: dict             # steps_per_epoch / validation_steps for fit, if needed
    callbacks: list            # what keeps the data in step with the epoch, and scores it


def _input_pipeline(config: TrainConfig, corpus: Corpus, strategy, global_batch: int,
                    initial_epoch: int) -> Pipeline:
    """The batches `fit` trains and validates on, one-hot on demand."""
    from .windows import split_starts

    train_starts, val_starts = split_starts(len(corpus.ids), config.seq_len, config.val_fraction)
    if config.mode == "stream":
        return _stream_pipeline(config, corpus, train_starts, val_starts, initial_epoch)
    if config.samples is not None and config.samples < len(train_starts):
        train_starts = train_starts[:config.samples]
    depth, seq_len = corpus.vocab.size, config.seq_len
    val_batch = max(global_batch, 1024)  # scoring needs no gradients: bigger batches
    if config.strategy == "multiworker":
        from .distribute import worker_dataset

        # Each worker builds only its own replicas' share of every global batch.
        train, steps, windows = worker_dataset(
            strategy, corpus.ids, train_starts, global_batch, seq_len, depth,
            shuffle=config.shuffle, seed=config.seed, epochs=range(initial_epoch, config.epochs))
        pipeline = Pipeline(train, None, windows, steps, len(val_starts),
                            {"steps_per_epoch": steps}, [])
        if len(val_starts):
            pipeline.val, pipeline.fit_args["validation_steps"], _ = worker_dataset(
                strategy, corpus.ids, val_starts, val_batch, seq_len, depth)
        return pipeline
    from .batches import WindowBatches

    train = WindowBatches(corpus.ids, train_starts, global_batch, seq_len, depth,
                          shuffle=config.shuffle, seed=config.seed, epoch=initial_epoch)
    val = (WindowBatches(corpus.ids, val_starts, val_batch, seq_len, depth)
           if len(val_starts) else None)
    return Pipeline(train, val, len(train_starts), len(train), len(val_starts), {},
                    [train.epoch_callback()])


def _stream_pipeline(config: TrainConfig, corpus: Corpus, train_starts: range,
                     val_starts: range, initial_epoch: int) -> Pipeline:
    """`--mode stream`: contiguous streams of the training part; the held-out tail
    scored as one continuous stream after every epoch."""
    from .batches import StreamBatches
    from .callbacks import ResetStreams, StreamValidation

    split = train_starts.stop + config.seq_len  # the training part is ids[:split]
    end = split if config.samples is None else min(split, config.samples)
    train = StreamBatches(corpus.ids[:end], config.batch_size, config.seq_len,
                          corpus.vocab.size, seed=config.seed, epoch=initial_epoch)
    callbacks = [train.epoch_callback(), ResetStreams()]
    if len(val_starts):
        callbacks.append(StreamValidation(corpus.ids[val_starts.start:], config.seq_len))
    return Pipeline(train, None, train.targets, len(train), len(val_starts), {}, callbacks)


def _stream_validation(pipeline: Pipeline):
    """The pipeline's `StreamValidation` callback, or None."""
    from .callbacks import StreamValidation

    return next((c for c in pipeline.callbacks if isinstance(c, StreamValidation)), None)


def _unroll(config: TrainConfig) -> bool:
    """`--unroll`, or by default: unrolled unless a GPU could run cuDNN."""
    if config.unroll is not None:
        return config.unroll
    import tensorflow as tf

    return not tf.config.list_physical_devices("GPU")


def _build_model(config: TrainConfig, depth: int, checkpoint: Path | None):
    """The model to train: the checkpoint's (weights and optimizer), or a new one."""
    import keras

    from .model import build_stream_model, build_training_model

    if checkpoint is not None:
        return keras.saving.load_model(checkpoint, safe_mode=True)
    common = dict(seq_len=config.seq_len, depth=depth, units=config.units,
                  layers=config.layers, dropout=config.dropout,
                  recurrent_dropout=config.recurrent_dropout,
                  learning_rate=config.learning_rate, unroll=_unroll(config),
                  steps_per_execution=config.steps_per_execution)
    if config.mode == "stream":
        return build_stream_model(config.batch_size, **common)
    return build_training_model(**common)


def train(config: TrainConfig, run_dir: Path, corpus: Corpus, initial_epoch: int = 0,
          checkpoint: Path | None = None, verbose: int = 2) -> dict:
    """Fit the model for epochs `initial_epoch .. config.epochs` and save it.

    Under `--strategy multiworker` every worker calls this with the same arguments;
    all of them train, only the chief writes `run_dir`.

    Returns:
        The summary that is also written to `summary.json`.
    """
    import keras

    from .callbacks import Clock, TimeBudget, read_history
    from .distribute import check_agreement, make_strategy, multiworker_keras

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
    if multiworker:
        check_agreement(strategy, json.dumps(
            {"settings": {k: v for k, v in dataclasses.asdict(config).items()
                          if k not in ("data", "strategy", "cpu_devices", "max_time")},
             "corpus": corpus.sha256, "initial_epoch": initial_epoch,
             "checkpoint": checkpoint.name if checkpoint else None}, sort_keys=True))
    pipeline = _input_pipeline(config, corpus, strategy, global_batch, initial_epoch)

    keras.utils.set_random_seed(config.seed)
    with strategy.scope():  # variables are created on every replica
        model = _build_model(config, corpus.vocab.size, checkpoint)
    # Keras 3 runs several steps per call on one device only: under tf.distribute
    # its multi-step loop fails ("You must feed a value for placeholder tensor").
    model.steps_per_execution = config.steps_per_execution if replicas == 1 and not multiworker else 1
    context = multiworker_keras(model, strategy) if multiworker else contextlib.nullcontext()
    history = [row for row in read_history(run_dir / "history.csv") if row["epoch"] < initial_epoch]
    clock = Clock(history[-1].get("seconds", 0.0) if history else 0.0)
    budget = TimeBudget(clock, config.max_time) if config.max_time else None
    if writer:
        (run_dir / "checkpoints").mkdir(exist_ok=True)

    if multiworker:
        print(f"{task}{' (chief)' if writer else ''}: {replicas} replicas across "
              f"{task.workers} workers, global batch {global_batch}", flush=True)
    elif replicas > 1:
        print(f"{replicas} replicas ({', '.join(strategy.extended.worker_devices)}), "
              f"global batch {global_batch}", flush=True)
    what = (f"{config.batch_size} streams of {pipeline.targets // config.batch_size:,} characters"
            if config.mode == "stream" else f"{pipeline.targets:,} windows")
    print(f"training on {what} per epoch ({pipeline.held_out:,} held out), "
          f"{model.count_params():,} parameters, epochs {initial_epoch + 1}..{config.epochs}"
          + (f", at most {_duration(config.max_time)}" if config.max_time else ""), flush=True)
    clock.start()
    with context:
        # shuffle=False: the batches come in the order of (seed, epoch). Keras's own
        # default would also shuffle the batch order with Python's global RNG,
        # which --no-shuffle could not turn off and a resume could not replay.
        fit = model.fit(pipeline.train, validation_data=pipeline.val, epochs=config.epochs,
                        initial_epoch=initial_epoch, verbose=verbose, shuffle=False,
                        callbacks=_callbacks(run_dir, config, writer, pipeline=pipeline,
                                             clock=clock, history=history, budget=budget),
                        **pipeline.fit_args)
        seconds = clock.elapsed() - clock.before
        if model.stop_training and any(
                not math.isfinite(v) for v in fit.history.get("loss", [0.0])):
            raise RuntimeError("training stopped: the loss became NaN (try a lower --learning-rate)")
        val_scores = _held_out_score(model, pipeline)
    save_model(model, run_dir / "model.keras", writer)
    if writer:
        from .model import stream_weights
        from .native import STREAM_FILE, export_stream_weights

        export_stream_weights(stream_weights(model), run_dir / STREAM_FILE, config.seq_len)

    epochs_run = len(fit.history.get("loss", []))
    ended_by = ("max_time" if budget is not None and budget.spent
                else "patience" if model.stop_training else "epochs")
    # The epoch the budget cut ran budget.steps of its steps.
    steps = epochs_run * pipeline.steps_per_epoch - (
        pipeline.steps_per_epoch - budget.steps if ended_by == "max_time" else 0)
    summary = {
        "mode": config.mode,
        "epochs": initial_epoch + epochs_run,
        "ended_by": ended_by,
        "seconds": round(seconds, 1),
        "training_seconds": round(clock.elapsed(), 1),
        "samples_per_second": (round(steps * pipeline.targets / pipeline.steps_per_epoch
                                     / seconds, 1) if seconds else None),
        "train_loss": fit.history["loss"][-1] if epochs_run else None,
        "train_accuracy": fit.history["accuracy"][-1] if epochs_run else None,
    }
    if val_scores is not None:
        val_loss, val_acc = val_scores
        summary.update(val_loss=val_loss, val_bits_per_char=val_loss / math.log(2),
                       val_accuracy=val_acc, val_targets=pipeline.held_out)
    if writer:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        plot_history(read_history(run_dir / "history.csv"), run_dir / "history.png")
    return summary


def _held_out_score(model, pipeline: Pipeline):
    """`(loss, accuracy)` of the trained model on the held-out part, or None."""
    scorer = _stream_validation(pipeline)
    if scorer is not None:
        return scorer.score()
    if pipeline.val is None:
        return None
    loss, accuracy = model.evaluate(pipeline.val, verbose=0,
                                    steps=pipeline.fit_args.get("validation_steps"))
    return loss, accuracy


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _print_summary(summary: dict, run_dir: Path) -> None:
    def fmt(key, spec=".4f"):
        value = summary.get(key)
        return "n/a" if value is None else format(value, spec)

    ended = {"max_time": ", stopped by --max-time", "patience": ", stopped early (--patience)"}
    unit = "targets" if summary.get("mode") == "stream" else "windows"
    print(f"\ndone: {summary['epochs']} epochs in {summary['seconds']:.0f} s "
          f"({fmt('samples_per_second', ',.0f')} {unit}/s){ended.get(summary['ended_by'], '')}")
    print(f"train loss {fmt('train_loss')}, accuracy {fmt('train_accuracy')}")
    if "val_loss" in summary:
        held = ("held-out characters, one continuous stream" if summary.get("mode") == "stream"
                else "held-out windows")
        print(f"validation loss {fmt('val_loss')} nats/char = {fmt('val_bits_per_char')} "
              f"bits/char, accuracy {fmt('val_accuracy')} ({summary['val_targets']:,} {held})")
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
            "other settings); only --epochs, --max-time, --patience, --strategy, "
            "--cpu-devices and --data (the same corpus at another path) may")
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
    spent = _seconds_trained(run_dir, done)
    if config.max_time is not None and spent >= config.max_time:
        raise ConfigError(
            f"{run_dir}: already trained for {spent:.0f} s, the whole --max-time "
            f"{config.max_time:.0f} s; pass a larger --max-time (it counts the run's "
            "whole training time) to train further")
    return run_dir, config, corpus, done, checkpoint


def _seconds_trained(run_dir: Path, done: int) -> float:
    """The run's training time over its first `done` epochs, from history.csv."""
    import csv

    try:
        with open(run_dir / "history.csv", newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("epoch", "").isdigit()
                    and int(r["epoch"]) < done and r.get("seconds")]
    except FileNotFoundError:
        return 0.0
    return max((float(r["seconds"]) for r in rows), default=0.0)


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


def _check_fits(config: TrainConfig, n_ids: int) -> None:
    """Fail before anything is written if the corpus cannot feed the config."""
    from .windows import split_starts, stream_length

    train_starts, _ = split_starts(n_ids, config.seq_len, config.val_fraction)
    if config.mode == "stream":
        split = train_starts.stop + config.seq_len
        end = split if config.samples is None else min(split, config.samples)
        stream_length(end, config.batch_size, config.seq_len)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        os.environ["CHARSTREAM_VERBOSE"] = "1"
    try:
        if args.auto_resume:
            if args.resume or not args.out:
                raise ConfigError("--auto-resume goes with --out DIR (not --resume)")
            if (Path(args.out) / "config.json").exists():
                args.resume, args.out = args.out, None
        config, given = config_from_args(args, validate=not args.resume)
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
            _check_fits(config, len(corpus.ids))
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

    from ._quiet import start_tensorflow

    start_tensorflow()
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
