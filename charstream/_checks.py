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


def _finite(value) -> bool:
    """`math.isfinite`, also for integers too large for a float (a 400-digit
    integer is a number, but not one any setting can use)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def shown(value, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters: what a message quotes of a value
    that came from outside."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def positive_int(value, name: str, error=ValueError) -> int:
    if not _is_int(value) or value < 1:
        raise error(f"{name} must be a positive integer, got {shown(value)}")
    return value


def non_negative_int(value, name: str, error=ValueError) -> int:
    if not _is_int(value) or value < 0:
        raise error(f"{name} must be a non-negative integer, got {shown(value)}")
    return value


def optional_positive_int(value, name: str, what: str = "None", error=ValueError):
    """A positive integer, or None (spelled `what` in the message)."""
    if value is not None and (not _is_int(value) or value < 1):
        raise error(f"{name} must be a positive integer or {what}, got {shown(value)}")
    return value


def optional_non_negative_int(value, name: str, error=ValueError):
    if value is not None and (not _is_int(value) or value < 0):
        raise error(f"{name} must be a non-negative integer or None, got {shown(value)}")
    return value


def fraction(value, name: str, error=ValueError) -> float:
    """A number in [0, 1) (a dropout rate, a held-out share)."""
    if not _is_number(value) or not _finite(value) or not 0 <= value < 1:
        raise error(f"{name} must be in [0, 1), got {shown(value)}")
    return float(value)


def unit_interval(value, name: str, open_low: bool, error=ValueError) -> float:
    """A number in [0, 1], or in (0, 1] with `open_low` (top_p, min_p)."""
    low_ok = _is_number(value) and _finite(value) and (value > 0 if open_low else value >= 0)
    if not low_ok or value > 1:
        raise error(f"{name} must be in {'(' if open_low else '['}0, 1], got {shown(value)}")
    return float(value)


def positive_number(value, name: str, error=ValueError) -> float:
    if not _is_number(value) or not _finite(value) or value <= 0:
        raise error(f"{name} must be a positive number, got {shown(value)}")
    return float(value)


def non_negative_number(value, name: str, error=ValueError) -> float:
    if not _is_number(value) or not _finite(value) or value < 0:
        raise error(f"{name} must be a finite number >= 0, got {shown(value)}")
    return float(value)


def boolean(value, name: str, error=ValueError) -> bool:
    if not isinstance(value, bool):
        raise error(f"{name} must be true or false, got {shown(value)}")
    return value


def one_of(value, name: str, choices, error=ValueError):
    if value not in choices:
        raise error(f"{name} must be one of {tuple(choices)}, got {shown(value)}")
    return value
