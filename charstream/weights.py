"""The `stream.npz` format: a model's weights for the native LSTM step. No TensorFlow.

`python -m charstream.train` writes `stream.npz` beside `model.keras`: the
model's float32 weights, read with `layer.get_weights()`
(`charstream.model.stream_weights`), so the native backend
(`charstream.streaming.native`) can stream without importing Keras.

Format (version 1), a NumPy `.npz` read with `allow_pickle=False`:

- `meta`: `uint8` bytes of a UTF-8 JSON object: `{"format": "charstream.stream",
  "version": 1, "layers": L, "units": [u_1, ...], "depth": d, "seq_len": s,
  "gates": "ifco", "activation": "tanh", "recurrent_activation": "sigmoid"}`.
- `lstm_K_kernel` `(in_K, 4 u_K)`, `lstm_K_recurrent_kernel` `(u_K, 4 u_K)`,
  `lstm_K_bias` `(4 u_K,)` for K = 1..L, Keras's LSTM weights in Keras's gate
  order (`in_1 = d`, `in_K = u_(K-1)`).
- `dense_kernel` `(u_L, d)`, `dense_bias` `(d,)`: the softmax layer.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from ._io import atomic_path

STREAM_FORMAT = "charstream.stream"
STREAM_VERSION = 1
# The cell the C step computes; a file that records another is refused.
CELL = {"gates": "ifco", "activation": "tanh", "recurrent_activation": "sigmoid"}
MAX_LAYERS = 64     # a bound on what a file may ask the loader to build


def export_stream_weights(weights: dict, path: str | os.PathLike, seq_len: int) -> None:
    """Write a model's weights as `stream.npz`, atomically.

    Args:
        weights: `{"lstms": [(kernel, recurrent, bias), ...], "dense": (W, b)}`, as
            `charstream.model.stream_weights` reads them out of a Keras model.
        path: the file to write.
        seq_len: the training window length (recorded for evaluation).
    """
    arrays = {}
    for k, (kernel, recurrent, bias) in enumerate(weights["lstms"], start=1):
        arrays[f"lstm_{k}_kernel"] = kernel
        arrays[f"lstm_{k}_recurrent_kernel"] = recurrent
        arrays[f"lstm_{k}_bias"] = bias
    arrays["dense_kernel"], arrays["dense_bias"] = weights["dense"]
    meta = {"format": STREAM_FORMAT, "version": STREAM_VERSION,
            "layers": len(weights["lstms"]),
            "units": [int(r.shape[0]) for _, r, _ in weights["lstms"]],
            "depth": int(weights["dense"][1].shape[0]),
            "seq_len": int(seq_len), **CELL}
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def load_stream_weights(path: str | os.PathLike) -> dict:
    """Read and check `stream.npz`.

    Returns:
        `{"meta": dict, "lstms": [(kernel, recurrent, bias), ...], "dense": (W, b)}`.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: naming the file, for anything that is not a valid version-1 file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such stream weights file")
    unreadable = (ValueError, OSError, zipfile.BadZipFile, EOFError)
    try:
        npz = np.load(path, allow_pickle=False)
    except unreadable as err:
        raise ValueError(f"{path}: not a readable .npz file ({err})") from None
    with npz:
        meta = _read_meta(path, npz)
        names = _entry_names(meta["layers"])
        missing = [n for n in names if n not in npz.files]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing}")
        try:  # only the entries the meta names: nothing else is decompressed
            arrays = {name: npz[name] for name in names}
        except unreadable as err:
            raise ValueError(f"{path}: not a readable .npz file ({err})") from None
    for name, array in arrays.items():   # the shapes are the C net's to check
        if array.dtype != np.float32:
            raise ValueError(f"{path}: {name} must be float32, got {array.dtype}")
    lstms = [tuple(arrays[f"lstm_{k}_{p}"] for p in ("kernel", "recurrent_kernel", "bias"))
             for k in range(1, meta["layers"] + 1)]
    return {"meta": meta, "lstms": lstms, "dense": (arrays["dense_kernel"], arrays["dense_bias"])}


def _entry_names(layers: int) -> list[str]:
    return [f"lstm_{k}_{part}" for k in range(1, layers + 1)
            for part in ("kernel", "recurrent_kernel", "bias")] + ["dense_kernel", "dense_bias"]


def _read_meta(path: Path, npz) -> dict:
    """The checked `meta` entry of an open `.npz`."""
    try:
        meta = json.loads(bytes(npz["meta"]).decode("utf-8"))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: no valid \"meta\" entry") from None
    if not isinstance(meta, dict) or meta.get("format") != STREAM_FORMAT:
        raise ValueError(f"{path}: not a charstream stream weights file")
    if meta.get("version") != STREAM_VERSION:
        raise ValueError(f"{path}: unsupported stream weights version {meta.get('version')!r} "
                         f"(expected {STREAM_VERSION})")
    for key, value in CELL.items():
        if meta.get(key) != value:
            raise ValueError(f"{path}: meta {key!r} is {meta.get(key)!r}, but the native step "
                             f"computes {key} {value!r} only")
    layers = meta.get("layers")
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= MAX_LAYERS:
        raise ValueError(f"{path}: meta \"layers\" must be an integer in [1, {MAX_LAYERS}], "
                         f"got {str(layers)[:40]}")
    return meta
