"""`python -m charstream.train`: train the char-LSTM and write a run directory.

One run, four steps, each a function that can be read and tested alone:

    plan()     the arguments resolved into a `Plan`: a new run, or the run in
               --resume DIR (or in --out DIR with --auto-resume), its settings,
               its corpus and the checkpoint to continue from
    build()    the `Cluster` (strategy, replicas, whether this process writes),
               the input pipeline and the model, new or from the checkpoint
    fit()      Keras's own `fit`, with the callbacks that make it safe to stop,
               resume and budget (`charstream.callbacks`)
    finish()   the held-out score, `model.keras`, `stream.npz`, `summary.json`
               and `history.png`

The run directory (`charstream.run`) is written through temporary files renamed
into place, so a run killed at any moment (even SIGKILL) loses at most the epoch
in progress and `--resume` picks it up from its newest checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import sys
import tempfile
from pathlib import Path

from . import _cli
from .config import ConfigError, TrainConfig
from .distribute import Cluster
from .pipeline import Pipeline, build_pipeline
from .plan import Plan, RunOptions, config_from_args, options_from_args, plan  # noqa: F401
from .run import RunDir

PROG = "python -m charstream.train"


class StopFlag:
    """Set by SIGINT/SIGTERM. The handler raises KeyboardInterrupt at once, but
    one that lands while a `__del__` runs (TensorFlow frees iterators at every
    epoch's end, just when a checkpoint appears) is swallowed by Python, so the
    training loop also checks the flag after every step (`StopWhenAsked`)."""

    requested = False


def _on_stop_signal(signum, frame):
    StopFlag.requested = True
    raise KeyboardInterrupt


# ----------------------------------------------------------------------------- CLI flags

def build_parser() -> argparse.ArgumentParser:
    """The CLI: a flag per `TrainConfig` field (the training settings, saved as
    config.json), then a flag per `RunOptions` field (what to do with the run)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Train a character-level LSTM and write a run directory.",
        argument_default=argparse.SUPPRESS)
    _cli.add_dataclass_flags(parser, TrainConfig)
    _cli.add_dataclass_flags(parser.add_argument_group("the run"), RunOptions)
    return parser


# ----------------------------------------------------------------------------- build

def save_model(model, path: Path, writer: bool = True) -> None:
    """`model.save(path)` through a temporary file renamed into place.

    Under multiworker, saving may run collective ops (reading distributed
    variables), so every worker saves; a worker that is not the `writer` saves into
    a temporary directory that is deleted at once, and `path` is the chief's alone.
    """
    from ._io import atomic_path

    if writer:
        with atomic_path(path) as tmp:
            model.save(tmp)
        return
    with tempfile.TemporaryDirectory(prefix="charstream-worker-") as scratch:
        model.save(Path(scratch) / path.name)


def _unroll(config: TrainConfig) -> bool:
    """`--unroll`, or by default: unrolled unless a GPU could run cuDNN."""
    if config.unroll is not None:
        return config.unroll
    import tensorflow as tf

    return not tf.config.list_physical_devices("GPU")


def build_model(config: TrainConfig, depth: int, checkpoint: Path | None, cluster: Cluster):
    """The model to train, inside the strategy's scope: the checkpoint's (weights
    and optimizer) or a new one from `config.seed`."""
    import keras

    from .model import build_stream_model, build_training_model

    keras.utils.set_random_seed(config.seed)
    with cluster.strategy.scope():  # variables are created on every replica
        if checkpoint is not None:
            model = keras.saving.load_model(checkpoint, safe_mode=True)
        else:
            common = dict(seq_len=config.seq_len, depth=depth, units=config.units,
                          layers=config.layers, dropout=config.dropout,
                          recurrent_dropout=config.recurrent_dropout,
                          learning_rate=config.learning_rate, unroll=_unroll(config))
            model = (build_stream_model(config.batch_size, **common) if config.mode == "stream"
                     else build_training_model(**common))
    # Keras 3 runs several steps per call on one device only: under tf.distribute
    # its multi-step loop fails ("You must feed a value for placeholder tensor").
    model.steps_per_execution = config.steps_per_execution if cluster.replicas == 1 else 1
    return model


def build(plan: Plan):
    """`(cluster, pipeline, model)` for the plan."""
    cluster = Cluster.start(plan.config)
    if cluster.multiworker:
        cluster.check_agreement(plan.config, plan.corpus.sha256, plan.initial_epoch,
                                plan.checkpoint)
    pipeline = build_pipeline(plan.config, plan.corpus, cluster, plan.initial_epoch)
    model = build_model(plan.config, plan.corpus.vocab.size, plan.checkpoint, cluster)
    return cluster, pipeline, model


