"""The sampling contract: how a seed becomes text, the same on every backend.

Stream k owns `numpy.random.default_rng(seed_k)` and consumes its doubles
(`rng.random()`, drawn in blocks, which NumPy guarantees equal to one at a time)
in order, one per sampled character. The character is the first id whose
cumulative probability exceeds `u * total`, the probabilities taken in
vocabulary order after temperature (`softmax(log p / T)`) and top-k (the k
largest, ties to the lower id), then top-p (the fewest most likely whose sum
reaches `top_p` of what top-k kept), then min-p (those below `min_p` times the
most likely dropped). Temperature 0 is argmax; its draw is made and
ignored. So is a temperature too small for its inverse to be a float32 (below
about 2.9e-39): the C sampler scales logits by `1 / T` in float32. The C sampler (`csrc/lstm_step.h`, `cs_sample`) implements the same
rule; `charstream._reference.sample_id` is the plain twin both are held to.

The Keras and native backends compute the probabilities in different float32
arithmetic (about 1e-7 apart), so their texts agree until a draw falls within
that distance of a cumulative boundary: for a 36-symbol model, expect agreement
for many thousands of characters.

No TensorFlow here.
"""
from __future__ import annotations

import numpy as np

from .. import _checks

MAX_LOGPROBS = 5    # the most likely characters reported per place (CS_TOP in C)


def check_temperature(temperature) -> float:
    """A finite temperature >= 0."""
    return _checks.non_negative_number(temperature, "temperature")


def check_top_p(top_p, error=ValueError) -> float:
    """A number in (0, 1]; 1 keeps every character."""
    return _checks.unit_interval(top_p, "top_p", True, error)


def check_min_p(min_p, error=ValueError) -> float:
    """A number in [0, 1]; 0 keeps every character."""
    return _checks.unit_interval(min_p, "min_p", False, error)


def check_top_k(top_k, size: int):
    """None, or a positive integer capped at the vocabulary `size`."""
    _checks.optional_positive_int(top_k, "top_k")
    return None if top_k is None else min(top_k, size)


def check_max_chars(max_chars):
    """None (no end), or a non-negative integer."""
    return _checks.optional_non_negative_int(max_chars, "max_chars")


def start_ids(ids: np.ndarray, size: int, newline: int, draws) -> np.ndarray:
    """The ids a stream starts from: the encoded prime's; for an empty prime a
    newline (text starts at a line break, as the corpus's speeches do), or, in a
    vocabulary without one (`newline < 0`), an id drawn with the stream's first
    uniform."""
    if len(ids):
        return ids
    if newline >= 0:
        return np.array([newline], dtype=np.uint8)
    return np.array([min(int(next(draws) * size), size - 1)], dtype=np.uint8)


def _argmax_temperature(temperature: float) -> bool:
    """0, or so small that `1 / temperature` overflows float32."""
    with np.errstate(over="ignore", divide="ignore"):
        return temperature == 0 or bool(np.isinf(np.float32(1.0 / temperature)))


def kept_weights(probs: np.ndarray, temperature: float, top_k: int | None,
                 top_p: float = 1.0, min_p: float = 0.0) -> np.ndarray | None:
    """The unnormalised weights a character is sampled from, or None for argmax:
    temperature, then top-k, top-p and min-p, each on what the one before left
    (the module's contract; `cs_sample` in C, `charstream._reference` plain)."""
    if _argmax_temperature(temperature):
        return None
    p = np.array(probs, dtype=np.float64)
    if temperature != 1:
        with np.errstate(divide="ignore"):
            logits = np.log(p) / temperature
        p = np.exp(logits - logits.max())
    if (top_k is None or top_k >= p.size) and top_p >= 1 and min_p <= 0:
        return p
    order = np.argsort(-p, kind="stable")        # most likely first, ties by id
    keep = p.size if top_k is None else min(top_k, p.size)
    p[order[keep:]] = 0.0
    if top_p < 1:
        reached = np.flatnonzero(np.cumsum(p[order[:keep]]) >= top_p * p.sum())
        keep = int(reached[0]) + 1 if len(reached) else keep
    if min_p > 0:
        below = np.flatnonzero(p[order[1:keep]] < min_p * p[order[0]])
        keep = int(below[0]) + 1 if len(below) else keep
    p[order[keep:]] = 0.0
    return p


def sample_id(probs: np.ndarray, temperature: float, top_k: int | None, u: float,
              top_p: float = 1.0, min_p: float = 0.0) -> int:
    """Pick one id from `probs` with the uniform `u`, under the module's contract."""
    p = kept_weights(probs, temperature, top_k, top_p, min_p)
    if p is None:
        return int(np.argmax(probs))
    cdf = np.cumsum(p)
    return int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), p.size - 1))


def logprobs_of(probs: np.ndarray, char_id: int, temperature: float, top_k: int | None,
                want: int, top_p: float = 1.0, min_p: float = 0.0):
    """`(logprob, top)`: `char_id`'s log-probability under the distribution it
    was sampled from, and that distribution's `want` most likely `(id,
    logprob)` pairs (ties to the lower id, zeros never); a point mass for argmax."""
    p = kept_weights(probs, temperature, top_k, top_p, min_p)
    if p is None:
        return 0.0, [(int(char_id), 0.0)][:want]
    total = p.sum()
    order = [int(k) for k in np.argsort(-p, kind="stable")[:want] if p[k] > 0]
    return float(np.log(p[char_id] / total)), [(k, float(np.log(p[k] / total))) for k in order]


class Piece(str):
    """Text with the log-probabilities of its characters, when they were asked for.

    A `str` (so code that reads text reads it unchanged) with, per character:
    `token_logprobs[i]`, its log-probability (None for a prompt's first
    character, which nothing predicts), and `top_logprobs[i]`, a dict of the most
    likely characters at that place and theirs, the character itself included.
    """

    token_logprobs: list
    top_logprobs: list

    def __new__(cls, text: str, token_logprobs: list, top_logprobs: list):
        piece = super().__new__(cls, text)
        piece.token_logprobs, piece.top_logprobs = token_logprobs, top_logprobs
        return piece


class Uniforms:
    """The doubles of `numpy.random.default_rng(seed)`, in order, drawn in blocks.

    Iterate for one at a time, or `take(n)` for the next n as an array; both
    continue the same sequence. `seed=None` draws fresh entropy from the OS.
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
