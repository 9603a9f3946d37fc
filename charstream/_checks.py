"""Argument checks, one wording for every module.

Each check returns the value (normalised where that is safe) or raises `error`
(ValueError unless the caller names its own subclass) with a message that names
the argument and quotes the bad value, Keras-style:
`units must be a positive integer, got 0`.
"""
from __future__ import annotations

import math


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(value, name: str, error=ValueError) -> int:
    if not _is_int(value) or value < 1:
        raise error(f"{name} must be a positive integer, got {value!r}")
    return value


def non_negative_int(value, name: str, error=ValueError) -> int:
    if not _is_int(value) or value < 0:
        raise error(f"{name} must be a non-negative integer, got {value!r}")
    return value


def optional_positive_int(value, name: str, what: str = "None", error=ValueError):
    """A positive integer, or None (spelled `what` in the message)."""
    if value is not None and (not _is_int(value) or value < 1):
        raise error(f"{name} must be a positive integer or {what}, got {value!r}")
    return value


def optional_non_negative_int(value, name: str, error=ValueError):
    if value is not None and (not _is_int(value) or value < 0):
        raise error(f"{name} must be a non-negative integer or None, got {value!r}")
    return value


def fraction(value, name: str, error=ValueError) -> float:
    """A number in [0, 1) (a dropout rate, a held-out share)."""
    if not _is_number(value) or not math.isfinite(value) or not 0 <= value < 1:
        raise error(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


def positive_number(value, name: str, error=ValueError) -> float:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise error(f"{name} must be a positive number, got {value!r}")
    return float(value)


def non_negative_number(value, name: str, error=ValueError) -> float:
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise error(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def boolean(value, name: str, error=ValueError) -> bool:
    if not isinstance(value, bool):
        raise error(f"{name} must be true or false, got {value!r}")
    return value


def one_of(value, name: str, choices, error=ValueError):
    if value not in choices:
        raise error(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value
