"""Shared fixtures. Tests make their own small texts; only a few read the corpus."""
import os
from pathlib import Path

import pytest

SHARED_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """The shared tiny Shakespeare: $CHARSTREAM_DATA, else ../shared beside the checkout."""
    env = os.environ.get("CHARSTREAM_DATA")
    path = Path(env) if env else SHARED_CORPUS
    if not path.is_file():
        pytest.skip(f"tiny Shakespeare not found at {path}; set CHARSTREAM_DATA")
    return path


@pytest.fixture(scope="session")
def shakespeare(shakespeare_path) -> str:
    return shakespeare_path.read_text(encoding="utf-8")
