"""Streaming: a trained run as a character-by-character iterator.

`StreamGenerator.load(run_dir)` rebuilds the trained model as a stateful LSTM
that reads one character per call (`batch_shape=(batch, 1, depth)`), so each
generated character costs one step, whatever the length of the text so far, and
the context is unlimited (the state carries it), unlike the tutorial's loop that
re-predicts the last 16 characters with `model.predict` every time.

Two backends step the model: `"keras"` (the reference: a compiled `tf.function`
over the stateful Keras copy, sampling in NumPy) and `"native"` (C, see
`charstream.native`, no TensorFlow needed).

Sampling contract, the same for both backends, single or batched, so that a
seed always gives the same text: stream k owns `numpy.random.default_rng(seed_k)`
and consumes its doubles (`rng.random()`, drawn in blocks, which NumPy
guarantees equal to one at a time) in order, one per sampled character. The
character is the first id whose cumulative probability exceeds `u * total`, the
probabilities taken in vocabulary order after temperature (`softmax(log p / T)`)
and top-k (the k largest, ties to the lower id). Temperature 0 is argmax; its
draw is made and ignored. The two backends compute the probabilities in different
float32 arithmetic (about 1e-7 apart), so their texts agree until a draw falls
within that distance of a cumulative boundary: for a 36-symbol model, expect
agreement for many thousands of characters.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from .config import ConfigError, read_run_config
from .text import Vocabulary, reduce_text


def _load_keras_model(path: Path):
    import keras

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as err:  # Keras raises many types for a corrupt archive
        raise ValueError(f"{path}: cannot load the model ({type(err).__name__}: {err})") from None


def _read_run(run_dir: Path):
    """config.json and vocab.json, cross-checked; no TensorFlow."""
    try:
        settings = read_run_config(run_dir)["settings"]
    except ConfigError as err:
        raise ValueError(str(err)) from None
    vocab = Vocabulary.load(run_dir / "vocab.json")
    if settings.reduce and vocab != Vocabulary.default():
        raise ValueError(f"{run_dir}: config.json says reduce, but vocab.json is not ALPHABET")
    return settings, vocab


def _check_depth(run_dir: Path, name: str, depth, vocab: Vocabulary) -> None:
    if depth != vocab.size:
        raise ValueError(f"{run_dir}: {name} reads and predicts {depth} symbols but "
                         f"vocab.json has {vocab.size}")


def load_run(run_dir: str | os.PathLike):
    """Read and cross-check a run directory with its Keras model.

    Returns:
        `(train_model, vocab, reduce)`: the Keras training model, its `Vocabulary`,
        and whether text is reduced before encoding.

    Raises:
        FileNotFoundError, ValueError: naming the file that is missing, corrupt, or
            disagrees with the others.
    """
    run_dir = Path(run_dir)
    settings, vocab = _read_run(run_dir)
    model = _load_keras_model(run_dir / "model.keras")
    shape = model.input_shape
    if not (isinstance(shape, tuple) and len(shape) == 3):
        raise ValueError(f"{run_dir / 'model.keras'}: expected a (batch, steps, depth) input, "
                         f"got {shape}")
    _check_depth(run_dir, "model.keras", shape[-1], vocab)
    _check_depth(run_dir, "model.keras", model.output_shape[-1], vocab)
    return model, vocab, settings.reduce


def _check_temperature(temperature) -> float:
    if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
            or not math.isfinite(temperature) or temperature < 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    return float(temperature)


def _check_top_k(top_k, size: int):
    if top_k is None:
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    return min(top_k, size)


def sample_id(probs: np.ndarray, temperature: float, top_k: int | None, u: float) -> int:
    """Pick one id from `probs` with the uniform `u`, under the module's contract."""
    if temperature == 0:
        return int(np.argmax(probs))
    p = np.asarray(probs, dtype=np.float64)
    if temperature != 1:
        with np.errstate(divide="ignore"):
            logits = np.log(p) / temperature
        p = np.exp(logits - logits.max())
    if top_k is not None and top_k < p.size:
        # Keep the k most likely (ties broken by id, as a stable sort does).
        cut = np.argsort(-p, kind="stable")[top_k:]
        p = p.copy()
        p[cut] = 0.0
    cdf = np.cumsum(p)
    return int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), p.size - 1))


