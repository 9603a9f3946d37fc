"""What `fit` trains and validates on, for either mode and any strategy.

`build_pipeline` turns a config, a corpus and a `Cluster` into a `Pipeline`: the
training batches (`WindowBatches`, or this worker's share of them under
multiworker, or `StreamBatches`), the held-out part and how it is scored
(Keras's validation over windows; one continuous stream in the native step for
`--mode stream`), and the callbacks that keep the data in step with the epoch.
`check_fits` fails before anything is written if the corpus cannot feed the
config.
"""
from __future__ import annotations

import dataclasses
import typing

from .config import TrainConfig
from .run import Corpus, split_index, split_starts
from .windows import stream_length


@dataclasses.dataclass
class Pipeline:
    train: typing.Any          # what fit trains on
    val: typing.Any            # what Keras validates on, or None (stream: a callback scores)
    targets: int               # training targets per epoch, all workers together
    steps_per_epoch: int       # optimizer steps per epoch
    held_out: int              # held-out targets
    fit_args: dict             # steps_per_epoch / validation_steps for fit, if needed
    callbacks: list            # what keeps the data in step with the epoch, and scores it

    def held_out_score(self, model):
        """`(loss, accuracy)` of `model` on the held-out part, or None."""
        from .callbacks import StreamValidation

        scorer = next((c for c in self.callbacks if isinstance(c, StreamValidation)), None)
        if scorer is not None:
            scorer.set_model(model)
            return scorer.score()
        if self.val is None:
            return None
        loss, accuracy = model.evaluate(self.val, verbose=0,
                                        steps=self.fit_args.get("validation_steps"))
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


def _training_end(config: TrainConfig, n_ids: int) -> int:
    """Stream mode trains on `ids[:end]`: the training part, or its first N."""
    split = split_index(n_ids, config.val_fraction)
    return split if config.samples is None else min(split, config.samples)


def check_fits(config: TrainConfig, n_ids: int) -> None:
    """Raise ValueError, naming the part and the sizes, if a corpus of `n_ids`
    characters is too short for one training step or one held-out window."""
    split_starts(n_ids, config.seq_len, config.val_fraction)
    if config.mode == "stream":
        stream_length(_training_end(config, n_ids), config.batch_size, config.seq_len)


def build_pipeline(config: TrainConfig, corpus: Corpus, cluster, initial_epoch: int) -> Pipeline:
    """The batches `fit` trains and validates on, one-hot on demand."""
    if config.mode == "stream":
        return _stream_pipeline(config, corpus, initial_epoch)
    train_starts, val_starts = split_starts(len(corpus.ids), config.seq_len, config.val_fraction)
    if config.samples is not None and config.samples < len(train_starts):
        train_starts = train_starts[:config.samples]
    depth, seq_len = corpus.vocab.size, config.seq_len
    global_batch = cluster.global_batch(config.batch_size)
    val_batch = max(global_batch, 1024)  # scoring needs no gradients: bigger batches
    if cluster.multiworker:
        from .distribute import worker_dataset

        # Each worker builds only its own replicas' share of every global batch.
        train, steps, windows = worker_dataset(
            cluster.strategy, corpus.ids, train_starts, global_batch, seq_len, depth,
            shuffle=config.shuffle, seed=config.seed, epochs=range(initial_epoch, config.epochs))
        pipeline = Pipeline(train, None, windows, steps, len(val_starts),
                            {"steps_per_epoch": steps}, [])
        if len(val_starts):
            pipeline.val, pipeline.fit_args["validation_steps"], _ = worker_dataset(
                cluster.strategy, corpus.ids, val_starts, val_batch, seq_len, depth)
        return pipeline
    from .batches import WindowBatches

    train = WindowBatches(corpus.ids, train_starts, global_batch, seq_len, depth,
                          shuffle=config.shuffle, seed=config.seed, epoch=initial_epoch)
    val = (WindowBatches(corpus.ids, val_starts, val_batch, seq_len, depth)
           if len(val_starts) else None)
    return Pipeline(train, val, len(train_starts), len(train), len(val_starts), {},
                    [train.epoch_callback()])


def _stream_pipeline(config: TrainConfig, corpus: Corpus, initial_epoch: int) -> Pipeline:
    """`--mode stream`: contiguous streams of the training part; the held-out tail
    scored as one continuous stream after every epoch."""
    from .batches import StreamBatches
    from .callbacks import ResetStreams, StreamValidation

    end = _training_end(config, len(corpus.ids))
    train = StreamBatches(corpus.ids[:end], config.batch_size, config.seq_len,
                          corpus.vocab.size, seed=config.seed, epoch=initial_epoch)
    callbacks = [train.epoch_callback(), ResetStreams()]
    held_out = 0
    if config.val_fraction:
        val_ids = corpus.ids[split_index(len(corpus.ids), config.val_fraction):]
        callbacks.append(StreamValidation(val_ids, config.seq_len))
        held_out = len(val_ids) - config.seq_len
    return Pipeline(train, None, train.targets, len(train), held_out, {}, callbacks)
