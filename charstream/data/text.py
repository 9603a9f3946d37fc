"""Text: the alphabet, reduction and vocabularies.

No TensorFlow here: preprocessing must start fast. Reading a corpus file is
`charstream.data.corpus`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from .._io import atomic_write_text
from ._kernels import _text

# The tutorial's 36 characters in code-point order. Sorting fixes the tutorial's
# bug where `set()` gave a different index order on every run.
ALPHABET = "\n !',-.:;?abcdefghijklmnopqrstuvwxyz"

MAX_SYMBOLS = 256  # ids are uint8
VOCAB_FORMAT = "charstream.vocabulary"
VOCAB_VERSION = 1


def _ascii_tables() -> tuple[np.ndarray, np.ndarray]:
    # For every ASCII code: the reduced character (lowercased, or a space when it is
    # not in ALPHABET) and its id in ALPHABET. Non-ASCII code points map to a space.
    chars = np.empty(128, dtype=np.uint8)
    ids = np.empty(128, dtype=np.uint8)
    for code in range(128):
        ch = chr(code).lower()
        ch = ch if ch in ALPHABET else " "
        chars[code] = ord(ch)
        ids[code] = ALPHABET.index(ch)
    return chars, ids


_REDUCE_CHARS, _REDUCE_IDS = _ascii_tables()
_SPACE = ord(" ")
_SPACE_ID = ALPHABET.index(" ")


def _require_str(text, what: str = "text") -> None:
    if not isinstance(text, str):
        hint = " (decode it first, e.g. data.decode('utf-8'))" if isinstance(
            text, (bytes, bytearray, memoryview)) else ""
        raise TypeError(f"{what} must be a str, got {type(text).__name__}{hint}")


def _lowered(text: str) -> str:
    # ASCII text is lowercased by the kernel's table in the same pass. Anything
    # else goes through str.lower() first, which may change the length (U+0130
    # becomes two characters) or produce ASCII letters (U+212A KELVIN SIGN -> 'k').
    return text if text.isascii() else text.lower()


def reduce_text(text: str) -> str:
    """Lowercase `text` and replace every character outside `ALPHABET` by a space.

    Exactly `''.join(ch if ch in ALPHABET else ' ' for ch in text.lower())`, for any
    `str`, in one C pass over ASCII text.

    Args:
        text: any `str`.

    Returns:
        The reduced text; as long as `text.lower()`.

    Raises:
        TypeError: if `text` is not a `str` (bytes included).
    """
    _require_str(text)
    return _text.map_to_str(_lowered(text), _REDUCE_CHARS, _SPACE)


def encode_reduced(text: str) -> np.ndarray:
    """Reduce and encode `text` against `ALPHABET` in one pass.

    Equal to `Vocabulary.default().encode(reduce_text(text))`, without building the
    reduced string.

    Returns:
        `(len(text.lower()),)` `uint8` ids into `ALPHABET`.

    Raises:
        TypeError: if `text` is not a `str`.
    """
    _require_str(text)
    return _text.map_to_ids(_lowered(text), _REDUCE_IDS, _SPACE_ID)


def _describe(ch: str) -> str:
    return f"{ch!r} (U+{ord(ch):04X})"


class Vocabulary:
    """The mapping between symbol ids and characters.

    Args:
        chars: the symbols in id order: a `str` or an iterable of one-character
            strings; 1 to 256 of them, no duplicates.

    Raises:
        TypeError, ValueError: for symbols that are not one-character strings,
            duplicates, an empty vocabulary or more than 256 symbols.
    """

    def __init__(self, chars: str | Iterable[str]):
        symbols = list(chars)
        for k, ch in enumerate(symbols):
            if not isinstance(ch, str) or len(ch) != 1:
                raise TypeError(f"symbol {k} must be a one-character str, got {ch!r}")
        if not symbols:
            raise ValueError("a vocabulary needs at least one symbol, got none")
        if len(symbols) > MAX_SYMBOLS:
            raise ValueError(
                f"a vocabulary holds at most {MAX_SYMBOLS} symbols, got {len(symbols)}")
        seen: dict[str, int] = {}
        for k, ch in enumerate(symbols):
            if ch in seen:
                raise ValueError(
                    f"symbol {_describe(ch)} appears twice (ids {seen[ch]} and {k})")
            seen[ch] = k
        self._chars = "".join(symbols)
        # Lookup tables for the kernel: code points < 256 directly, the rest sorted.
        self._low = np.full(256, -1, dtype=np.int16)
        high = sorted((ord(ch), k) for k, ch in enumerate(symbols) if ord(ch) >= 256)
        for k, ch in enumerate(symbols):
            if ord(ch) < 256:
                self._low[ord(ch)] = k
        self._high_cp = np.array([cp for cp, _ in high], dtype=np.uint32)
        self._high_id = np.array([k for _, k in high], dtype=np.uint8)
        self._codes = np.array([ord(ch) for ch in symbols], dtype=np.uint32)

    @classmethod
    def default(cls) -> "Vocabulary":
        """The tutorial's 36-character `ALPHABET`."""
        return cls(ALPHABET)

    @classmethod
    def from_text(cls, text: str) -> "Vocabulary":
        """The sorted set of the characters of `text` (for raw, unreduced corpora)."""
        _require_str(text)
        return cls(sorted(set(text)))

    @property
    def chars(self) -> str:
        """The symbols in id order, as one `str`."""
        return self._chars

    @property
    def size(self) -> int:
        """The number of symbols (the one-hot depth)."""
        return len(self._chars)

    def __len__(self) -> int:
        return self.size

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and other._chars == self._chars

    def __hash__(self) -> int:
        return hash(self._chars)

    def __repr__(self) -> str:
        return f"Vocabulary({self._chars!r})"

    def encode(self, text: str) -> np.ndarray:
        """Encode `text` symbol by symbol.

        Returns:
            `(len(text),)` `uint8` ids.

        Raises:
            TypeError: if `text` is not a `str`.
            ValueError: naming the first character not in the vocabulary and its
                position.
        """
        _require_str(text)
        ids, bad = _text.lookup_ids(text, self._low, self._high_cp, self._high_id)
        if bad >= 0:
            raise ValueError(
                f"character {_describe(text[bad])} at position {bad} is not in the "
                f"vocabulary of {self.size} symbols")
        return ids

    def decode(self, ids) -> str:
        """Turn ids back into text.

        Args:
            ids: a 1-D integer array (or sequence) of ids `< size`.

        Raises:
            TypeError: for non-integer ids.
            ValueError: for ids that are not 1-D or out of range.
        """
        arr = np.asarray(ids)
        if arr.size == 0:
            return ""
        if arr.dtype.kind not in "iu":
            raise TypeError(f"ids must be integers, got dtype {arr.dtype}")
        if arr.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {arr.shape}")
        bad = np.flatnonzero((arr < 0) | (arr >= self.size))
        if bad.size:
            k = int(bad[0])
            raise ValueError(
                f"ids[{k}] = {int(arr[k])} is out of range for a vocabulary of "
                f"{self.size} symbols")
        # Gather code points, then let the codec build the string in C.
        return self._codes[arr].astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")

    def to_json(self) -> dict:
        return {"format": VOCAB_FORMAT, "version": VOCAB_VERSION, "chars": list(self._chars)}

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as JSON, atomically (temporary file, then rename)."""
        atomic_write_text(path, json.dumps(self.to_json(), ensure_ascii=True, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        """Read a vocabulary written by `save`, validating it.

        Raises:
            FileNotFoundError: if `path` does not exist.
            ValueError: naming the file, for anything that is not a valid vocabulary.
        """
        path = Path(path)
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such vocabulary file") from None
        except (UnicodeDecodeError, IsADirectoryError, PermissionError) as err:
            raise ValueError(f"{path}: cannot read the vocabulary: {err}") from None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON: {err}") from None
        if not isinstance(data, dict) or data.get("format") != VOCAB_FORMAT:
            raise ValueError(
                f"{path}: not a charstream vocabulary (expected a JSON object with "
                f"\"format\": \"{VOCAB_FORMAT}\")")
        if data.get("version") != VOCAB_VERSION:
            raise ValueError(
                f"{path}: unsupported vocabulary version {data.get('version')!r} "
                f"(expected {VOCAB_VERSION})")
        chars = data.get("chars")
        if not isinstance(chars, list):
            raise ValueError(f"{path}: \"chars\" must be a list of one-character strings")
        try:
            return cls(chars)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from None
