"""Held-out loss of a run, windowed (as trained) and streamed, on either backend.

`evaluate_stream(run, backend="keras")` scores `model.keras` through Keras;
`backend="native"` scores the exported `stream.npz` itself, in C, and never
imports TensorFlow. Both read the held-out tail through `charstream.run`, which
checks the corpus against the sha256 the run recorded.
"""
from __future__ import annotations

import math
import os

import numpy as np

from . import _checks
from .run import RunDir
from .stream import StreamGenerator

WINDOW_BATCH = 1024   # windows scored together (no gradients: big batches are cheap)


def held_out_text(run_dir: str | os.PathLike) -> str:
    """The run's held-out tail as text (reduced, if the run was): the characters
    training never saw."""
    run_dir = RunDir(run_dir)
    run = run_dir.read()
    return run.vocab.decode(run_dir.held_out_ids(run))


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
        backend: `"keras"` (model.keras) or `"native"` (stream.npz, no TensorFlow).

    Returns:
        `{"characters", "window_nats", "window_bits", "stream_nats", "stream_bits",
        "reprime_every"}`.

    Raises:
        RunError, FileNotFoundError, ValueError: for a bad run, a text with
            characters the run cannot encode or too short to score, or a bad
            `reprime_every`.
    """
    if reprime_every is not None:
        _checks.positive_int(reprime_every, "reprime_every")
    run_dir = RunDir(run_dir)
    seq_len = run_dir.read().settings.seq_len
    gen = StreamGenerator.load(run_dir, backend=backend)
    ids = run_dir.held_out_ids() if text is None else gen.encode(text)
    if len(ids) < seq_len + 1:
        raise ValueError(f"text has {len(ids)} characters; scoring needs more than {seq_len}")
    window = window_nll(gen, run_dir, ids, seq_len).mean()
    stream = stream_nll(gen, ids, seq_len, reprime_every).mean()
    return {"characters": int(len(ids) - seq_len), "window_nats": float(window),
            "window_bits": float(window / math.log(2)), "stream_nats": float(stream),
            "stream_bits": float(stream / math.log(2)), "reprime_every": reprime_every}


def window_nll(gen: StreamGenerator, run_dir: RunDir, ids: np.ndarray, seq_len: int) -> np.ndarray:
    """`-log p(ids[k] | ids[k - seq_len : k])` from a zero state, for `k >= seq_len`.

    The Keras backend runs a windowed copy of its model over batches of windows;
    the native backend feeds WINDOW_BATCH windows to as many C streams at once.
    """
    targets = ids[seq_len:]
    if gen.backend.name == "keras":
        from .batches import WindowBatches
        from .model import windowed_copy

        model = windowed_copy(gen.backend.model, seq_len)
        starts = range(len(targets))
        p = model.predict(WindowBatches(ids, starts, WINDOW_BATCH, seq_len, gen.vocab.size),
                          verbose=0)
        return -np.log(np.maximum(p[np.arange(len(targets)), targets], 1e-12))
    from ._stream import NativeLSTM
    from .native import load_stream_weights

    weights = load_stream_weights(run_dir.stream_file)
    net = NativeLSTM(weights["lstms"], *weights["dense"], batch=WINDOW_BATCH)
    out = np.empty(len(targets))
    rows = np.arange(WINDOW_BATCH)
    for lo in range(0, len(targets), WINDOW_BATCH):
        n = min(WINDOW_BATCH, len(targets) - lo)
        starts = lo + np.minimum(rows, n - 1)          # a short last batch repeats a window
        net.reset()
        for t in range(seq_len):
            p = net.probs(ids[starts + t])
        out[lo:lo + n] = -np.log(np.maximum(p[rows[:n], targets[lo:lo + n]], 1e-12))
    return out


def stream_nll(gen: StreamGenerator, ids: np.ndarray, seq_len: int,
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


def _score(gen: StreamGenerator, ids: np.ndarray) -> np.ndarray:
    """`nll[j] = -log p(ids[j + 1] | ids[:j + 1])` from the current (reset) state."""
    net = getattr(gen.backend, "net", None)
    if net is not None:
        gen.steps += max(len(ids) - 1, 0)
        return net.score(ids)[0]
    nll = np.empty(max(len(ids) - 1, 0))
    for k in range(len(ids) - 1):
        p = gen.backend.probs([int(ids[k])])[0]
        gen.steps += 1
        nll[k] = -math.log(max(p[ids[k + 1]], 1e-12))
    return nll
