"""Streaming: the stateful inference copy behind a character-by-character iterator.

`StreamGenerator.load(run_dir)` rebuilds a trained model as a stateful LSTM that
reads one character per call (`batch_shape=(1, 1, depth)`), so each generated
character costs one step, whatever the length of the text so far, and the
context is unlimited (the state carries it), unlike the tutorial's loop that
re-predicts the last 16 characters with `model.predict` every time.

Sampling contract (so that runs are reproducible, and so that any other backend
can reproduce them): the generator owns `numpy.random.default_rng(seed)`; for
every sampled character it draws exactly one `rng.random()` (a float64 in
[0, 1)) and returns the first id whose cumulative probability exceeds it, with
the probabilities taken in vocabulary order after temperature and top-k.
Temperature 0 is argmax and draws nothing.
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


def load_run(run_dir: str | os.PathLike):
    """Read and cross-check a run directory.

    Returns:
        `(train_model, vocab, reduce)`: the Keras training model, its `Vocabulary`,
        and whether text is reduced before encoding.

    Raises:
        FileNotFoundError, ValueError: naming the file that is missing, corrupt, or
            disagrees with the others.
    """
    run_dir = Path(run_dir)
    try:
        settings = read_run_config(run_dir)["settings"]
    except ConfigError as err:
        raise ValueError(str(err)) from None
    vocab = Vocabulary.load(run_dir / "vocab.json")
    model = _load_keras_model(run_dir / "model.keras")
    shape = model.input_shape
    if not (isinstance(shape, tuple) and len(shape) == 3):
        raise ValueError(f"{run_dir / 'model.keras'}: expected a (batch, steps, depth) input, "
                         f"got {shape}")
    if shape[-1] != vocab.size or model.output_shape[-1] != vocab.size:
        raise ValueError(
            f"{run_dir}: model.keras reads and predicts {shape[-1]} symbols but vocab.json "
            f"has {vocab.size}")
    if settings.reduce and vocab != Vocabulary.default():
        raise ValueError(f"{run_dir}: config.json says reduce, but vocab.json is not ALPHABET")
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


def sample_id(probs: np.ndarray, temperature: float, top_k: int | None,
              rng: np.random.Generator) -> int:
    """Draw one id from `probs` under the module's sampling contract."""
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
    u = rng.random() * cdf[-1]
    return int(min(np.searchsorted(cdf, u, side="right"), p.size - 1))


