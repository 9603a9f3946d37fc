"""The native stream backend and its weights file, `stream.npz`. No TensorFlow.

`python -m charstream.train` writes `stream.npz` beside `model.keras`: the
model's float32 weights, read with `layer.get_weights()`
(`charstream.model.stream_weights`), so the native backend can stream without
importing Keras.

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
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npz file ({err})") from None
    try:
        meta = json.loads(bytes(arrays.pop("meta")).decode("utf-8"))
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
    if not isinstance(layers, int) or layers < 1:
        raise ValueError(f"{path}: meta \"layers\" must be a positive integer, got {layers!r}")
    names = [f"lstm_{k}_{part}" for k in range(1, layers + 1)
             for part in ("kernel", "recurrent_kernel", "bias")] + ["dense_kernel", "dense_bias"]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ValueError(f"{path}: missing arrays {missing}")
    for name in names:
        if arrays[name].dtype != np.float32:
            raise ValueError(f"{path}: {name} must be float32, got {arrays[name].dtype}")
    lstms = [tuple(arrays[f"lstm_{k}_{p}"] for p in ("kernel", "recurrent_kernel", "bias"))
             for k in range(1, layers + 1)]
    return {"meta": meta, "lstms": lstms, "dense": (arrays["dense_kernel"], arrays["dense_bias"])}


class NativeBackend:
    """The stream step in C (`charstream._stream.NativeLSTM`): one call per
    character runs every layer, the softmax and the sampling without the GIL.

    Args:
        weights: as `load_stream_weights` returns, or `charstream.model.stream_weights`.
        batch: independent streams.
        source: where the weights came from, for error messages.
    """

    name = "native"

    def __init__(self, weights: dict, batch: int = 1, source: str = "weights"):
        from ._stream import NativeLSTM

        try:
            self.net = NativeLSTM(weights["lstms"], *weights["dense"], batch=batch)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
        self.batch = batch
        self.depth = self.net.depth

    def reset(self, rows=None) -> None:
        self.net.reset(rows)

    def probs(self, ids) -> np.ndarray:
        return self.net.probs(ids)

    def step_sample_into(self, ids, temperature: float, top_k, u, out) -> None:
        self.net.step_sample_into(ids, temperature, top_k or 0, u, out)

    def step_sample1(self, char_id: int, temperature: float, top_k, u: float) -> int:
        return self.net.step_sample1(char_id, temperature, top_k or 0, u)
