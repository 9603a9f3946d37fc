"""What the benchmark files and scripts share: the corpus and the rate column.

A module of its own, not `conftest.py`: pytest owns conftest, and scripts
(`memory.py`, `load.py`) run without pytest. The corpus is the product's own
(`charstream.data.corpus_path`: `$CHARSTREAM_DATA`, else tiny Shakespeare
downloaded and cached by Keras); `.ci/run` is what points `CHARSTREAM_DATA` at
the shared copy.
"""
from __future__ import annotations

from pathlib import Path

import charstream


def corpus_path() -> Path:
    return charstream.data.corpus_path()


def corpus_text() -> str:
    return charstream.load_corpus(corpus_path())


def record_rate(benchmark, amount: float, unit: str) -> None:
    """Store `amount / median seconds` in the JSON and the table (e.g. GB/s)."""
    benchmark.extra_info[unit] = round(amount / benchmark.stats.stats.median, 3)