class Uniforms:
    """The doubles of `numpy.random.default_rng(seed)`, in order, drawn in blocks.

    Iterate for one at a time, or `take(n)` for the next n as an array; both
    continue the same sequence.
    """

    def __init__(self, seed, block: int = 1024):
        self._rng = np.random.default_rng(seed)
        self._block = block
        self._buf: list = []
        self._pos = 0

    def __iter__(self) -> "Uniforms":
        return self

    def __next__(self) -> float:
        if self._pos == len(self._buf):
            self._buf = self._rng.random(self._block).tolist()
            self._pos = 0
        self._pos += 1
        return self._buf[self._pos - 1]

    def take(self, n: int) -> np.ndarray:
        rest = self._buf[self._pos:self._pos + n]
        self._pos += len(rest)
        return np.concatenate([np.array(rest, dtype=np.float64), self._rng.random(n - len(rest))])


class KerasBackend:
    """The reference step: the stateful Keras copy behind one compiled graph.

    Args:
        train_model: the trained windowed model.
        batch: independent streams (`batch_shape=(batch, 1, depth)`).
    """

    name = "keras"

    def __init__(self, train_model, batch: int = 1):
        import tensorflow as tf

        from .model import build_inference_model, lstm_layers

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
        if rows is None:
            from .model import reset_states

            reset_states(self.model)
            return
        keep = self._tf.constant(~np.asarray(rows, dtype=bool), dtype=self._tf.float32)[:, None]
        for layer in self._lstms:
            for state in layer.states:
                state.assign(state * keep)

    def _run(self, ids) -> np.ndarray:
        if self._id_tensors is not None:
            tensor = self._id_tensors[int(np.asarray(ids).reshape(-1)[0])]
        else:
            tensor = self._tf.constant(np.asarray(ids, dtype=np.int32))
        probs = self._step_fn(tensor).numpy().astype(np.float64)
        return probs / probs.sum(axis=1, keepdims=True)

    def probs(self, ids) -> np.ndarray:
        return self._run(ids)

    def step_sample_into(self, ids, temperature: float, top_k, u, out) -> None:
        for b, (p, x) in enumerate(zip(self._run(ids), u)):
            out[b] = sample_id(p, temperature, top_k, x)

    def step_sample1(self, char_id: int, temperature: float, top_k, u: float) -> int:
        return sample_id(self._run([char_id])[0], temperature, top_k, u)


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


BACKENDS = ("keras", "native")


