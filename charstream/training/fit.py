"""The fit loop of a planned run: build, fit, finish.

    build()    the `Cluster` (strategy, replicas, whether this process writes),
               the input pipeline and the model, new or from the checkpoint
    fit()      Keras's own `fit`, with the callbacks that make it safe to stop,
               resume and budget (`charstream.training.callbacks`)
    finish()   the held-out score, `model.keras`, `stream.npz` and `history.png`,
               and the summary (the command line writes it, with the sample)

The run directory (`charstream.run`) is written through temporary files renamed
into place, so a run killed at any moment (even SIGKILL) loses at most the epoch
in progress and `--resume` picks it up from its newest checkpoint.
"""
from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

from .._io import atomic_path
from ..config import TrainConfig
from .callbacks import Clock, StopFlag, TimeBudget
from .distribute import Cluster
from .pipeline import Pipeline, build_pipeline
from .plan import Plan


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


def _unroll(config: TrainConfig) -> bool:
    """`--unroll`, or by default: unrolled unless a GPU could run cuDNN."""
    if config.unroll is not None:
        return config.unroll
    import tensorflow as tf

    return not tf.config.list_physical_devices("GPU")


def _jit_compile(config: TrainConfig) -> bool:
    """`--jit-compile`, or by default: on where XLA changes nothing but the order of
    sums and is faster: no GPU (cuDNN, which XLA cannot compile), no dropout (XLA
    draws the masks with another generator: the default recipe, dropout 0.05,
    reached 1.5043 nats held out under XLA against 1.4923 without, one run each) and
    a multi-threaded intra-op pool (XLA parallelises inside its one computation: with
    one thread per op, stream mode's default, its chunk step ran at 0.51x PyTorch
    against 0.95x without it, `benchmarks/train_rounds.py --intra-op-threads 1`)."""
    if config.jit_compile is not None:
        return config.jit_compile
    if config.dropout or config.recurrent_dropout or config.output_dropout or config.weight_drop:
        return False
    from .distribute import intra_op_threads

    if intra_op_threads(config) == 1:
        return False
    import tensorflow as tf

    return not tf.config.list_physical_devices("GPU")


def build_model(config: TrainConfig, depth: int, checkpoint: Path | None, cluster: Cluster):
    """The model to train, inside the strategy's scope: the checkpoint's (weights
    and optimizer) or a new one from `config.seed`."""
    import keras

    from ..model import build_stream_model, build_training_model

    keras.utils.set_random_seed(config.seed)
    with cluster.strategy.scope():  # variables are created on every replica
        if checkpoint is not None:
            model = keras.saving.load_model(checkpoint, safe_mode=True)
        else:
            common = dict(seq_len=config.seq_len, depth=depth, units=config.units,
                          layers=config.layers, dropout=config.dropout,
                          recurrent_dropout=config.recurrent_dropout,
                          output_dropout=config.output_dropout,
                          learning_rate=config.learning_rate, unroll=_unroll(config))
            model = (build_stream_model(config.batch_size, **common) if config.mode == "stream"
                     else build_training_model(**common))
    if config.mode == "stream":  # measured there, under one thread per op
        from .unrolled import unroll_lstms

        # on the instance, as below: model.keras stays Keras's
        unroll_lstms(model, config.fused_lstm)
    if config.weight_drop:  # on the instance: a checkpoint loads as plain LSTMs
        from .weight_drop import drop_recurrent_weights

        drop_recurrent_weights(model, config.weight_drop, config.seed)
    if config.mode == "stream":  # on one device (config.validate): chunks per call
        from .steps import train_in_chunks

        train_in_chunks(model, depth, _jit_compile(config))
    else:
        # Keras 3 runs several steps per call on one device only: under tf.distribute
        # its multi-step loop fails ("You must feed a value for placeholder tensor").
        model.steps_per_execution = config.steps_per_execution if cluster.replicas == 1 else 1
        model.jit_compile = bool(config.jit_compile)  # windows: only when asked
    return model


def build(plan: Plan):
    """`(cluster, pipeline, model)` for the plan."""
    cluster = Cluster.start(plan.config, plan.task)
    if cluster.multiworker:
        cluster.check_agreement(plan.config, plan.corpus.sha256, plan.initial_epoch,
                                plan.checkpoint)
    pipeline = build_pipeline(plan, cluster)
    model = build_model(plan.config, plan.corpus.vocab.size, plan.checkpoint, cluster)
    return cluster, pipeline, model


# ----------------------------------------------------------------------------- fit

