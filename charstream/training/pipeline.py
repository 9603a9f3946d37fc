"""What `fit` trains and validates on, for either mode and any strategy.

`build_pipeline` turns a `Plan` and a `Cluster` into a `Pipeline`: the
training batches (`WindowBatches`, or this worker's share of them under
multiworker, or `StreamChunks`), the held-out part and how it is scored
(Keras's validation over windows; one continuous stream in the native step for
`--mode stream`), and the callbacks that keep the data in step with the epoch.
`check_fits` fails before anything is written if the corpus cannot feed the
config.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Optional, Union

from ..config import TrainConfig
from ..data.corpus import Split
from ..data.windows import stream_length

if TYPE_CHECKING:  # the types only: the plan imports this module before TensorFlow starts
    import keras
    import tensorflow as tf

    from .batches import StreamBatches, WindowBatches
    from .distribute import Cluster
    from .plan import Plan

    Batches = Union[WindowBatches, StreamBatches, tf.distribute.DistributedDataset]


@dataclasses.dataclass
class Pipeline:
    """What `fit` trains and validates on, and what it takes to keep it in step."""

    train: "Batches"                           # what fit trains on
    targets: int                               # training targets per epoch, all workers
    steps_per_epoch: int                       # fit's steps per epoch (stream: chunks)
    held_out: int = 0                          # held-out targets
    val: Optional["Batches"] = None            # Keras validates on it (windows), or None
    train_steps: Optional[int] = None          # fit's steps_per_epoch (a generator dataset)
    val_steps: Optional[int] = None            # fit's validation_steps (likewise)
    callbacks: list["keras.callbacks.Callback"] = dataclasses.field(default_factory=list)

    @property
    def fit_args(self) -> dict:
        """The step counts `fit` needs, for datasets that do not know their length."""
        args = {"steps_per_epoch": self.train_steps, "validation_steps": self.val_steps}
        return {k: v for k, v in args.items() if v is not None}

    def held_out_score(self, model):
        """`(loss, accuracy)` of `model` on the held-out part, or None."""
        from .callbacks import StreamValidation

        scorer = next((c for c in self.callbacks if isinstance(c, StreamValidation)), None)
        if scorer is not None:
            scorer.set_model(model)
            return scorer.score()
        if self.val is None:
            return None
        loss, accuracy = model.evaluate(self.val, verbose=0, steps=self.val_steps)
        return loss, accuracy

    def describe(self, config: TrainConfig, model, initial_epoch: int) -> str:
        what = (f"{config.batch_size} streams of {self.targets // config.batch_size:,} characters"
                if config.mode == "stream" else f"{self.targets:,} windows")
        budget = f", at most {_duration(config.max_time)}" if config.max_time else ""
        return (f"training on {what} per epoch ({self.held_out:,} held out), "
                f"{model.count_params():,} parameters, epochs {initial_epoch + 1}.."
                f"{config.epochs}{budget}")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _training_end(config: TrainConfig, split: Split) -> int:
    """Stream mode trains on `ids[:end]`: the training part, or its first N."""
    return split.index if config.samples is None else min(split.index, config.samples)


def check_fits(config: TrainConfig, split: Split) -> None:
    """Raise ValueError, naming the part and the sizes, if the corpus cut in
    `split` is too short for one training step or one held-out window."""
    split.window_starts(config.seq_len)
    if config.mode == "stream":
        stream_length(_training_end(config, split), config.batch_size, config.seq_len)


def build_pipeline(plan: "Plan", cluster: "Cluster") -> Pipeline:
    """The batches `fit` trains and validates on, one-hot on demand."""
    if plan.config.mode == "stream":
        return _stream_pipeline(plan)
    config, corpus = plan.config, plan.corpus
    train_starts, val_starts = plan.split.window_starts(config.seq_len)
    if config.samples is not None and config.samples < len(train_starts):
        train_starts = train_starts[:config.samples]
    depth, seq_len = corpus.vocab.size, config.seq_len
    global_batch = cluster.global_batch(config.batch_size)
    val_batch = max(global_batch, 1024)  # scoring needs no gradients: bigger batches
    if cluster.multiworker:
        return _worker_pipeline(plan, cluster, train_starts, val_starts, global_batch, val_batch)
    from .batches import WindowBatches

    train = WindowBatches(corpus.ids, train_starts, global_batch, seq_len, depth,
                          shuffle=config.shuffle, seed=config.seed, epoch=plan.initial_epoch)
    val = (WindowBatches(corpus.ids, val_starts, val_batch, seq_len, depth)
           if len(val_starts) else None)
    return Pipeline(train, len(train_starts), len(train), len(val_starts), val,
                    callbacks=[train.epoch_callback()])


def _worker_pipeline(plan: "Plan", cluster: "Cluster", train_starts: range, val_starts: range,
                     global_batch: int, val_batch: int) -> Pipeline:
    """Under multiworker each worker builds only its own replicas' share of every
    global batch."""
    from .distribute import worker_dataset

    config, ids, depth = plan.config, plan.corpus.ids, plan.corpus.vocab.size
    train, steps, windows = worker_dataset(
        cluster.strategy, ids, train_starts, global_batch, config.seq_len, depth,
        shuffle=config.shuffle, seed=config.seed,
        epochs=range(plan.initial_epoch, config.epochs))
    pipeline = Pipeline(train, windows, steps, len(val_starts), train_steps=steps)
    if len(val_starts):
        pipeline.val, pipeline.val_steps, _ = worker_dataset(
            cluster.strategy, ids, val_starts, val_batch, config.seq_len, depth)
    return pipeline


def _stream_pipeline(plan: "Plan") -> Pipeline:
    """`--mode stream`: contiguous streams of the training part; the held-out tail
    scored as one continuous stream after every epoch."""
    from .batches import StreamChunks
    from .callbacks import ResetStreams, StreamValidation

    config, corpus, split = plan.config, plan.corpus, plan.split
    end = _training_end(config, split)
    # --steps-per-execution batches an item, for the step of `train_in_chunks`
    train = StreamChunks(corpus.ids[:end], config.batch_size, config.seq_len,
                         corpus.vocab.size, config.steps_per_execution, seed=config.seed,
                         epoch=plan.initial_epoch)
    callbacks = [train.epoch_callback(), ResetStreams()]
    held_out = 0
    if config.val_fraction:
        callbacks.append(StreamValidation(split.held_out, config.seq_len))
        held_out = len(split.held_out) - config.seq_len
    return Pipeline(train, train.targets, len(train), held_out, callbacks=callbacks)