class StreamGenerator:
    """Generate text one character at a time from a trained run.

    Args:
        backend: a `KerasBackend` or `charstream.native.NativeBackend`.
        vocab: the run's vocabulary.
        reduce: reduce text (lowercase, 36 characters) before encoding, as the run did.

    Use `StreamGenerator.load(run_dir)` for a run directory, or
    `StreamGenerator.from_model(train_model, vocab)` for a model in memory.
    """

    def __init__(self, backend, vocab: Vocabulary, reduce: bool = True):
        if backend.depth != vocab.size:
            raise ValueError(f"the model reads {backend.depth} symbols but the vocabulary "
                             f"has {vocab.size}")
        self.backend = backend
        self.vocab = vocab
        self.reduce = reduce
        self.batch_size = backend.batch
        self._newline = vocab.chars.find("\n")
        self.steps = 0  # model steps run so far (the laziness tests read it)
        self.reset()

    @classmethod
    def from_model(cls, train_model, vocab: Vocabulary, reduce: bool = True,
                   backend: str = "keras", batch_size: int = 1) -> "StreamGenerator":
        """A generator over a Keras training model held in memory."""
        _check_batch_size(batch_size)
        if backend == "keras":
            engine = KerasBackend(train_model, batch_size)
        elif backend == "native":
            from .model import stream_weights
            from .native import NativeBackend

            engine = NativeBackend(stream_weights(train_model), batch_size,
                                   source="the Keras model")
        else:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        return cls(engine, vocab, reduce)

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
        run_dir = Path(run_dir)
        _check_batch_size(batch_size)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "keras":
            model, vocab, reduce = load_run(run_dir)
            return cls(KerasBackend(model, batch_size), vocab, reduce)
        from .native import STREAM_FILE, NativeBackend, load_stream_weights

        settings, vocab = _read_run(run_dir)
        weights = load_stream_weights(run_dir / STREAM_FILE)
        _check_depth(run_dir, STREAM_FILE, weights["meta"].get("depth"), vocab)
        engine = NativeBackend(weights, batch_size, source=str(run_dir / STREAM_FILE))
        _check_depth(run_dir, STREAM_FILE, engine.depth, vocab)
        return cls(engine, vocab, settings.reduce)

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Return every stream to the zero state."""
        self.backend.reset()

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
        self.steps += 1
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
        return self._probs1(int(ids[0]))

    def feed(self, text: str) -> np.ndarray | None:
        """Advance the state over `text` without sampling.

        Returns:
            The distribution after the last character, or None for empty text.
        """
        self._single("feed")
        probs = None
        for char_id in self.encode(text):
            probs = self._probs1(int(char_id))
        return probs

    # ------------------------------------------------------------------ generation

    def _prime_ids(self, prime: str, draws: Iterator[float]) -> np.ndarray:
        ids = self.encode(prime)
        if len(ids):
            return ids
        if self._newline >= 0:
            return np.array([self._newline], dtype=np.uint8)
        return np.array([min(int(next(draws) * self.vocab.size), self.vocab.size - 1)],
                        dtype=np.uint8)

    def stream(self, prime: str = "", temperature: float = 1.0, seed: int | None = None,
               top_k: int | None = None, max_chars: int | None = None) -> Iterator[str]:
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

        Raises:
            ValueError: for a prime character the vocabulary cannot represent, a
                negative or non-finite temperature, `top_k < 1`, `max_chars < 0`.
        """
        self._single("stream")
        temperature, top_k, max_chars = self._check_sampling(temperature, top_k, max_chars)
        draws = Uniforms(seed)
        ids = self._prime_ids(prime, draws)
        self.reset()
        for char_id in ids[:-1]:
            self._probs1(int(char_id))
        return self._generate(int(ids[-1]), temperature, top_k, draws, max_chars)

    def _check_sampling(self, temperature, top_k, max_chars):
        if max_chars is not None and (isinstance(max_chars, bool)
                                      or not isinstance(max_chars, int) or max_chars < 0):
            raise ValueError(f"max_chars must be a non-negative integer or None, got {max_chars!r}")
        return _check_temperature(temperature), _check_top_k(top_k, self.vocab.size), max_chars

    def _generate(self, char_id, temperature, top_k, draws, max_chars) -> Iterator[str]:
        chars = self.vocab.chars
        step = self.backend.step_sample1
        produced = 0
        while max_chars is None or produced < max_chars:
            char_id = step(char_id, temperature, top_k, next(draws))
            self.steps += 1
            produced += 1
            yield chars[char_id]

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
        for t in range(longest - 1):
            if t and (starts == t).any():
                self.backend.reset(starts == t)
            self.backend.probs(padded[:, t])
            self.steps += 1
        if longest > 1 and (starts == longest - 1).any():
            self.backend.reset(starts == longest - 1)
        return self._generate_batch(padded[:, -1], temperature, top_k, draws, max_chars)

    def _generate_batch(self, ids, temperature, top_k, draws, max_chars, block: int = 256):
        chars = np.array(list(self.vocab.chars))
        step = self.backend.step_sample_into
        # Two id buffers, fed and filled in turn: no allocation per step.
        ids, nxt = np.ascontiguousarray(ids, dtype=np.int32), np.empty(len(ids), np.int32)
        produced = 0
        while max_chars is None or produced < max_chars:
            if produced % block == 0:
                # (block, batch): row i holds each stream's uniform for step i.
                u = np.ascontiguousarray(np.stack([d.take(block) for d in draws], axis=1))
            step(ids, temperature, top_k, u[produced % block], nxt)
            ids, nxt = nxt, ids
            self.steps += 1
            produced += 1
            yield chars[ids].tolist()


# ---------------------------------------------------------------------- evaluation

def held_out_text(run_dir: str | os.PathLike) -> str:
    """The run's validation tail: the corpus characters training never saw."""
    from .text import load_corpus

    doc = read_run_config(run_dir)
    settings = doc["settings"]
    if not settings.val_fraction:
        raise ValueError(f"{run_dir}: trained with val_fraction 0, so nothing was held out")
    text = load_corpus(doc["corpus"]["path"])
    text = reduce_text(text) if settings.reduce else text
    return text[int(len(text) * (1 - settings.val_fraction)):]