class StreamGenerator:
    """Generate text one character at a time from a trained run.

    Args:
        train_model: the trained windowed model (any `units`, `layers`, `depth`).
        vocab: its vocabulary.
        reduce: reduce text (lowercase, 36 characters) before encoding, as the run did.

    Use `StreamGenerator.load(run_dir)` for a run directory.
    """

    def __init__(self, train_model, vocab: Vocabulary, reduce: bool = True):
        import tensorflow as tf

        from .model import build_inference_model

        self.vocab = vocab
        self.reduce = reduce
        self.model = build_inference_model(train_model)
        depth = vocab.size
        model = self.model

        # One compiled graph per step: the one-hot is built inside it, the stateful
        # LSTMs update their state variables, and only `depth` floats come back.
        @tf.function(input_signature=[tf.TensorSpec([], tf.int32)])
        def step_fn(char_id):
            x = tf.reshape(tf.one_hot(char_id, depth, dtype=tf.float32), (1, 1, depth))
            return model(x, training=False)[0]

        self._step_fn = step_fn
        self._newline = vocab.chars.find("\n")
        self.steps = 0  # model steps run so far (the laziness tests read it)
        self.reset()

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> "StreamGenerator":
        """Load `model.keras` (Keras safe mode), `vocab.json` and `config.json`.

        Raises:
            FileNotFoundError, ValueError: for a missing, corrupt or mismatched file.
        """
        model, vocab, reduce = load_run(run_dir)
        return cls(model, vocab, reduce)

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Return to the zero state."""
        from .model import reset_states

        reset_states(self.model)

    def encode(self, text: str) -> np.ndarray:
        """Ids of `text`, reduced first when the run was trained reduced.

        Raises:
            ValueError: naming a character the vocabulary cannot represent.
        """
        return self.vocab.encode(reduce_text(text) if self.reduce else text)

    def _step_id(self, char_id: int) -> np.ndarray:
        self.steps += 1
        probs = self._step_fn(np.int32(char_id)).numpy().astype(np.float64)
        return probs / probs.sum()

    def step(self, char: str) -> np.ndarray:
        """Feed one character; return the next-character distribution.

        Returns:
            `(vocab.size,)` float64 probabilities summing to 1.

        Raises:
            ValueError: if `char` is not one character of the vocabulary.
        """
        ids = self.encode(char)
        if len(ids) != 1:
            raise ValueError(f"step takes one character, got {char!r}")
        return self._step_id(int(ids[0]))

    def feed(self, text: str) -> np.ndarray | None:
        """Advance the state over `text` without sampling.

        Returns:
            The distribution after the last character, or None for empty text.
        """
        probs = None
        for char_id in self.encode(text):
            probs = self._step_id(int(char_id))
        return probs

    # ------------------------------------------------------------------ generation

    def stream(self, prime: str = "", temperature: float = 1.0, seed: int | None = None,
               top_k: int | None = None, max_chars: int | None = None) -> Iterator[str]:
        """Yield generated characters one by one, lazily, without end unless `max_chars`.

        The state is reset and all but the last character of `prime` are fed now;
        then each `next()` runs exactly one model step: it feeds the prime's last
        character (first call) or the character sampled before, and samples the
        next one. An empty prime is a newline (text starts at a line break); a
        vocabulary without a newline draws the first character uniformly instead.

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
        temperature = _check_temperature(temperature)
        top_k = _check_top_k(top_k, self.vocab.size)
        if max_chars is not None and (isinstance(max_chars, bool)
                                      or not isinstance(max_chars, int) or max_chars < 0):
            raise ValueError(f"max_chars must be a non-negative integer or None, got {max_chars!r}")
        ids = self.encode(prime)
        rng = np.random.default_rng(seed)
        self.reset()
        for char_id in ids[:-1]:
            self._step_id(int(char_id))
        if len(ids):
            first = int(ids[-1])
        elif self._newline >= 0:
            first = self._newline
        else:
            first = None
        return self._generate(first, temperature, top_k, rng, max_chars)

    def _generate(self, char_id, temperature, top_k, rng, max_chars) -> Iterator[str]:
        chars = self.vocab.chars
        produced = 0
        if char_id is None and (max_chars is None or max_chars > 0):
            char_id = int(rng.integers(self.vocab.size))
            produced = 1
            yield chars[char_id]
        while max_chars is None or produced < max_chars:
            char_id = sample_id(self._step_id(char_id), temperature, top_k, rng)
            produced += 1
            yield chars[char_id]

    def generate(self, length: int, **kwargs) -> str:
        """`''.join(self.stream(max_chars=length, **kwargs))`."""
        return "".join(self.stream(max_chars=length, **kwargs))


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
                    reprime_every: int | None = None) -> dict:
    """Held-out loss of the run two ways: windowed (as trained) and streamed.

    (a) `window_*`: the training model on every 16-character window of `text`,
        from a zero state, predicting the character after it.
    (b) `stream_*`: the stateful stream run continuously over `text`, each
        character scored given everything before it. With `reprime_every=K`, the
        state is reset every K characters and re-primed from the last `seq_len`.

    Both score the same characters (`text[seq_len:]`).

    Args:
        run_dir: a trained run.
        text: the text to score; defaults to the run's held-out tail.
        reprime_every: None for one unbroken stream.

    Returns:
        `{"characters", "window_nats", "window_bits", "stream_nats", "stream_bits"}`.
    """
    from .batches import WindowBatches

    model, vocab, reduce = load_run(run_dir)
    if text is None:
        text = held_out_text(run_dir)
    seq_len = model.input_shape[1]
    gen = StreamGenerator(model, vocab, reduce)
    ids = gen.encode(text)
    if len(ids) < seq_len + 1:
        raise ValueError(f"text has {len(ids)} characters; scoring needs more than {seq_len}")

    starts = np.arange(len(ids) - seq_len, dtype=np.int64)
    probs = model.predict(WindowBatches(ids, starts, 1024, seq_len, vocab.size), verbose=0)
    targets = ids[seq_len:]
    window = -np.log(np.maximum(probs[np.arange(len(targets)), targets], 1e-12)).mean()

    gen.reset()
    total = 0.0
    p = gen._step_id(int(ids[0]))
    for k in range(1, len(ids)):
        if k >= seq_len:
            total -= math.log(max(p[ids[k]], 1e-12))
        if reprime_every and k >= seq_len and k % reprime_every == 0:
            gen.reset()
            for j in range(k - seq_len + 1, k):
                gen._step_id(int(ids[j]))
        p = gen._step_id(int(ids[k]))
    stream = total / len(targets)
    return {"characters": int(len(targets)), "window_nats": float(window),
            "window_bits": float(window / math.log(2)), "stream_nats": float(stream),
            "stream_bits": float(stream / math.log(2)), "reprime_every": reprime_every}
