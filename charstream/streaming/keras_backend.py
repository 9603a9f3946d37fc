"""The reference stream backend: the stateful Keras copy behind one compiled step.

`KerasBackend` runs the inference copy (`charstream.model.build_inference_model`,
`batch_shape=(batch, 1, depth)`) one character per call inside a
`tf.function`, and samples in NumPy (`charstream.streaming.sampling`). It is the
backend the native C step (`charstream.streaming.native`) is held to.
"""
from __future__ import annotations

import math

import numpy as np

from ..data.windows import onehot_batch
from .sampling import logprobs_of, sample_id

WINDOW_BATCH = 1024   # windows scored together (no gradients: big batches are cheap)


class KerasBackend:
    """The reference step. Implements `charstream.streaming.generator.Backend`.

    Args:
        train_model: a trained charstream model (windowed or stream-trained).
        batch: independent streams (`batch_shape=(batch, 1, depth)`).
    """

    name = "keras"

    def __init__(self, train_model, batch: int = 1):
        import tensorflow as tf

        from ..model import build_inference_model, lstm_layers

        self.model = build_inference_model(train_model, batch_size=batch)
        self.batch = batch
        self.depth = depth = train_model.output_shape[-1]
        self._lstms = lstm_layers(self.model)
        model = self.model

        # One graph per step: the one-hot is built inside it, the stateful LSTMs
        # update their state variables, and only (batch, depth) floats come back.
        @tf.function(input_signature=[tf.TensorSpec([batch], tf.int32)])
        def step_fn(char_ids):
            x = tf.reshape(tf.one_hot(char_ids, depth, dtype=tf.float32), (batch, 1, depth))
            return model(x, training=False)

        # Calling the concrete function with ready-made id tensors skips tracing
        # checks and conversions: about half of a plain tf.function call's cost.
        self._step_fn = step_fn.get_concrete_function()
        self._tf = tf
        self._id_tensors = ([tf.constant([k], dtype=tf.int32) for k in range(depth)]
                            if batch == 1 else None)
        self.reset()

    def reset(self, rows=None) -> None:
        """Zero the state of every stream, or of the streams where `rows` is True."""
        if rows is None:
            from ..model import reset_states

            reset_states(self.model)
            return
        keep = self._tf.constant(~np.asarray(rows, dtype=bool), dtype=self._tf.float32)[:, None]
        for layer in self._lstms:
            for state in layer.states:
                state.assign(state * keep)

    @property
    def fingerprint(self) -> str:
        """The weights' `charstream.weights.fingerprint` (a stream.npz exported
        from this model has the same)."""
        from ..model import stream_weights
        from ..weights import fingerprint

        return fingerprint(stream_weights(self.model))

    def get_row(self, row: int) -> list:
        """Copies of stream `row`'s state: `[(h, c), ...]` per layer."""
        return [tuple(self._numpy(state)[row].copy() for state in layer.states)
                for layer in self._lstms]

    def _numpy(self, variable) -> np.ndarray:
        return self._tf.convert_to_tensor(variable).numpy()

    def set_row(self, row: int, state: list) -> None:
        """Give stream `row` a state from `get_row`."""
        for layer, pair in zip(self._lstms, state):
            for variable, value in zip(layer.states, pair):
                full = self._numpy(variable).copy()
                full[row] = value
                variable.assign(full)

    def probs(self, ids) -> np.ndarray:
        """Feed `ids[b]` to stream b; the `(batch, depth)` float64 next-id distribution."""
        if self._id_tensors is not None:
            tensor = self._id_tensors[int(np.asarray(ids).reshape(-1)[0])]
        else:
            tensor = self._tf.constant(np.asarray(ids, dtype=np.int32))
        probs = self._step_fn(tensor).numpy().astype(np.float64)
        return probs / probs.sum(axis=1, keepdims=True)

    def step_sample_into(self, ids, temperature: float, top_k, u, out) -> None:
        for b, (p, x) in enumerate(zip(self.probs(ids), u)):
            out[b] = sample_id(p, temperature, top_k, x)

    def step_sample1(self, char_id: int, temperature: float, top_k, u: float,
                     top_p: float = 1.0, min_p: float = 0.0) -> int:
        return sample_id(self.probs([char_id])[0], temperature, top_k, u, top_p, min_p)

    def step_logprobs(self, char_id: int, temperature: float, top_k, u: float, top_p: float,
                      min_p: float, want: int) -> tuple[int, float, list]:
        p = self.probs([char_id])[0]
        got = sample_id(p, temperature, top_k, u, top_p, min_p)
        return (got, *logprobs_of(p, got, temperature, top_k, want, top_p, min_p))

    def score(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feed `ids[:-1]` to stream 0 one step at a time: `(nll, hit)` as
        `NativeBackend.score`."""
        n = max(len(ids) - 1, 0)
        nll, hit = np.empty(n), np.empty(n, dtype=bool)
        for k in range(n):
            p = self.probs([int(ids[k])])[0]
            nll[k] = -math.log(max(p[ids[k + 1]], 1e-12))
            hit[k] = int(np.argmax(p)) == ids[k + 1]
        return nll, hit

    def score_windows(self, ids: np.ndarray, seq_len: int) -> np.ndarray:
        """The windowed copy of the model (`charstream.model.windowed_copy`) over
        batches of `WINDOW_BATCH` windows, each from a zero state."""
        from ..model import windowed_copy

        model = windowed_copy(self.model, seq_len)
        targets = ids[seq_len:]
        out = np.empty(len(targets), np.float32)   # the model's own precision
        for lo in range(0, len(targets), WINDOW_BATCH):
            starts = np.arange(lo, min(lo + WINDOW_BATCH, len(targets)), dtype=np.int64)
            x = onehot_batch(ids, starts, seq_len, self.depth)[0].astype(np.float32)
            p = np.asarray(model.predict_on_batch(x))
            out[starts] = -np.log(np.maximum(p[np.arange(len(starts)), targets[starts]], 1e-12))
        return out
