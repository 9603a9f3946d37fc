"""Streaming: a trained run as a character-by-character iterator.

`StreamGenerator.load(run_dir)` rebuilds the trained model as a stateful LSTM
that reads one character per call (`batch_shape=(batch, 1, depth)`), so each
generated character costs one step, whatever the length of the text so far, and
the context is unlimited (the state carries it), unlike the tutorial's loop that
re-predicts the last 16 characters with `model.predict` every time.

A backend steps the model (`Backend`, below): `"keras"`
(`charstream.streaming.keras_backend`, the reference) or `"native"`
(`charstream.streaming.native`, C, no TensorFlow). How a seed becomes text is
`charstream.streaming.sampling`'s contract, the same on both.
"""
from __future__ import annotations

import os
from typing import Iterator, Protocol

import numpy as np

from .. import _checks
from ..data.text import Vocabulary, reduce_text
from ..run import RunDir
from .sampling import (MAX_LOGPROBS, Piece, Uniforms, check_max_chars, check_min_p,
                       check_temperature, check_top_k, check_top_p, start_ids)
from .state import State, StateError
from .stops import Stops, check_stop, stop_stream

BACKENDS = ("keras", "native")


class Backend(Protocol):
    """What `StreamGenerator` needs of a stream step: `batch` independent streams
    over a `depth`-symbol vocabulary, each with its own state."""

    name: str
    batch: int
    depth: int

    def reset(self, rows=None) -> None:
        """Zero the state of every stream, or of those where the bool `rows` is True."""

    def probs(self, ids) -> np.ndarray:
        """Feed `ids[b]` to stream b; return `(batch, depth)` float64 probabilities."""

    def step_sample_into(self, ids, temperature: float, top_k, u, out) -> None:
        """Feed `ids[b]` to stream b and write its next id, sampled with the
        uniform `u[b]` (`charstream.sampling`), into `out[b]`."""

    def step_sample1(self, char_id: int, temperature: float, top_k, u: float,
                     top_p: float = 1.0, min_p: float = 0.0) -> int:
        """`step_sample_into` for one stream, with top-p and min-p: the sampled id."""

    def step_logprobs(self, char_id: int, temperature: float, top_k, u: float, top_p: float,
                      min_p: float, want: int) -> tuple[int, float, list]:
        """`step_sample1` that also returns the id's log-probability and the `want`
        most likely `(id, logprob)` of the distribution it was sampled from."""

    def score(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feed `ids[:-1]` to stream 0 from its current state: `(nll, hit)`, each
        `(len(ids) - 1,)`, `nll[j] = -log p(ids[j + 1] | ids[:j + 1])` and whether
        `ids[j + 1]` was the most likely id."""

    def score_windows(self, ids: np.ndarray, seq_len: int) -> np.ndarray:
        """`-log p(ids[k] | ids[k - seq_len : k])`, each window from a zero state,
        for `k >= seq_len`, without touching the streams' state."""


def _backend(kind: str, batch_size: int, *, run_dir: RunDir | None = None, record=None,
             model=None) -> Backend:
    """A backend of `kind` over a run directory's files, or over a Keras model."""
    _checks.one_of(kind, "backend", BACKENDS)
    if kind == "keras":
        from .keras_backend import KerasBackend

        return KerasBackend(model, batch_size)
    from .native import NativeBackend

    if run_dir is None:
        from ..model import stream_weights

        return NativeBackend(stream_weights(model), batch_size, source="the Keras model")
    return NativeBackend(run_dir.load_weights(record), batch_size, source=str(run_dir.stream_file))


class StreamGenerator:
    """Generate text one character at a time from a trained run.

    Args:
        backend: a `Backend` (`KerasBackend` or `NativeBackend`).
        vocab: the run's vocabulary.
        reduce: reduce text (lowercase, 36 characters) before encoding, as the run did.

    Use `StreamGenerator.load(run_dir)` for a run directory, or
    `StreamGenerator.from_model(train_model, vocab)` for a model in memory.

    (Longer than this project's other classes on purpose: it is the streaming API
    users call, and most of its lines are its methods' documentation; the loops
    are module functions below.)
    """

    def __init__(self, backend: Backend, vocab: Vocabulary, reduce: bool = True):
        if backend.depth != vocab.size:
            raise ValueError(f"the model reads {backend.depth} symbols but the vocabulary "
                             f"has {vocab.size}")
        self.backend = backend
        self.vocab = vocab
        self.reduce = reduce
        self.batch_size = backend.batch
        self._newline = vocab.chars.find("\n")
        self._cursor = _Cursor()
        self.reset()

    @classmethod
    def from_model(cls, train_model, vocab: Vocabulary, reduce: bool = True,
                   backend: str = "keras", batch_size: int = 1) -> "StreamGenerator":
        """A generator over a Keras training model held in memory."""
        _checks.positive_int(batch_size, "batch_size")
        return cls(_backend(backend, batch_size, model=train_model), vocab, reduce)

    @classmethod
    def load(cls, run_dir: str | os.PathLike, backend: str = "keras",
             batch_size: int = 1) -> "StreamGenerator":
        """Load a run directory.

        `backend="keras"` loads `model.keras` (Keras safe mode) and builds the
        stateful copy; `backend="native"` loads `stream.npz` and never imports
        TensorFlow. Both read and check `vocab.json` and `config.json`.

        Args:
            run_dir: a directory written by `python -m charstream.train`.
            backend: `"keras"` or `"native"`.
            batch_size: independent streams for `stream_batch`.

        Raises:
            FileNotFoundError, ValueError: for a missing, corrupt or mismatched
                file, an unknown backend or a batch size below 1.
        """
        _checks.positive_int(batch_size, "batch_size")
        _checks.one_of(backend, "backend", BACKENDS)
        run_dir = RunDir(run_dir)
        record = run_dir.read()
        model = run_dir.load_keras_model(record) if backend == "keras" else None
        stepper = _backend(backend, batch_size, run_dir=run_dir, record=record, model=model)
        return cls(stepper, record.vocab, record.settings.reduce)

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Return every stream to the zero state."""
        self.backend.reset()
        self._cursor = _Cursor()

    def state(self) -> State:
        """The stream's state now: what it has read, and the character it read
        last if not yet fed (`charstream.streaming.state`). Batch 1."""
        self._single("state")
        cursor = self._cursor
        return State.of(self.backend.get_row(0), cursor.pending, cursor.chars,
                        self.backend.fingerprint)

    def set_state(self, state: State) -> None:
        """Continue from `state`: `stream(state=...)` does this first.

        Raises:
            StateError (a ValueError): for another model's state (naming both
                fingerprints) or one of other sizes.
        """
        self._single("set_state")
        if not isinstance(state, State):
            raise StateError(f"expected a State, got {type(state).__name__}")
        state.check(self.backend.fingerprint)
        units = [len(h) for h, _ in self.backend.get_row(0)]
        if state.units != units:
            raise StateError(f"the state has units {state.units}; this model has {units}")
        self.backend.set_row(0, [tuple(np.array(a) for a in pair) for pair in state.layers])
        self._cursor = _Cursor(state.pending, state.chars)

    def encode(self, text: str) -> np.ndarray:
        """Ids of `text`, reduced first when the run was trained reduced.

        Raises:
            ValueError: naming a character the vocabulary cannot represent.
        """
        return self.vocab.encode(reduce_text(text) if self.reduce else text)

    def _single(self, what: str) -> None:
        if self.batch_size != 1:
            raise ValueError(f"{what} needs batch_size 1, this generator has "
                             f"{self.batch_size}; use stream_batch")

    def _probs1(self, char_id: int) -> np.ndarray:
        return self.backend.probs(np.array([char_id]))[0]

    def step(self, char: str) -> np.ndarray:
        """Feed one character; return the next-character distribution.

        Returns:
            `(vocab.size,)` float64 probabilities summing to 1.

        Raises:
            ValueError: if `char` is not one character of the vocabulary.
        """
        self._single("step")
        ids = self.encode(char)
        if len(ids) != 1:
            raise ValueError(f"step takes one character, got {char!r}")
        return self._read(ids)

    def feed(self, text: str) -> np.ndarray | None:
        """Advance the state over `text` without sampling.

        Returns:
            The distribution after the last character, or None for empty text.
        """
        self._single("feed")
        return self._read(self.encode(text))

    def _read(self, ids) -> np.ndarray | None:
        """Feed the pending id, if any, then `ids`: the distribution after them."""
        probs = None
        if self._cursor.pending >= 0 and len(ids):
            self._probs1(self._cursor.pending)
            self._cursor.pending = -1
        for char_id in ids:
            probs = self._probs1(int(char_id))
        self._cursor.chars += len(ids)
        return probs

    # ------------------------------------------------------------------ generation

    def _prime_ids(self, prime: str, draws: Iterator[float]) -> np.ndarray:
        return start_ids(self.encode(prime), self.vocab.size, self._newline, draws)

    def stream(self, prime: str = "", temperature: float = 1.0, seed: int | None = None,
               top_k: int | None = None, max_chars: int | None = None, top_p: float = 1.0,
               min_p: float = 0.0, stop=None, logprobs: int | None = None,
               state: State | None = None) -> Iterator[str]:
        """Yield generated characters one by one, lazily, without end unless `max_chars`.

        The state is reset and all but the last character of `prime` are fed now;
        then each `next()` runs exactly one model step: it feeds the prime's last
        character (first call) or the character sampled before, and samples the
        next one. The prime itself is not yielded.

        An empty prime is a newline (text starts at a line break, as the corpus's
        speeches do). A vocabulary without a newline gets, instead, one character
        drawn uniformly with the stream's first uniform.

        Args:
            prime: text to start from, reduced as the run's training text was.
            temperature: 0 for argmax, 1 for the model's distribution, above 1 for
                more surprise.
            seed: seed of `numpy.random.default_rng`; the same seed gives the same text.
            top_k: sample only among the k most likely characters.
            max_chars: stop after this many characters; None for unbounded.
            top_p: then only among the fewest most likely whose probabilities
                reach `top_p` (nucleus sampling; 1 keeps all).
            min_p: then drop those below `min_p` times the most likely (0 keeps all).
            stop: a string or up to 4: the stream ends before the first one it
                produces, which is never yielded (`charstream.streaming.stops`;
                characters that may begin one are yielded once they cannot).
            logprobs: None, or 0 to 5: yield `Piece`s carrying each character's
                log-probability under the distribution it was sampled from and
                that many of that distribution's most likely characters.
            state: continue from this `State` (`state()` of this model) instead
                of the zero state: the prime is read after what it read, and an
                empty prime continues from its last character. `state()`
                follows the stream as it goes (a stop string it produced
                included).

        Raises:
            ValueError: for a prime character the vocabulary cannot represent, a
                negative or non-finite temperature, `top_k < 1`, `max_chars < 0`,
                `top_p` outside (0, 1], `min_p` outside [0, 1], a bad `stop` or
                `logprobs`; StateError for another model's state.
        """
        self._single("stream")
        temperature, top_k, max_chars = self._check_sampling(temperature, top_k, max_chars)
        rule = (temperature, top_k, check_top_p(top_p), check_min_p(min_p))
        stops = Stops(check_stop(stop, 1 << 16))
        if logprobs is not None:
            _checks.non_negative_int(logprobs, "logprobs")
            if logprobs > MAX_LOGPROBS:
                raise ValueError(f"logprobs must be at most {MAX_LOGPROBS}, got {logprobs}")
        draws = Uniforms(seed)
        ids = self.encode(prime)
        if state is None:
            self.reset()
        else:
            self.set_state(state)
        cursor = self._cursor
        if cursor.pending >= 0:        # read the last character before the prime
            ids = np.concatenate([[cursor.pending], ids]).astype(np.uint8)
            cursor.chars -= 1
        else:
            ids = start_ids(ids, self.vocab.size, self._newline, draws)
        cursor.pending = -1
        for char_id in ids[:-1]:
            self._probs1(int(char_id))
        cursor.chars += len(ids)
        if logprobs is None:
            chars = _one_stream(self.backend.step_sample1, self.vocab.chars, int(ids[-1]),
                                rule, draws, max_chars, cursor)
        else:
            chars = _logprob_stream(self.backend.step_logprobs, self.vocab.chars, int(ids[-1]),
                                    rule, logprobs, draws, max_chars, cursor)
        return stop_stream(chars, stops) if stops else chars

    def _check_sampling(self, temperature, top_k, max_chars):
        return (check_temperature(temperature), check_top_k(top_k, self.vocab.size),
                check_max_chars(max_chars))

    def generate(self, length: int, **kwargs) -> str:
        """`''.join(self.stream(max_chars=length, **kwargs))`."""
        return "".join(self.stream(max_chars=length, **kwargs))

    def stream_batch(self, primes, seeds=None, temperature: float = 1.0,
                     top_k: int | None = None, max_chars: int | None = None):
        """Advance `batch_size` independent streams together.

        Stream k, with `primes[k]` and `seeds[k]`, yields exactly the text that
        `stream(primes[k], seed=seeds[k])` yields (the native backend bit for bit;
        the Keras backend up to the contract's float caveat). Primes of different
        lengths are aligned at their ends: a shorter prime's stream is reset just
        before its first character is fed.

        Args:
            primes: `batch_size` prime strings.
            seeds: `batch_size` seeds, or None for unseeded streams.
            temperature, top_k, max_chars: as `stream`, shared by all streams.

        Yields:
            Per step, a list of `batch_size` characters, stream k at index k.

        Raises:
            ValueError: as `stream`, or for a number of primes or seeds that is not
                `batch_size`.
        """
        primes = list(primes)
        b = self.batch_size
        if len(primes) != b:
            raise ValueError(f"expected {b} primes (the batch size), got {len(primes)}")
        seeds = [None] * b if seeds is None else list(seeds)
        if len(seeds) != b:
            raise ValueError(f"expected {b} seeds (the batch size), got {len(seeds)}")
        temperature, top_k, max_chars = self._check_sampling(temperature, top_k, max_chars)
        draws = [Uniforms(seed) for seed in seeds]
        prime_ids = [self._prime_ids(p, d) for p, d in zip(primes, draws)]
        longest = max(len(ids) for ids in prime_ids)
        starts = np.array([longest - len(ids) for ids in prime_ids])
        padded = np.zeros((b, longest), dtype=np.int32)
        for k, ids in enumerate(prime_ids):
            padded[k, starts[k]:] = ids
        self.reset()
        _feed_aligned(self.backend, padded[:, :-1], starts)
        return _batch_stream(self.backend.step_sample_into, np.array(list(self.vocab.chars)),
                             padded[:, -1], temperature, top_k, draws, max_chars)


# ----------------------------------------------------------------------------- the loops

class _Cursor:
    """Where a single stream is: the id its next step reads first (-1: none) and
    the characters it has read, that one included."""

    def __init__(self, pending: int = -1, chars: int = 0):
        self.pending, self.chars = pending, chars


def _one_stream(step, chars: str, char_id: int, rule, draws, max_chars,
                cursor: _Cursor) -> Iterator[str]:
    """Feed `char_id`, then each sampled id: one `step` per character, lazily."""
    temperature, top_k, top_p, min_p = rule
    produced = 0
    while max_chars is None or produced < max_chars:
        char_id = step(char_id, temperature, top_k, next(draws), top_p, min_p)
        produced += 1
        cursor.pending, cursor.chars = char_id, cursor.chars + 1
        yield chars[char_id]


def _logprob_stream(step, chars: str, char_id: int, rule, want: int, draws,
                    max_chars, cursor: _Cursor) -> Iterator[Piece]:
    """`_one_stream`, each character a `Piece` with its log-probabilities."""
    temperature, top_k, top_p, min_p = rule
    produced = 0
    while max_chars is None or produced < max_chars:
        char_id, logprob, top = step(char_id, temperature, top_k, next(draws), top_p, min_p,
                                     want)
        produced += 1
        cursor.pending, cursor.chars = char_id, cursor.chars + 1
        char = chars[char_id]
        alternatives = {chars[k]: v for k, v in top}
        alternatives.setdefault(char, logprob)
        yield Piece(char, [logprob], [alternatives])


def _feed_aligned(backend: Backend, padded: np.ndarray, starts: np.ndarray) -> None:
    """Feed `(batch, steps)` prime ids aligned at their ends: stream b is reset
    just before step `starts[b]`, its first character (and just after the last
    step when its prime is the one character still to come)."""
    steps = padded.shape[1]
    for t in range(steps):
        if t and (starts == t).any():
            backend.reset(starts == t)
        backend.probs(padded[:, t])
    if steps and (starts == steps).any():
        backend.reset(starts == steps)


def _batch_stream(step, chars: np.ndarray, ids, temperature, top_k, draws, max_chars,
                  block: int = 256):
    """Advance every stream one step per iteration; yield a list of characters."""
    # Two id buffers, fed and filled in turn: no allocation per step.
    ids, nxt = np.ascontiguousarray(ids, dtype=np.int32), np.empty(len(ids), np.int32)
    produced = 0
    while max_chars is None or produced < max_chars:
        if produced % block == 0:
            # (block, batch): row i holds each stream's uniform for step i.
            u = np.ascontiguousarray(np.stack([d.take(block) for d in draws], axis=1))
        step(ids, temperature, top_k, u[produced % block], nxt)
        ids, nxt = nxt, ids
        produced += 1
        yield chars[ids].tolist()
