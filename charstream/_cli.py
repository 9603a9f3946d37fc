"""What every command line of charstream does the same way.

- `fail`: a bad value becomes one line on stderr, `PROG: error: MESSAGE`, and
  exit status 2, never a traceback. `BAD_INPUT` is what counts as a bad value.
- `add_dataclass_flags`: the flags of a settings dataclass, from its fields.
- `--verbose`, and `start_tensorflow`: TensorFlow starts without its start-up
  noise unless the user asks to see everything.

Importing TensorFlow and finding its devices prints lines through C++ logging
that no Python setting reaches (`oneDNN custom operations are on`, `Could not
find cuda drivers`, `failed call to cuInit` on a machine without a GPU, ...). A
new user reads them as failures. `start_tensorflow()` runs that start with the
process's stderr (file descriptor 2) sent to a temporary file, then writes back
every captured line that is not one of those known messages, so a real error
still shows. `CHARSTREAM_VERBOSE=1` (or `--verbose`) shows everything.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import sys
import tempfile
import typing
from typing import Iterator

# Bad input: charstream's ConfigError and RunError are ValueErrors.
BAD_INPUT = (ValueError, FileNotFoundError)

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


def fail(prog: str, err, status: int = 2) -> int:
    """Print `prog: error: err` as one line on stderr; return `status`."""
    message = " ".join(str(err).split()) or type(err).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    return status


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _arg_type(parse):
    """An argparse `type` from a parser that raises ValueError with the message."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    convert.__name__ = parse.__name__
    return convert


def add_dataclass_flags(parser: argparse.ArgumentParser, cls) -> None:
    """A `--flag` per field of `cls`: help, default, `metavar`, `choices` and a
    `parse` function from the field's metadata; bools as `--x/--no-x`. The
    parser should use `argument_default=argparse.SUPPRESS`, so that the flags a
    user typed can be told from the defaults."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        base = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        help_text = f"{f.metadata['help']} (default: {f.metadata.get('default_text', f.default)})"
        if base is bool:
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction,
                                help=help_text)
        else:
            parse = f.metadata.get("parse")
            parser.add_argument(flag(f.name), type=_arg_type(parse) if parse else base,
                                help=help_text, metavar=f.metadata.get("metavar"),
                                choices=f.metadata.get("choices"))


def given_fields(args: argparse.Namespace, cls) -> dict:
    """The fields of `cls` the user gave on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if hasattr(args, f.name)}


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", default=False,
                        help="show TensorFlow's start-up messages too (or set "
                        "CHARSTREAM_VERBOSE=1)")


def apply_verbose(args: argparse.Namespace) -> None:
    if getattr(args, "verbose", False):
        os.environ["CHARSTREAM_VERBOSE"] = "1"


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
