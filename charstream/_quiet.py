"""Start TensorFlow without its start-up noise, hiding nothing else.

Importing TensorFlow and finding its devices prints lines through C++ logging
that no Python setting reaches (`oneDNN custom operations are on`, `Could not
find cuda drivers`, `failed call to cuInit` on a machine without a GPU, ...). A
new user reads them as failures. `start_tensorflow()` runs that start with the
process's stderr (file descriptor 2) sent to a temporary file, then writes back
every captured line that is not one of those known messages, so a real error
still shows. `CHARSTREAM_VERBOSE=1` (or a CLI's `--verbose`) shows everything.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Iterator

# Messages TensorFlow prints at start on a healthy CPU-only (or GPU) machine.
NOISE = re.compile(
    r"All log messages before absl::InitializeLog"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers"
    r"|failed call to cuInit"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|TF-TRT Warning"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions"
    r"|computation placer already registered")


def verbose() -> bool:
    """Whether the user asked to see everything (`CHARSTREAM_VERBOSE=1`)."""
    return os.environ.get("CHARSTREAM_VERBOSE", "0") not in ("", "0")


@contextlib.contextmanager
def filtered_stderr(enabled: bool = True) -> Iterator[None]:
    """Capture fd 2 for the block, then write back the lines `NOISE` does not match."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True):
                if not NOISE.search(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


def start_tensorflow() -> None:
    """Import TensorFlow and initialise its devices, quietly unless verbose."""
    quiet = not verbose()
    if quiet:  # TensorFlow's own INFO and WARNING lines (it reads this at import)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with filtered_stderr(quiet):
        import tensorflow as tf

        tf.config.list_physical_devices()