# ----------------------------------------------------------------------------- fit

def make_callbacks(plan: Plan, cluster: Cluster, pipeline: Pipeline, clock, budget, history):
    """The training callbacks, in the order they must see each epoch's end: the
    held-out score first (in `pipeline.callbacks`), then history, then the
    checkpoint (a kill between the two leaves a row without its checkpoint, which
    resume drops and recomputes). Only the writer writes the run directory."""
    import keras

    from .callbacks import Checkpoint, History, LinearDecay, ReseedDropout, StopWhenAsked

    config, run, writer = plan.config, plan.run, cluster.writer
    callbacks = [StopWhenAsked(StopFlag), keras.callbacks.TerminateOnNaN(),
                 ReseedDropout(config.seed), *pipeline.callbacks]
    if budget is not None:
        callbacks.append(budget)
    if config.lr_decay:
        callbacks.append(LinearDecay(config.learning_rate, config.lr_final, config.epochs,
                                     clock, config.max_time))
    if writer:
        callbacks.append(History(run.write_history, clock, history))
    callbacks.append(Checkpoint(lambda model, epoch: save_model(
        model, run.checkpoint(epoch), writer)))
    if config.patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True))
    return callbacks


@dataclasses.dataclass
class Fitted:
    """What `fit` did: Keras's history, the run's clock and the budget, if any."""

    history: dict
    clock: object
    budget: object

    @property
    def epochs(self) -> int:
        return len(self.history.get("loss", []))


def fit(plan: Plan, cluster: Cluster, pipeline: Pipeline, model, verbose: int = 2) -> Fitted:
    """Train epochs `plan.initial_epoch .. config.epochs` (or until `--max-time`)."""
    from .callbacks import Clock, TimeBudget

    config = plan.config
    kept = [row for row in plan.run.read_history() if row["epoch"] < plan.initial_epoch]
    clock = Clock(kept[-1].get("seconds", 0.0) if kept else 0.0)
    budget = TimeBudget(clock, config.max_time) if config.max_time else None
    if cluster.writer:  # only once every worker agreed to train
        plan.run.checkpoints.mkdir(exist_ok=True)
    print(pipeline.describe(config, model, plan.initial_epoch), flush=True)
    clock.start()
    with cluster.keras_context(model):
        # shuffle=False: the batches come in the order of (seed, epoch). Keras's own
        # default would also shuffle the batch order with Python's global RNG,
        # which --no-shuffle could not turn off and a resume could not replay.
        history = model.fit(
            pipeline.train, validation_data=pipeline.val, epochs=config.epochs,
            initial_epoch=plan.initial_epoch, verbose=verbose, shuffle=False,
            callbacks=make_callbacks(plan, cluster, pipeline, clock, budget, kept),
            **pipeline.fit_args).history
    if model.stop_training and not all(math.isfinite(v) for v in history.get("loss", [])):
        raise RuntimeError("training stopped: the loss became NaN (try a lower --learning-rate)")
    return Fitted(history, clock, budget)


# ----------------------------------------------------------------------------- finish

def finish(plan: Plan, cluster: Cluster, pipeline: Pipeline, model, fitted: Fitted) -> dict:
    """Score the held-out part, save `model.keras` and `stream.npz`, and write
    `summary.json` and `history.png`.

    Returns:
        The summary.
    """
    with cluster.keras_context(model):
        scores = pipeline.held_out_score(model)
    save_model(model, plan.run.model_file, cluster.writer)
    summary = _summary(plan, pipeline, model, fitted, scores)
    if cluster.writer:
        from .model import stream_weights
        from .native import export_stream_weights
        from .plot import history_png

        export_stream_weights(stream_weights(model), plan.run.stream_file, plan.config.seq_len)
        plan.run.write_summary(summary)
        plan.run.write_plot(history_png(plan.run.read_history()))
    return summary