def make_callbacks(plan: Plan, cluster: Cluster, pipeline: Pipeline, clock, budget, history):
    """The training callbacks, in the order they must see each epoch's end: the
    held-out score first (in `pipeline.callbacks`), then history, then the
    checkpoint (a kill between the two leaves a row without its checkpoint, which
    resume drops and recomputes). Only the writer writes the run directory."""
    import keras

    from .callbacks import Checkpoint, LinearDecay, ReseedDropout, StopWhenAsked

    config, run, writer = plan.config, plan.run, cluster.writer
    callbacks = [StopWhenAsked(StopFlag), keras.callbacks.TerminateOnNaN(),
                 ReseedDropout(config.seed), *pipeline.callbacks]
    if budget is not None:
        callbacks.append(budget)
    if config.lr_decay:
        callbacks.append(LinearDecay(config.learning_rate, config.lr_final, config.epochs,
                                     clock, config.max_time))
    callbacks.append(history)
    callbacks.append(Checkpoint(lambda model, epoch: save_model(
        model, run.checkpoint(epoch), writer)))
    if config.patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True))
    return callbacks


@dataclasses.dataclass
class Fitted:
    """What `fit` did: Keras's history of this session, every epoch's row (the
    run's whole `history.csv`, in memory), the run's clock and the budget."""

    history: dict
    rows: list
    clock: Clock
    budget: TimeBudget | None

    @property
    def epochs(self) -> int:
        return len(self.history.get("loss", []))


def fit(plan: Plan, cluster: Cluster, pipeline: Pipeline, model, verbose: int = 2) -> Fitted:
    """Train epochs `plan.initial_epoch .. config.epochs` (or until `--max-time`)."""
    from .callbacks import History

    config = plan.config
    clock = Clock(plan.history[-1].get("seconds", 0.0) if plan.history else 0.0)
    budget = TimeBudget(clock, config.max_time) if config.max_time else None
    # Only the writer hands the rows to the run directory; every worker keeps them.
    history = History(plan.run.write_history if cluster.writer else None, clock, plan.history)
    if cluster.writer:  # only once every worker agreed to train
        plan.run.checkpoints.mkdir(exist_ok=True)
    print(pipeline.describe(config, model, plan.initial_epoch), flush=True)
    clock.start()
    with cluster.keras_context(model):
        # shuffle=False: the batches come in the order of (seed, epoch). Keras's own
        # default would also shuffle the batch order with Python's global RNG,
        # which --no-shuffle could not turn off and a resume could not replay.
        keras_history = model.fit(
            pipeline.train, validation_data=pipeline.val, epochs=config.epochs,
            initial_epoch=plan.initial_epoch, verbose=verbose, shuffle=False,
            callbacks=make_callbacks(plan, cluster, pipeline, clock, budget, history),
            **pipeline.fit_args).history
    if model.stop_training and not all(math.isfinite(v) for v in keras_history.get("loss", [])):
        raise RuntimeError("training stopped: the loss became NaN (try a lower --learning-rate)")
    return Fitted(keras_history, history.rows, clock, budget)


# ----------------------------------------------------------------------------- finish

def finish(plan: Plan, cluster: Cluster, pipeline: Pipeline, model, fitted: Fitted) -> dict:
    """Score the held-out part, save `model.keras` and `stream.npz`, and plot
    `history.png` (from the rows in memory).

    Returns:
        The summary, for the caller to complete (the sample) and write once.
    """
    with cluster.keras_context(model):
        scores = pipeline.held_out_score(model)
    save_model(model, plan.run.model_file, cluster.writer)
    if cluster.writer:
        from ..model import stream_weights
        from ..weights import export_stream_weights
        from .plot import history_png

        export_stream_weights(stream_weights(model), plan.run.stream_file, plan.config.seq_len)
        plan.run.write_plot(history_png(fitted.rows))
    return summarize(plan, pipeline, model, fitted, scores)


def summarize(plan: Plan, pipeline: Pipeline, model, fitted: Fitted, scores) -> dict:
    """What the run reached: `summary.json`'s fields but the sample."""
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


@dataclasses.dataclass
class Trained:
    """What `train` leaves: the summary, the cluster and the trained model."""

    summary: dict
    cluster: Cluster
    model: object


def train(plan: Plan, verbose: int = 2) -> Trained:
    """Build, fit and finish the plan. Under `--strategy multiworker` every worker
    calls this with the same plan; all of them train, only the chief writes."""
    cluster, pipeline, model = build(plan)
    fitted = fit(plan, cluster, pipeline, model, verbose)
    return Trained(finish(plan, cluster, pipeline, model, fitted), cluster, model)
