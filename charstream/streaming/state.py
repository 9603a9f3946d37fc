"""A stream's whole memory as a value: `State`, the LSTM's `(h, c)` per layer
and the character still to be read, about 1 KB for the default model however
long the stream has run.

The contract (`StreamGenerator.state`, the serving engine and its sessions):
a state is what a stream has after reading some text `t`; continuing it with a
prompt `p` gives, bit for bit on the native backend, what a fresh stream with
the prime `t + p` gives (the last character sampled is `pending`: read, by the
next step, before the prompt). A state knows its model by the fingerprint of
its weights (`charstream.weights.fingerprint`) and is refused by another.

`to_bytes` / `from_bytes` are a small fixed format, no pickle: the magic
`b"CSSTATE1"`, a little-endian uint32 header length, a UTF-8 JSON header
`{"fingerprint", "chars", "pending", "units"}`, then per layer `h` and `c`
as little-endian float32. `from_bytes` checks every part before allocating.
"""
from __future__ import annotations

import dataclasses
import json
import struct

import numpy as np

from ..weights import MAX_LAYERS, MAX_UNITS

MAGIC = b"CSSTATE1"
_MAX_HEADER = 4096


class StateError(ValueError):
    """Bytes that are not a state, or a state of another model."""


@dataclasses.dataclass(frozen=True, eq=False)
class State:
    """A stream's state (see the module docstring).

    Attributes:
        layers: per LSTM layer, `(h, c)`, each a read-only `(units,)` float32 array.
        pending: the id read by the next step (the last one sampled), or -1.
        chars: characters read so far, `pending` included.
        fingerprint: the model's (`charstream.weights.fingerprint`).
    """

    layers: tuple
    pending: int
    chars: int
    fingerprint: str

    @classmethod
    def of(cls, layers, pending: int, chars: int, fingerprint: str) -> "State":
        """A state from a backend's row (`[(h, c), ...]`), copied and frozen."""
        frozen = []
        for h, c in layers:
            h, c = (np.array(a, dtype=np.float32).reshape(-1) for a in (h, c))
            h.flags.writeable = c.flags.writeable = False
            frozen.append((h, c))
        return cls(tuple(frozen), int(pending), int(chars), fingerprint)

    @property
    def units(self) -> list[int]:
        return [len(h) for h, _ in self.layers]

    def __eq__(self, other) -> bool:
        return (isinstance(other, State) and self.pending == other.pending
                and self.chars == other.chars and self.fingerprint == other.fingerprint
                and self.units == other.units
                and all(np.array_equal(a, b) for x, y in zip(self.layers, other.layers)
                        for a, b in zip(x, y)))

    def check(self, fingerprint: str, where: str = "this model") -> "State":
        """Self, if made by the model with `fingerprint`.

        Raises:
            StateError: naming both fingerprints.
        """
        if self.fingerprint != fingerprint:
            raise StateError(f"the state was made by the model {self.fingerprint}, not by "
                             f"{where} ({fingerprint})")
        return self

    def to_bytes(self) -> bytes:
        header = json.dumps({"fingerprint": self.fingerprint, "chars": self.chars,
                             "pending": self.pending, "units": self.units}).encode()
        body = b"".join(a.astype("<f4").tobytes() for pair in self.layers for a in pair)
        return MAGIC + struct.pack("<I", len(header)) + header + body

    @classmethod
    def from_bytes(cls, data: bytes) -> "State":
        """Parse and check `to_bytes`'s format.

        Raises:
            StateError: saying what is wrong.
        """
        data = bytes(data)
        if data[:len(MAGIC)] != MAGIC or len(data) < len(MAGIC) + 4:
            raise StateError("not a charstream state (bad magic)")
        (size,) = struct.unpack_from("<I", data, len(MAGIC))
        start = len(MAGIC) + 4
        if size > _MAX_HEADER or start + size > len(data):
            raise StateError(f"a state header of {size} bytes is not possible here")
        try:
            head = json.loads(data[start:start + size].decode())
        except (UnicodeDecodeError, ValueError):
            raise StateError("the state's header is not JSON") from None
        units = head.get("units") if isinstance(head, dict) else None
        if (not isinstance(units, list) or not 1 <= len(units) <= MAX_LAYERS
                or not all(type(u) is int and 1 <= u <= MAX_UNITS for u in units)):
            raise StateError(f"the state's units must be 1 to {MAX_LAYERS} integers in "
                             f"[1, {MAX_UNITS}], got {str(units)[:80]}")
        fields = (head.get("fingerprint"), head.get("chars"), head.get("pending"))
        if not (isinstance(fields[0], str) and type(fields[1]) is int and fields[1] >= 0
                and type(fields[2]) is int and fields[2] >= -1):
            raise StateError("the state's header needs a fingerprint, chars >= 0 and "
                             "pending >= -1")
        body = np.frombuffer(data, dtype="<f4", offset=start + size)
        if body.size != 2 * sum(units):
            raise StateError(f"the state holds {body.size} floats; its units need "
                             f"{2 * sum(units)}")
        if not np.isfinite(body).all():
            raise StateError("the state holds non-finite values")
        layers, at = [], 0
        for u in units:
            layers.append((body[at:at + u], body[at + u:at + 2 * u]))
            at += 2 * u
        return cls.of(layers, fields[2], fields[1], fields[0])
