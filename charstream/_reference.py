"""Plain Python/NumPy twins of every kernel in csrc/.

Slow on purpose and obviously right: each Cython and C kernel must equal its
twin here exactly, and the benchmarks use them as the baseline. Written from the
definitions, not from the code they check: nothing of charstream is imported.
"""
from __future__ import annotations

import numpy as np

# The tutorial's 36 characters, in code-point order (charstream.text.ALPHABET).
ALPHABET = "\n !',-.:;?abcdefghijklmnopqrstuvwxyz"

# The smallest double that rounds to inf as a float32: the largest float32,
# (2 - 2**-23) * 2**127, plus half its last place (ties round to even, up here).
FLOAT32_OVERFLOW = 2.0 ** 128 - 2.0 ** 103


def reduce_text(text: str) -> str:
    """The definition of reduction, verbatim."""
    return "".join(ch if ch in ALPHABET else " " for ch in text.lower())


def encode(text: str, chars: str) -> np.ndarray:
    """Ids of `text` in `chars`; raises KeyError on an unknown character."""
    index = {ch: k for k, ch in enumerate(chars)}
    return np.array([index[ch] for ch in text], dtype=np.uint8)


def encode_reduced(text: str) -> np.ndarray:
    return encode(reduce_text(text), ALPHABET)


# str.translate leaves unmapped characters as they are, so its table must answer
# for any code point the lowercased text can hold: a dict that fills itself in.
class _Table(dict):
    def __init__(self, value):
        super().__init__()
        self._value = value

    def __missing__(self, code: int) -> int:
        self[code] = value = self._value(chr(code))
        return value


_REDUCE_TABLE = _Table(lambda ch: ord(ch) if ch in ALPHABET else ord(" "))
_ENCODE_TABLE = _Table(lambda ch: ALPHABET.index(ch if ch in ALPHABET else " "))


def reduce_text_translate(text: str) -> str:
    """The best plain-Python reduction: str.lower + str.translate."""
    return text.lower().translate(_REDUCE_TABLE)


def encode_reduced_translate(text: str) -> np.ndarray:
    """The best plain-Python encoding: translate straight to ids, then one buffer."""
    return np.frombuffer(
        text.lower().translate(_ENCODE_TABLE).encode("ascii"), dtype=np.uint8).copy()


def tutorial_reduce(text: str) -> str:
    """The tutorial's loop: one character at a time, a set lookup each."""
    allowed = set(ALPHABET)
    out = []
    for ch in text.lower():
        out.append(ch if ch in allowed else " ")
    return "".join(out)


def onehot_windows(ids, seq_len: int = 16, depth: int = 36, start: int = 0, stop=None):
    """The tutorial's create_catgorical_dataset, one window at a time."""
    ids = np.asarray(ids)
    stop = len(ids) - seq_len if stop is None else stop
    return onehot_batch(ids, np.arange(start, stop), seq_len, depth)


def onehot_batch(ids, starts, seq_len: int = 16, depth: int = 36):
    ids = np.asarray(ids)
    n = len(starts)
    X = np.zeros((n, seq_len, depth), dtype=bool)
    Y = np.zeros((n, depth), dtype=bool)
    for i, s in enumerate(starts):
        for t in range(seq_len):
            X[i, t, ids[s + t]] = True
        Y[i, ids[s + seq_len]] = True
    return X, Y


def onehot_streams(ids, starts, seq_len: int = 16, depth: int = 36):
    """Rows of a carried-state batch: one-hot inputs, the next id at every step."""
    ids = np.asarray(ids)
    n = len(starts)
    X = np.zeros((n, seq_len, depth), dtype=np.float32)
    Y = np.zeros((n, seq_len), dtype=np.int32)
    for i, s in enumerate(starts):
        for t in range(seq_len):
            X[i, t, ids[s + t]] = 1.0
            Y[i, t] = ids[s + t + 1]
    return X, Y


def onehot_windows_numpy(ids, seq_len: int = 16, depth: int = 36, stop=None):
    """The plain NumPy way: index an identity matrix with a sliding window view."""
    ids = np.asarray(ids)
    stop = len(ids) - seq_len if stop is None else stop
    eye = np.eye(depth, dtype=bool)
    X = eye[np.lib.stride_tricks.sliding_window_view(ids[:stop + seq_len - 1], seq_len)]
    return X, eye[ids[seq_len:stop + seq_len]]


