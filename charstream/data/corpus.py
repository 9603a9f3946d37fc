"""The corpus: where it is, reading it once, and the train/held-out split.

`read_corpus` reads a file's bytes once, hashes those very bytes (the sha256 a
run records) and decodes them; `split_corpus` is the one definition of where
the held-out tail begins. No TensorFlow here: `corpus_path` imports
`keras.utils.get_file` only when it has to download tiny Shakespeare.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from .text import Vocabulary, encode_reduced

CORPUS_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/"
    "data/tinyshakespeare/input.txt"
)
CORPUS_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
CORPUS_FILENAME = "tinyshakespeare.txt"


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def corpus_path(path: str | os.PathLike | None = None) -> Path:
    """Where the corpus is: `path`, else `$CHARSTREAM_DATA`, else tiny Shakespeare.

    Tiny Shakespeare is fetched once with `keras.utils.get_file` (checked against
    `CORPUS_SHA256`) and cached in Keras's cache directory.

    Raises:
        RuntimeError: when the download is needed and fails (offline with no cache).
    """
    if path is not None:
        return Path(path)
    env = os.environ.get("CHARSTREAM_DATA")
    if env:
        return Path(env)
    try:
        from keras.utils import get_file

        fetched = get_file(
            CORPUS_FILENAME, origin=CORPUS_URL, file_hash=CORPUS_SHA256,
            hash_algorithm="sha256", cache_subdir="datasets")
    except Exception as err:  # get_file raises bare Exceptions for network errors
        raise RuntimeError(
            f"could not download tiny Shakespeare from {CORPUS_URL} ({err}); "
            "pass a corpus path (--data PATH) or set CHARSTREAM_DATA to a text file"
        ) from None
    return Path(fetched)


def _read_text(where: Path) -> tuple[str, bytes]:
    """`(text, raw bytes)` of a corpus file, each failure a message naming it."""
    try:
        data = where.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: no such corpus file") from None
    except IsADirectoryError:
        raise ValueError(f"{where}: is a directory, expected a text file") from None
    except PermissionError:
        raise ValueError(f"{where}: permission denied") from None
    if not data:
        raise ValueError(f"{where}: the corpus is empty")
    try:
        return data.decode("utf-8"), data
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{where}: not UTF-8 text: byte 0x{data[err.start]:02x} at offset "
            f"{err.start} ({err.reason})") from None


def load_corpus(path: str | os.PathLike | None = None) -> str:
    """Read a corpus as UTF-8 text.

    Args:
        path: a text file. Without it, `$CHARSTREAM_DATA`, else tiny Shakespeare
            (downloaded and cached on first use).

    Returns:
        The whole file as a `str` (line endings as they are in the file).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is a directory, is not UTF-8 (the message gives the
            byte offset) or is empty.
        RuntimeError: tiny Shakespeare is needed but cannot be downloaded.
    """
    return _read_text(corpus_path(path))[0]


@dataclasses.dataclass
class Corpus:
    """A corpus as training and evaluation use it."""

    path: Path
    sha256: str                # of the bytes `ids` were decoded from
    ids: np.ndarray            # (n,) uint8
    vocab: Vocabulary

    def describe(self) -> dict:
        return {"path": str(self.path.resolve()), "sha256": self.sha256,
                "characters": int(len(self.ids))}


def read_corpus(path: str | os.PathLike | None, reduce: bool = True) -> Corpus:
    """Read a corpus once: its bytes hashed, decoded, reduced (or not) and encoded.

    Args:
        path: as `corpus_path`.
        reduce: map to `ALPHABET` (lowercased); `False` keeps the raw characters
            (the vocabulary is their sorted set).

    Raises:
        FileNotFoundError, ValueError: naming the file, if it is missing,
            unreadable, not UTF-8, empty, or (unreduced) has more than 256 symbols.
    """
    where = corpus_path(path)
    text, data = _read_text(where)
    if reduce:
        vocab, ids = Vocabulary.default(), encode_reduced(text)
    else:
        try:
            vocab = Vocabulary.from_text(text)
        except ValueError as err:
            raise ValueError(f"{where}: --no-reduce: {err}") from None
        ids = vocab.encode(text)
    return Corpus(where, hashlib.sha256(data).hexdigest(), ids, vocab)


# ----------------------------------------------------------------------------- the split

def split_index(n_ids: int, val_fraction: float) -> int:
    """Where the held-out tail begins: training reads `ids[:split]`, evaluation
    `ids[split:]`. The one definition of the split."""
    return n_ids if val_fraction == 0 else int(n_ids * (1 - val_fraction))


@dataclasses.dataclass(frozen=True)
class Split:
    """A corpus cut in two at `index`: `train = ids[:index]`, `held_out = ids[index:]`
    (empty when nothing is held out). Views, no copies."""

    index: int
    train: np.ndarray
    held_out: np.ndarray
    val_fraction: float

    def window_starts(self, seq_len: int) -> tuple[range, range]:
        """`window_starts` of this split: `(train_starts, val_starts)`."""
        n_ids = len(self.train) + len(self.held_out)
        return window_starts(self.index, n_ids, seq_len, self.val_fraction)


def split_corpus(ids: np.ndarray, val_fraction: float) -> Split:
    """`ids` cut at `split_index(len(ids), val_fraction)`."""
    index = split_index(len(ids), val_fraction)
    return Split(index, ids[:index], ids[index:], val_fraction)


def split_starts(n_ids: int, seq_len: int, val_fraction: float) -> tuple[range, range]:
    """Window starts for training and validation of `n_ids` ids cut at
    `split_index(n_ids, val_fraction)`: `window_starts` of that split."""
    return window_starts(split_index(n_ids, val_fraction), n_ids, seq_len, val_fraction)


def window_starts(split: int, n_ids: int, seq_len: int,
                  val_fraction: float) -> tuple[range, range]:
    """Window starts for training and validation, from disjoint parts of the corpus.

    A training window and its target lie wholly in `ids[:split]`, a validation
    window in the contiguous tail `ids[split:]`, so no character is in both.

    Returns:
        `(train_starts, val_starts)` as `range`s (no memory per window);
        `val_starts` is empty when `val_fraction == 0`.

    Raises:
        ValueError: if either part is too short for one window.
    """
    n_train = split - seq_len
    n_val = (n_ids - split) - seq_len if val_fraction else 0
    if n_train < 1:
        raise ValueError(
            f"the training part has {split} characters, too few for one window of "
            f"seq_len {seq_len} plus its target (need at least {seq_len + 1})")
    if val_fraction and n_val < 1:
        raise ValueError(
            f"the validation part (val_fraction {val_fraction}) has {n_ids - split} "
            f"characters, too few for one window of seq_len {seq_len} plus its target; "
            "use a longer corpus, a larger --val-fraction, or --val-fraction 0")
    return range(n_train), range(split, split + max(n_val, 0))
