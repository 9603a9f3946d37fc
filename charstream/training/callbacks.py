"""The Keras callbacks that make a training run safe to stop, resume and budget.

- `StopWhenAsked`: turns a SIGINT/SIGTERM flag into a clean stop at the next step.
- `Clock`, `TimeBudget`: training time across resumes, and `--max-time`.
- `LinearDecay`: the learning rate, decayed over the run's epochs, or over its
  time budget if that ends the run first.
- `ReseedDropout`: the dropout masks of epoch e come from (seed, e), resumed or not.
- `ResetStreams`: a stateful (`--mode stream`) model starts each epoch from zero.
- `StreamValidation`: the held-out loss of one continuous stream, scored by the
  native C step on a copy of the weights, so training's own state is untouched.
- `History`: the rows of `history.csv`, handed to the run directory after every epoch.
- `Checkpoint`: the whole model and optimizer after every epoch.

No callback here knows a file name: the run directory (`charstream.run`) does.
`History.rows` is the history in memory, which `finish` plots.
"""
from __future__ import annotations

import time
from typing import Callable

import keras
import numpy as np


class StopFlag:
    """Set by the command line's SIGINT/SIGTERM handler; `StopWhenAsked` stops
    `fit` after the step in which it was set. `fitting` tells the handler that
    `StopWhenAsked` is watching (between `fit`'s start and end), so it need not
    raise KeyboardInterrupt itself."""

    requested = False
    fitting = False


class StopWhenAsked(keras.callbacks.Callback):
    """Raise KeyboardInterrupt after the step (or the validation step, or the
    epoch's end) in which `flag.requested` was set by a signal handler."""

    def __init__(self, flag):
        super().__init__()
        self.flag = flag

    def on_train_begin(self, logs=None):
        self.flag.fitting = True
        self.on_train_batch_end(0)  # a signal that came before fit started

    def on_train_end(self, logs=None):
        self.flag.fitting = False

    def on_train_batch_end(self, batch, logs=None):
        if self.flag.requested:
            raise KeyboardInterrupt

    on_test_batch_end = on_epoch_end = on_train_batch_end


class Clock:
    """Training seconds of the whole run: those of earlier sessions (a resume)
    plus the time since `start()`."""

    def __init__(self, before: float = 0.0):
        self.before = before
        self._start = None

    def start(self) -> None:
        self._start = time.perf_counter()

    def elapsed(self) -> float:
        return self.before + (time.perf_counter() - self._start if self._start else 0.0)


class TimeBudget(keras.callbacks.Callback):
    """Stop training once `clock` reaches `seconds`; the epoch in progress then
    ends there (Keras finishes it as any epoch: validation, history, checkpoint)."""

    def __init__(self, clock: Clock, seconds: float):
        super().__init__()
        self.clock, self.seconds = clock, seconds
        self.spent = False
        self.steps = 0  # steps of the epoch the budget ended

    def on_train_batch_end(self, batch, logs=None):
        if self.clock.elapsed() >= self.seconds:
            self.spent, self.steps = True, batch + 1
            self.model.stop_training = True


class LinearDecay(keras.callbacks.Callback):
    """`lr = start * (1 - (1 - final) * progress)`: `final * start` when the run ends.

    Progress in `[0, 1]` is `epoch / (epochs - 1)`, set when each epoch begins, so
    the last epoch trains at `final * start` and the rate of every step is a
    function of its epoch alone (the same with any `steps_per_execution`, on any
    strategy, and on resume). With a time budget, progress is the larger of that
    and the time spent over the budget, updated before every step (every
    `steps_per_execution` steps): the rate then reaches `final * start` when the
    budget does, if it ends the run first.
    """

    def __init__(self, start: float, final: float, epochs: int,
                 clock: Clock | None = None, max_time: float | None = None):
        super().__init__()
        self.start, self.final, self.last = start, final, max(epochs - 1, 1)
        self.clock, self.max_time = clock, max_time
        self.epoch = 0

    def rate(self, epoch: int, seconds: float = 0.0) -> float:
        progress = epoch / self.last
        if self.max_time:
            progress = max(progress, seconds / self.max_time)
        return self.start * (1 - (1 - self.final) * min(progress, 1.0))

    def _set(self) -> None:
        seconds = self.clock.elapsed() if self.clock and self.max_time else 0.0
        self.model.optimizer.learning_rate = self.rate(self.epoch, seconds)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self._set()

    def on_train_batch_begin(self, batch, logs=None):
        if self.max_time:
            self._set()


class ReseedDropout(keras.callbacks.Callback):
    """Set the state of every random-seed generator in the model (the dropout
    masks' source) from `(seed, epoch)` when each epoch begins. A checkpoint
    keeps the weights and the optimizer but not these states, so without this a
    resumed run would draw other masks than an uninterrupted one."""

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        states = [v for v in self.model.variables if v.name == "seed_generator_state"]
        draws = np.random.default_rng([self.seed, epoch]).integers(0, 2**31, len(states))
        for state, draw in zip(states, draws):
            value = np.zeros(state.shape, dtype=state.dtype)
            value[0] = draw
            state.assign(value)


class ResetStreams(keras.callbacks.Callback):
    """Zero the stateful LSTMs' state at the start of every epoch: the streams
    begin again at a new offset."""

    def on_epoch_begin(self, epoch, logs=None):
        from ..model import reset_states

        reset_states(self.model)


class StreamValidation(keras.callbacks.Callback):
    """`val_loss` / `val_accuracy`: one continuous stream over the held-out ids,
    each id from `skip` on scored given everything before it (the number
    `python -m charstream.generate RUN --evaluate` prints as `stream_nats`).

    The weights are copied into the native C step (`NativeBackend.score`, the
    one door to it), so the training model's stateful LSTMs, dropout and
    optimizer are never touched: training with or without this callback is the
    same training.
    """

    def __init__(self, ids: np.ndarray, skip: int):
        super().__init__()
        self.ids, self.skip = ids, skip

    def score(self) -> tuple[float, float]:
        from ..model import stream_weights
        from ..streaming.native import NativeBackend

        nll, hit = NativeBackend(stream_weights(self.model), source="the model").score(self.ids)
        return float(nll[self.skip - 1:].mean()), float(hit[self.skip - 1:].mean())

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["val_loss"], logs["val_accuracy"] = self.score()


class History(keras.callbacks.Callback):
    """One row per finished epoch (`epoch`, the logs' keys in sorted order, the
    learning rate, and `seconds`, the run's training time so far), handed whole
    to `write` after every epoch (the run directory rewrites `history.csv`
    atomically), so a kill leaves the old file or the new one, never a torn row;
    `write=None` only keeps them (a worker that does not write). `rows` are those
    kept from earlier sessions (a resume)."""

    def __init__(self, write: Callable[[list], None] | None, clock: Clock,
                 rows: list | None = None):
        super().__init__()
        self.write, self.clock = write, clock
        self.rows = list(rows or [])

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(
            self.model.optimizer.learning_rate))
        self.rows.append({"epoch": epoch, **dict(sorted(logs.items())),
                          "seconds": round(self.clock.elapsed(), 3)})
        if self.write is not None:
            self.write(self.rows)


class Checkpoint(keras.callbacks.Callback):
    """Save the whole model (weights and optimizer) after every epoch, through
    `save(model, epoch)`, which names the file and writes it atomically."""

    def __init__(self, save: Callable):
        super().__init__()
        self.save = save

    def on_epoch_end(self, epoch, logs=None):
        self.save(self.model, epoch + 1)
