"""Held-out loss of a run, windowed (as trained) and streamed, on either backend.

`evaluate_stream(run, backend="keras")` scores `model.keras` through Keras;
`backend="native"` scores the exported `stream.npz` itself, in C, and never
imports TensorFlow. Either way the scoring is the backend's (`Backend.score`,
`Backend.score_windows`). Both read the held-out tail through `charstream.run`,
which checks the corpus against the sha256 the run recorded.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .. import _checks
from ..run import RunDir
from .generator import StreamGenerator


def held_out_text(run_dir: str | os.PathLike) -> str:
    """The run's held-out tail as text (reduced, if the run was): the characters
    training never saw."""
    run_dir = RunDir(run_dir)
    record = run_dir.read()
    return record.vocab.decode(run_dir.held_out_ids(record))


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
    record = run_dir.read()
    seq_len = record.settings.seq_len
    gen = StreamGenerator.load(run_dir, backend=backend)
    ids = run_dir.held_out_ids(record) if text is None else gen.encode(text)
    if len(ids) < seq_len + 1:
        raise ValueError(f"text has {len(ids)} characters; scoring needs more than {seq_len}")
    window = gen.backend.score_windows(ids, seq_len).mean()
    stream = stream_nll(gen, ids, seq_len, reprime_every).mean()
    return {"characters": int(len(ids) - seq_len), "window_nats": float(window),
            "window_bits": float(window / math.log(2)), "stream_nats": float(stream),
            "stream_bits": float(stream / math.log(2)), "reprime_every": reprime_every}


def stream_nll(gen: StreamGenerator, ids: np.ndarray, seq_len: int,
               reprime_every: int | None = None) -> np.ndarray:
    """`-log p(ids[k] | ids[:k])` for `k >= seq_len`, from one stream started at `ids[0]`.

    With `reprime_every=K` the state is reset at every multiple of K and re-fed the
    `seq_len - 1` characters before it. Each unbroken run of characters is one
    `Backend.score` call (one C call on the native backend).

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
        nll, _ = gen.backend.score(ids[begin:end + 1])
        pieces.append(nll[seq_len - 1:])
        begin = end - seq_len + 1
    return np.concatenate(pieces)