def _summary(plan: Plan, pipeline: Pipeline, model, fitted: Fitted, scores) -> dict:
    budget = fitted.budget
    ended_by = ("max_time" if budget is not None and budget.spent
                else "patience" if model.stop_training else "epochs")
    seconds = fitted.clock.elapsed() - fitted.clock.before
    # The epoch the budget cut ran budget.steps of its steps.
    steps = fitted.epochs * pipeline.steps_per_epoch - (
        pipeline.steps_per_epoch - budget.steps if ended_by == "max_time" else 0)
    targets = steps * pipeline.targets / pipeline.steps_per_epoch
    history = fitted.history
    summary = {
        "mode": plan.config.mode,
        "epochs": plan.initial_epoch + fitted.epochs,
        "ended_by": ended_by,
        "seconds": round(seconds, 1),
        "training_seconds": round(fitted.clock.elapsed(), 1),
        "samples_per_second": round(targets / seconds, 1) if seconds else None,
        "train_loss": history["loss"][-1] if fitted.epochs else None,
        "train_accuracy": history["accuracy"][-1] if fitted.epochs else None,
    }
    if scores is not None:
        val_loss, val_accuracy = scores
        summary.update(val_loss=val_loss, val_bits_per_char=val_loss / math.log(2),
                       val_accuracy=val_accuracy, val_targets=pipeline.held_out)
    return summary


def train(plan: Plan, verbose: int = 2) -> tuple[dict, Cluster]:
    """Build, fit and finish the plan. Under `--strategy multiworker` every worker
    calls this with the same plan; all of them train, only the chief writes."""
    cluster, pipeline, model = build(plan)
    fitted = fit(plan, cluster, pipeline, model, verbose)
    return finish(plan, cluster, pipeline, model, fitted), cluster


# ----------------------------------------------------------------------------- CLI

def _print_summary(summary: dict, run: RunDir) -> None:
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
    print(f"run directory: {run}")


# The sample written at the end: settings recorded in summary.json.
SAMPLE = {"prime": "\n", "temperature": 0.8, "seed": 0}


def _write_sample(run: RunDir, summary: dict, length: int) -> None:
    """Stream `length` characters from the new model to stdout and sample.txt, and
    record how in summary.json."""
    if length <= 0:
        return
    from .stream import StreamGenerator

    chars = []
    print("\nsample:\n", flush=True)
    for ch in StreamGenerator.load(run.path).stream(**SAMPLE, max_chars=length):
        chars.append(ch)
        sys.stdout.write(ch)
        sys.stdout.flush()
    print()
    run.write_sample("".join(chars))
    run.write_summary({**summary, "sample": {**SAMPLE, "length": length}})


def _start(plan: Plan) -> None:
    """Create the run directory (the writer, for a new run) and say what happens."""
    task = Cluster.task_for(plan.config)
    writer = task is None or task.is_chief
    if not plan.resuming and writer:
        plan.run.create(plan.config, plan.corpus)
    elif writer:  # a killed process may have left a half-written temporary file
        plan.run.remove_temporaries()
    action = ("resuming" if plan.resuming else "writing") if writer else "training for"
    print(f"{f'{task}: ' if task else ''}{action} {plan.run} "
          f"(corpus {plan.corpus.path}, {len(plan.corpus.ids):,} characters, "
          f"{plan.corpus.vocab.size} symbols)", flush=True)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    options = options_from_args(args)
    _cli.apply_verbose(options)
    try:
        the_plan = plan(args, PROG)
    except (*_cli.BAD_INPUT, RuntimeError) as err:
        return _cli.fail(PROG, err)
    _start(the_plan)
    _cli.start_tensorflow()
    StopFlag.requested = False
    # SIGINT only where it is not ignored (a background job's shell ignores it).
    previous = {sig: signal.signal(sig, _on_stop_signal) for sig in (signal.SIGINT, signal.SIGTERM)
                if sig == signal.SIGTERM or signal.getsignal(sig) is not signal.SIG_IGN}
    verbose = 1 if sys.stdout.isatty() else 2
    try:
        summary, cluster = train(the_plan, verbose)
    except KeyboardInterrupt:
        done, _ = the_plan.run.newest_checkpoint()
        workers = " on every worker" if the_plan.config.strategy == "multiworker" else ""
        print(f"\ninterrupted after {done} finished epochs; continue with: "
              f"{the_plan.restart}{workers}", file=sys.stderr)
        return 130
    except ConfigError as err:  # found once the strategy knows the replicas
        return _cli.fail(PROG, err)
    except RuntimeError as err:
        return _cli.fail(PROG, err, status=1)
    except Exception as err:
        message = Cluster.peer_failure(the_plan, err)
        if message is None:
            raise
        return _cli.fail(PROG, message, status=1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _print_summary(summary, the_plan.run)
    if cluster.writer:
        _write_sample(the_plan.run, summary, options.sample_length)
    return 0


if __name__ == "__main__":
    sys.exit(main())
