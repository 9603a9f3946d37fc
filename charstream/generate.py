"""`python -m charstream.generate RUN_DIR`: stream text from a trained run to stdout.

Each character is written and flushed as soon as it is sampled. Ctrl-C and a
closed pipe (`| head -c 100`) end the stream quietly. With `--backend native`
TensorFlow is never imported (`--evaluate` included), so the first character
comes in a fraction of a second.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import _cli

PROG = "python -m charstream.generate"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by charstream.train")
    parser.add_argument("--prime", default="", help="text to start from (default: a newline)")
    parser.add_argument("--length", type=int, default=1000,
                        help="characters to generate; 0 = until interrupted (default: 1000)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="0 = argmax, 1 = the model's distribution (default: 1.0)")
    parser.add_argument("--top-k", type=int, default=None,
                        help="sample among the k most likely characters only")
    parser.add_argument("--top-p", type=float, default=1.0,
                        help="then among the fewest most likely whose probabilities reach "
                        "P (nucleus sampling; default: 1, all)")
    parser.add_argument("--min-p", type=float, default=0.0,
                        help="then drop those below P times the most likely (default: 0)")
    parser.add_argument("--stop", action="append", default=None, metavar="TEXT",
                        help="end before the first TEXT produced (up to 4; '\\n' is a "
                        "newline)")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed; the same seed gives the same text")
    parser.add_argument("--save-state", metavar="FILE", default=None,
                        help="write the stream's state when it ends, to continue it later")
    parser.add_argument("--load-state", metavar="FILE", default=None,
                        help="continue the state a --save-state wrote (--prime is read after it)")
    parser.add_argument("--backend", choices=("keras", "native"), default="keras",
                        help="keras: the stateful Keras copy (default); native: the C step "
                             "over stream.npz, which never imports TensorFlow")
    parser.add_argument("--evaluate", action="store_true",
                        help="instead of generating, print the held-out loss of the run "
                             "windowed and streamed (JSON)")
    parser.add_argument("--reprime-every", type=int, default=None, metavar="K",
                        help="with --evaluate: reset and re-prime from the last "
                             "seq_len characters every K characters")
    _cli.add_verbose(parser)
    return parser


def _quiet_stdout() -> None:
    # After EPIPE, point stdout at /dev/null so the interpreter's final flush of
    # the dead pipe cannot print a traceback (the recipe in Python's signal docs).
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.length < 0:
        return _cli.fail(PROG, f"--length must be >= 0, got {args.length}")
    _cli.apply_verbose(args)
    if args.backend == "keras":
        _cli.start_tensorflow()
    from .streaming.generator import StreamGenerator

    try:
        if args.evaluate:
            from .streaming.evaluate import evaluate_stream

            result = evaluate_stream(args.run_dir, reprime_every=args.reprime_every,
                                     backend=args.backend)
            print(json.dumps(result, indent=2))
            return 0
        gen = StreamGenerator.load(args.run_dir, backend=args.backend)
        state = None if args.load_state is None else _read_state(args.load_state)
        stop = None if args.stop is None else [t.replace("\\n", "\n") for t in args.stop]
        chars = gen.stream(prime=args.prime, temperature=args.temperature, seed=args.seed,
                           top_k=args.top_k, max_chars=args.length or None,
                           top_p=args.top_p, min_p=args.min_p, stop=stop, state=state)
    except _cli.BAD_INPUT as err:
        return _cli.fail(PROG, err)
    out = sys.stdout
    try:
        out.write(args.prime)
        out.flush()
        for ch in chars:
            out.write(ch)
            out.flush()
        out.write("\n")
        out.flush()
    except KeyboardInterrupt:
        out.write("\n")
        out.flush()
        _save_state(gen, args.save_state)
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        _save_state(gen, args.save_state)
        return 0
    _save_state(gen, args.save_state)
    return 0


def _read_state(path: str):
    from .streaming.state import State

    try:
        with open(path, "rb") as fh:
            return State.from_bytes(fh.read(1 << 20))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _save_state(gen, path: str | None) -> None:
    """The stream's state, written to a temporary name and renamed."""
    if path is None:
        return
    from ._io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(gen.state().to_bytes())


if __name__ == "__main__":
    sys.exit(main())