def onehot_batch_numpy(ids, starts, seq_len: int = 16, depth: int = 36):
    """NumPy fancy indexing: gather the (batch, seq_len + 1) ids, then index eye."""
    eye = np.eye(depth, dtype=bool)
    window = np.asarray(ids)[np.asarray(starts)[:, None] + np.arange(seq_len + 1)]
    return eye[window[:, :seq_len]], eye[window[:, seq_len]]


# --------------------------------------------------------------------------- streaming

def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def lstm_step(lstms, dense, ids, state):
    """One step of stacked Keras LSTMs and the softmax Dense, in float64.

    Args:
        lstms: per layer `(kernel (in, 4u), recurrent (u, 4u), bias (4u,))`, gates
            in Keras's order i, f, g (the candidate), o.
        dense: `(W (u_last, depth), b (depth,))`.
        ids: `(batch,)` input ids (one-hot into layer 0).
        state: per layer `(h, c)`, each `(batch, u)`; None for zeros.

    Returns:
        `(probs (batch, depth), new_state)`.
    """
    ids = np.asarray(ids)
    depth = dense[1].shape[0]
    x = np.eye(depth)[ids]
    new_state = []
    for k, (kernel, recurrent, bias) in enumerate(lstms):
        u = recurrent.shape[0]
        h, c = state[k] if state is not None else (np.zeros((len(ids), u)),) * 2
        z = x @ kernel.astype(np.float64) + h @ recurrent.astype(np.float64) + bias
        i, f, g, o = (z[:, j * u:(j + 1) * u] for j in range(4))
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        new_state.append((h, c))
        x = h
    logits = x @ dense[0].astype(np.float64) + dense[1]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True), new_state


def kept_weights(probs, temperature: float, top_k=None, top_p: float = 1.0,
                 min_p: float = 0.0):
    """The weights a character is sampled from, unnormalised, or None for argmax.

    Temperature 0 is argmax, and so is a temperature whose inverse is no float32
    (the samplers scale logits by it in float32). Otherwise (probability / the
    largest) ** (1 / temperature); then, in this order, each on what the one
    before left: only the top_k largest kept (ties to the lower id; None or <= 0
    keeps all); only the fewest largest whose sum reaches top_p of the total
    kept (1 keeps all); those below min_p times the largest dropped (0 keeps all).
    """
    probs = [float(p) for p in probs]
    if temperature == 0 or 1.0 / temperature >= FLOAT32_OVERFLOW:
        return None
    top = max(probs)
    weights = [(p / top) ** (1.0 / temperature) for p in probs]
    ranked = sorted(range(len(weights)), key=lambda k: (-weights[k], k))
    keep = len(weights)
    if top_k is not None and 0 < top_k < len(weights):
        keep = top_k
    first = set(ranked[:keep])
    weights = [w if k in first else 0.0 for k, w in enumerate(weights)]
    if top_p < 1:
        total, acc = sum(weights), 0.0
        for r in range(keep):
            acc += weights[ranked[r]]
            if acc >= top_p * total:
                keep = r + 1
                break
    if min_p > 0:
        floor = min_p * weights[ranked[0]]
        keep = next((r for r in range(1, keep) if weights[ranked[r]] < floor), keep)
    kept = set(ranked[:keep])
    return [w if k in kept else 0.0 for k, w in enumerate(weights)]


def sample_id(probs, temperature: float, top_k, u: float, top_p: float = 1.0,
              min_p: float = 0.0) -> int:
    """The sampling contract, one id: the first argmax where `kept_weights` says
    argmax; otherwise the first id whose cumulative kept weight exceeds `u`
    times their total (the last id if rounding leaves none)."""
    weights = kept_weights(probs, temperature, top_k, top_p, min_p)
    if weights is None:
        probs = [float(p) for p in probs]
        return max(range(len(probs)), key=lambda k: (probs[k], -k))
    target, total = u * sum(weights), 0.0
    for k, w in enumerate(weights):
        total += w
        if total > target:
            return k
    return len(weights) - 1
