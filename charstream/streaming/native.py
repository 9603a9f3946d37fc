"""The native backend: the one door to the C LSTM step. No TensorFlow.

`NativeBackend` is the only code that constructs the compiled net
(`charstream.streaming._lstm.NativeLSTM`, from `csrc/_lstm.pyx` over
`csrc/lstm_step.h`): generation, evaluation, training's validation and the
serving engine's batch all step through it. One call per character runs every
layer, the softmax and the sampling without the GIL.
"""
from __future__ import annotations

import numpy as np

WINDOW_BATCH = 1024   # windows scored together by `score_windows`


class NativeBackend:
    """`batch` independent streams of the C step. Implements
    `charstream.streaming.generator.Backend`.

    Args:
        weights: as `charstream.weights.load_stream_weights` returns, or
            `charstream.model.stream_weights`.
        batch: independent streams.
        source: where the weights came from, for error messages.

    Raises:
        ValueError: naming `source`, for weights the C step cannot use.
    """

    name = "native"

    def __init__(self, weights: dict, batch: int = 1, source: str = "weights"):
        from ._lstm import NativeLSTM

        try:
            self._net = NativeLSTM(weights["lstms"], *weights["dense"], batch=batch)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
        self._weights, self._source = weights, source
        self.batch = batch
        self.depth = self._net.depth
        self.units = self._net.units
        self.flops_per_step = self._net.flops_per_step   # one character, one stream
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """The weights' `charstream.weights.fingerprint`."""
        if self._fingerprint is None:
            from ..weights import fingerprint

            self._fingerprint = fingerprint(self._weights)
        return self._fingerprint

    # ------------------------------------------------------------------ the protocol

    def reset(self, rows=None) -> None:
        """Zero the state of every stream, or of those where the bool `rows` is True."""
        self._net.reset(rows)

    def probs(self, ids) -> np.ndarray:
        """Feed `ids[b]` to stream b; the `(batch, depth)` float64 softmax."""
        return self._net.probs(ids)

    def step_sample_into(self, ids, temperature: float, top_k, u, out) -> None:
        self._net.step_sample_into(ids, temperature, top_k or 0, u, out)

    def step_sample1(self, char_id: int, temperature: float, top_k, u: float,
                     top_p: float = 1.0, min_p: float = 0.0) -> int:
        return self._net.step_sample1(char_id, temperature, top_k or 0, u, top_p, min_p)

    def step_logprobs(self, char_id: int, temperature: float, top_k, u: float, top_p: float,
                      min_p: float, want: int) -> tuple[int, float, list]:
        """One step of stream 0 that also reports log-probabilities, from the same
        C call: `(id, logprob, [(id, logprob), ...])`."""
        return self._net.step_sample_logprobs(char_id, temperature, top_k or 0, u, top_p,
                                              min_p, want)

    def sample_many(self, first_id: int, n: int, temperature: float, top_k, u) -> np.ndarray:
        """`n` steps of stream 0 in one C call: feed `first_id`, then each sampled
        id, with the uniforms `u` (the ids `step_sample1` would give, one by one)."""
        return self._net.sample_many(first_id, n, temperature, top_k or 0, u)

    def score(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feed `ids[:-1]` to stream 0 from its current state, in one C call.

        Returns:
            `(nll, hit)`: `nll[j] = -log p(ids[j + 1] | ids[:j + 1])` float64 and
            whether `ids[j + 1]` was the argmax, each `(len(ids) - 1,)`.
        """
        return self._net.score(ids)

    def score_windows(self, ids: np.ndarray, seq_len: int) -> np.ndarray:
        """`-log p(ids[k] | ids[k - seq_len : k])` from a zero state, `k >= seq_len`:
        `WINDOW_BATCH` windows fed to as many streams of a net of its own at once
        (this backend's state is untouched)."""
        net = NativeBackend(self._weights, WINDOW_BATCH, self._source)._net
        targets = ids[seq_len:]
        out = np.empty(len(targets))
        rows = np.arange(WINDOW_BATCH)
        for lo in range(0, len(targets), WINDOW_BATCH):
            n = min(WINDOW_BATCH, len(targets) - lo)
            starts = lo + np.minimum(rows, n - 1)      # a short last batch repeats a window
            net.reset()
            for t in range(seq_len):
                p = net.probs(ids[starts + t])
            out[lo:lo + n] = -np.log(np.maximum(p[rows[:n], targets[lo:lo + n]], 1e-12))
        return out

    # ------------------------------------------------------------------ rows (batching)

    def step_rows(self, rows: int, ids, temperature, top_k, u, out, **optional) -> None:
        """Step streams `0 .. rows - 1` only, each with its own temperature, top-k
        and uniform; write the sampled ids into `out[:rows]`. `optional`: per-row
        `top_p`, `min_p`, and log-probabilities (`want`, `score`, `logprob`,
        `top_ids`, `top_lp`), as `NativeLSTM.step_rows` takes them."""
        self._net.step_rows(rows, ids, temperature, top_k, u, out, **optional)

    def tick_rows(self, rows: int, max_ticks: int, slot, *arrays, **optional):
        """Up to `max_ticks` ticks of a serving batch's rows with its bookkeeping
        in C, without the GIL: `NativeLSTM.tick_rows` says what it takes
        (`charstream.serving.slots.Slots.work` is its user and its twin).
        Returns `(ticks, ids written)`."""
        return self._net.tick_rows(rows, max_ticks, slot, *arrays, **optional)

    def copy_row(self, src: int, dst: int) -> None:
        """Give stream `dst` the state of stream `src`."""
        self._net.copy_row(src, dst)

    def get_row(self, row: int) -> list:
        """Copies of stream `row`'s state: `[(h, c), ...]` per layer."""
        return self._net.get_row(row)

    def set_row(self, row: int, state: list) -> None:
        """Give stream `row` a state from `get_row`."""
        self._net.set_row(row, state)
