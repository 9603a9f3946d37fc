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
# Bounds on what a file may ask the loader to build, checked before anything is.
MAX_LAYERS = 64
MAX_UNITS = 8192
MAX_DEPTH = 256            # ids are uint8
MAX_WEIGHTS = 2 ** 28      # 1 GiB of float32
MAX_META_BYTES = 1 << 16


def fingerprint(weights: dict) -> str:
    """What identifies a model's weights: the first 16 bytes of the SHA-256 of
    every array's shape and float32 bytes, in `stream.npz`'s order, as hex.
    The same for a `stream.npz` and the Keras model it was exported from."""
    import hashlib

    digest = hashlib.sha256()
    arrays = [a for layer in weights["lstms"] for a in layer] + list(weights["dense"])
    for array in arrays:
        array = np.ascontiguousarray(array, dtype="<f4")
        digest.update(repr(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:32]


class InvalidWeights(ValueError):
    """A `stream.npz` that is not a valid version-1 file; the message names it."""


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
    """Read and check `stream.npz`, allocating nothing a check has not bounded.

    The meta is read first and bounded (`MAX_LAYERS`, `MAX_UNITS`, `MAX_DEPTH`,
    `MAX_WEIGHTS`); then each entry it names, and only those, has its `.npy`
    header read and its dtype and shape held to the meta's before its data is.

    Returns:
        `{"meta": dict, "lstms": [(kernel, recurrent, bias), ...], "dense": (W, b)}`.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: naming the file, for anything that is not a valid version-1 file,
            and for weights that do not fit in memory.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such stream weights file")
    shapes: dict = {}
    try:
        with zipfile.ZipFile(path) as zf:
            meta = _read_meta(path, zf)
            shapes = _expected_shapes(meta)
            arrays = {name: _read_entry(path, zf, name, shape) for name, shape in shapes.items()}
    except InvalidWeights:
        raise
    except _UNREADABLE as err:
        raise InvalidWeights(f"{path}: not a readable .npz file ({_short(err)})") from None
    except MemoryError:
        raise InvalidWeights(f"{path}: not enough memory for its {_count(shapes):,} weights") from None
    lstms = [tuple(arrays[f"lstm_{k}_{p}"] for p in ("kernel", "recurrent_kernel", "bias"))
             for k in range(1, meta["layers"] + 1)]
    return {"meta": meta, "lstms": lstms, "dense": (arrays["dense_kernel"], arrays["dense_bias"])}


_UNREADABLE = (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError)


def _short(value, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _count(shapes: dict) -> int:
    return sum(int(np.prod(shape)) for shape in shapes.values())


def _expected_shapes(meta: dict) -> dict:
    """Entry name -> the shape the meta implies, in file order."""
    units, depth = meta["units"], meta["depth"]
    shapes, inp = {}, depth
    for k, u in enumerate(units, start=1):
        shapes[f"lstm_{k}_kernel"] = (inp, 4 * u)
        shapes[f"lstm_{k}_recurrent_kernel"] = (u, 4 * u)
        shapes[f"lstm_{k}_bias"] = (4 * u,)
        inp = u
    shapes["dense_kernel"], shapes["dense_bias"] = (inp, depth), (depth,)
    return shapes


def _read_entry(path: Path, zf: zipfile.ZipFile, name: str, shape: tuple) -> np.ndarray:
    """One float32 `.npy` entry of the meta's `shape`, its header checked first."""
    def check(got_shape, dtype):
        if dtype != np.float32:
            raise InvalidWeights(f"{path}: {name} must be float32, got {_short(dtype)}")
        if tuple(got_shape) != shape:
            raise InvalidWeights(f"{path}: {name} has shape {_short(got_shape)}, but the meta's "
                             f"depth and units make it {shape}")
    return _read_npy(path, zf, name, check)


def _read_npy(path: Path, zf: zipfile.ZipFile, name: str, check) -> np.ndarray:
    """Entry `name` of the archive; `check(shape, dtype)` raises before any data
    is read, so a header's declared size allocates nothing unchecked."""
    try:
        fh = zf.open(name + ".npy")
    except KeyError:
        raise InvalidWeights(f"{path}: missing array {name!r}") from None
    with fh:
        version = np.lib.format.read_magic(fh)
        if version not in ((1, 0), (2, 0)):
            raise InvalidWeights(f"{path}: {name} is .npy version {version}, expected 1.0 or 2.0")
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = header(fh, max_header_size=1024)
        check(shape, dtype)
        size = int(np.prod(shape)) * dtype.itemsize
        data = fh.read(size)
    if len(data) != size:
        raise InvalidWeights(f"{path}: {name} is cut short")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return np.ascontiguousarray(array, dtype=dtype.newbyteorder("="))


def _positive_int(path: Path, key: str, value, bound: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= bound:
        raise InvalidWeights(f"{path}: meta \"{key}\" must be an integer in [1, {bound}], "
                         f"got {_short(value, 40)}")
    return value


def _read_meta(path: Path, zf: zipfile.ZipFile) -> dict:
    """The checked `meta` entry of an open `.npz` archive."""
    def check(shape, dtype):
        if dtype != np.uint8 or len(shape) != 1:
            raise InvalidWeights(f"{path}: no valid \"meta\" entry (expected uint8 bytes)")
        if shape[0] > MAX_META_BYTES:
            raise InvalidWeights(f"{path}: its \"meta\" entry is {shape[0]:,} bytes, more than "
                                 f"the {MAX_META_BYTES:,} this loader accepts")
    if "meta.npy" not in zf.namelist():
        raise InvalidWeights(f"{path}: no valid \"meta\" entry")
    try:
        meta = json.loads(bytes(_read_npy(path, zf, "meta", check)).decode("utf-8"))
    except InvalidWeights:
        raise
    except (TypeError, ValueError):  # not UTF-8 or not JSON
        raise InvalidWeights(f"{path}: no valid \"meta\" entry") from None
    if not isinstance(meta, dict) or meta.get("format") != STREAM_FORMAT:
        raise InvalidWeights(f"{path}: not a charstream stream weights file")
    if meta.get("version") != STREAM_VERSION:
        raise InvalidWeights(f"{path}: unsupported stream weights version "
                         f"{_short(meta.get('version'), 40)!s} (expected {STREAM_VERSION})")
    for key, value in CELL.items():
        if meta.get(key) != value:
            raise InvalidWeights(f"{path}: meta {key!r} is {_short(meta.get(key), 40)!r}, but the "
                             f"native step computes {key} {value!r} only")
    layers = _positive_int(path, "layers", meta.get("layers"), MAX_LAYERS)
    units = meta.get("units")
    if not isinstance(units, list) or len(units) != layers:
        raise InvalidWeights(f"{path}: meta \"units\" must be a list of {layers} integers, "
                         f"got {_short(units, 40)}")
    for u in units:
        _positive_int(path, "units", u, MAX_UNITS)
    _positive_int(path, "depth", meta.get("depth"), MAX_DEPTH)
    total = _count(_expected_shapes(meta))
    if total > MAX_WEIGHTS:
        raise InvalidWeights(f"{path}: its meta declares {total:,} weights, more than the "
                         f"{MAX_WEIGHTS:,} this loader accepts")
    return meta