def evaluate_stream(run_dir: str | os.PathLike, text: str | None = None,
                    reprime_every: int | None = None, backend: str = "keras") -> dict:
    """Held-out loss of the run two ways: windowed (as trained) and streamed.

    (a) `window_*`: the model on every `seq_len`-character window of `text`, from
        a zero state, predicting the character after it.
    (b) `stream_*`: the stateful stream run continuously over `text`, each
        character scored given everything before it. With `reprime_every=K`, the
        state is reset every K characters and re-primed from the last `seq_len`.

    Both score the same characters (`text[seq_len:]`); `seq_len` is the run's
    (the window of `--mode windows`, the chunk of `--mode stream`).

    Args:
        run_dir: a trained run.
        text: the text to score; defaults to the run's held-out tail.
        reprime_every: None for one unbroken stream.
        backend: the stream's backend, `"keras"` or `"native"`.

    Returns:
        `{"characters", "window_nats", "window_bits", "stream_nats", "stream_bits",
        "reprime_every"}`.
    """
    from .batches import WindowBatches
    from .model import windowed_copy

    model, vocab, reduce = load_run(run_dir)
    seq_len = read_run_config(run_dir)["settings"].seq_len
    if text is None:
        text = held_out_text(run_dir)
    if reprime_every is not None and (isinstance(reprime_every, bool)
                                      or not isinstance(reprime_every, int) or reprime_every < 1):
        raise ValueError(f"reprime_every must be a positive integer, got {reprime_every!r}")
    gen = StreamGenerator.from_model(model, vocab, reduce, backend=backend)
    ids = gen.encode(text)
    if len(ids) < seq_len + 1:
        raise ValueError(f"text has {len(ids)} characters; scoring needs more than {seq_len}")

    windowed = windowed_copy(model, seq_len)
    starts = range(len(ids) - seq_len)
    probs = windowed.predict(WindowBatches(ids, starts, 1024, seq_len, vocab.size), verbose=0)
    targets = ids[seq_len:]
    window = -np.log(np.maximum(probs[np.arange(len(targets)), targets], 1e-12)).mean()
    stream = stream_nll(gen, ids, seq_len, reprime_every).mean()
    return {"characters": int(len(targets)), "window_nats": float(window),
            "window_bits": float(window / math.log(2)), "stream_nats": float(stream),
            "stream_bits": float(stream / math.log(2)), "reprime_every": reprime_every}


def stream_nll(gen: "StreamGenerator", ids: np.ndarray, seq_len: int,
               reprime_every: int | None = None) -> np.ndarray:
    """`-log p(ids[k] | ids[:k])` for `k >= seq_len`, from one stream started at `ids[0]`.

    With `reprime_every=K` the state is reset at every multiple of K and re-fed the
    `seq_len - 1` characters before it. The native backend scores each unbroken
    run of characters in one C call (`NativeLSTM.score`); the Keras backend steps.

    Returns:
        float64 `(len(ids) - seq_len,)`.
    """
    n = len(ids)
    cuts = ([k for k in range(seq_len, n - 1) if k % reprime_every == 0]
            if reprime_every else [])
    pieces, begin = [], 0
    for end in cuts + [n - 1]:
        # Feed ids[begin:end] from a zero state and score ids[begin + seq_len : end + 1]:
        # the first piece from the text's start, the others re-primed with the
        # seq_len - 1 characters before the cut.
        gen.reset()
        pieces.append(_score(gen, ids[begin:end + 1])[seq_len - 1:])
        begin = end - seq_len + 1
    return np.concatenate(pieces)


def _score(gen: "StreamGenerator", ids: np.ndarray) -> np.ndarray:
    """`nll[j] = -log p(ids[j + 1] | ids[:j + 1])` from the current (reset) state."""
    net = getattr(gen.backend, "net", None)
    if net is not None:
        gen.steps += max(len(ids) - 1, 0)
        return net.score(ids)[0]
    nll = np.empty(max(len(ids) - 1, 0))
    for k in range(len(ids) - 1):
        p = gen._probs1(int(ids[k]))
        nll[k] = -math.log(max(p[ids[k + 1]], 1e-12))
    return nll
