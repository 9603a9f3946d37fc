"""`python -m charstream.train`: train the char-LSTM and write a run directory.

A thin command line over `charstream.training`: the flags (derived from
`TrainConfig` and `RunOptions`), the plan (`training.plan`: a new run, or the
run in --resume DIR, or in --out DIR with --auto-resume), the fit loop
(`training.fit`: build, fit, finish), then the summary, and a sample streamed
from the model in memory into `sample.txt`; `summary.json` is written once, at
the end. Ctrl-C or SIGTERM stops after the current step and says how to continue.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

from . import _cli
from .config import ConfigError, TrainConfig
from .run import RunDir
from .training.plan import Plan, RunOptions, plan

PROG = "python -m charstream.train"


def _on_stop_signal(signum, frame):
    """Inside `fit`, the first signal only sets the flag and `StopWhenAsked` stops
    after the current step: an exception raised at an arbitrary bytecode can land
    in Python code that TensorFlow called from C++ (a dataset's or an iterator's
    callback), which is no place to unwind. Outside `fit`, or on a second signal,
    it stops at once."""
    from .training.callbacks import StopFlag  # installed once TensorFlow has started

    if StopFlag.fitting and not StopFlag.requested:
        StopFlag.requested = True
        # os.write, not print: the handler may run inside a print to stderr.
        os.write(2, b"\nstopping after this step (signal again to stop at once)\n")
        return
    StopFlag.requested = True
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    """The CLI: a flag per `TrainConfig` field (the training settings, saved as
    config.json), then a flag per `RunOptions` field (what to do with the run)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Train a character-level LSTM and write a run directory.",
        argument_default=argparse.SUPPRESS)
    _cli.add_dataclass_flags(parser, TrainConfig)
    _cli.add_dataclass_flags(parser.add_argument_group("the run"), RunOptions)
    return parser


# ----------------------------------------------------------------------------- CLI

def _print_summary(summary: dict, run: RunDir) -> None:
    def fmt(key, spec=".4f"):
        value = summary.get(key)
        return "n/a" if value is None else format(value, spec)

    ended = {"max_time": ", stopped by --max-time", "patience": ", stopped early (--patience)"}
    unit = "targets" if summary.get("mode") == "stream" else "windows"
    print(f"\ndone: {summary['epochs']} epochs in {summary['seconds']:.0f} s "
          f"({fmt('samples_per_second', ',.0f')} {unit}/s){ended.get(summary['ended_by'], '')}")
    print(f"train loss {fmt('train_loss')}, accuracy {fmt('train_accuracy')}")
    if "val_loss" in summary:
        held = ("held-out characters, one continuous stream" if summary.get("mode") == "stream"
                else "held-out windows")
        print(f"validation loss {fmt('val_loss')} nats/char = {fmt('val_bits_per_char')} "
              f"bits/char, accuracy {fmt('val_accuracy')} ({summary['val_targets']:,} {held})")
    print(f"run directory: {run}")


# The sample written at the end: settings recorded in summary.json.
SAMPLE = {"prime": "\n", "temperature": 0.8, "seed": 0}


def _write_results(the_plan: Plan, trained) -> None:
    """Stream `--sample-length` characters from the model in memory to stdout and
    sample.txt, then write summary.json (once, the sample's settings in it)."""
    length, summary = the_plan.options.sample_length, trained.summary
    try:
        if length > 0:
            from .streaming.generator import StreamGenerator

            gen = StreamGenerator.from_model(trained.model, the_plan.corpus.vocab,
                                             the_plan.config.reduce)
            chars = []
            print("\nsample:\n", flush=True)
            for ch in gen.stream(**SAMPLE, max_chars=length):
                chars.append(ch)
                sys.stdout.write(ch)
                sys.stdout.flush()
            print()
            the_plan.run.write_sample("".join(chars))
            summary = {**summary, "sample": {**SAMPLE, "length": length}}
    finally:  # an interrupted sample still leaves the run's summary
        the_plan.run.write_summary(summary)


def _start(plan: Plan) -> None:
    """Create the run directory (the writer, for a new run) and say what happens."""
    task, writer = plan.task, plan.writer
    if not plan.resuming and writer:
        plan.run.create(plan.config, plan.corpus)
    elif writer:  # a killed process may have left a half-written temporary file
        plan.run.remove_temporaries()
    action = ("resuming" if plan.resuming else "writing") if writer else "training for"
    print(f"{f'{task}: ' if task else ''}{action} {plan.run} "
          f"(corpus {plan.corpus.path}, {len(plan.corpus.ids):,} characters, "
          f"{plan.corpus.vocab.size} symbols)", flush=True)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _cli.apply_verbose(args)
    try:
        the_plan = plan(args, PROG)
    except (*_cli.BAD_INPUT, RuntimeError) as err:
        return _cli.fail(PROG, err)
    _start(the_plan)
    _cli.start_tensorflow()
    from .training.callbacks import StopFlag  # Keras: only once TensorFlow started quietly
    from .training.distribute import Cluster
    from .training.fit import train

    StopFlag.requested = StopFlag.fitting = False
    # SIGINT only where it is not ignored (a background job's shell ignores it).
    previous = {sig: signal.signal(sig, _on_stop_signal) for sig in (signal.SIGINT, signal.SIGTERM)
                if sig == signal.SIGTERM or signal.getsignal(sig) is not signal.SIG_IGN}
    verbose = 1 if sys.stdout.isatty() else 2
    try:
        trained = train(the_plan, verbose)
    except KeyboardInterrupt:
        done, _ = the_plan.run.newest_checkpoint()
        workers = " on every worker" if the_plan.config.strategy == "multiworker" else ""
        print(f"\ninterrupted after {done} finished epochs; continue with: "
              f"{the_plan.restart}{workers}", file=sys.stderr)
        return 130
    except ConfigError as err:  # found once the strategy knows the replicas
        return _cli.fail(PROG, err)
    except RuntimeError as err:
        return _cli.fail(PROG, err, status=1)
    except Exception as err:
        message = Cluster.peer_failure(the_plan, err)
        if message is None:
            raise
        return _cli.fail(PROG, message, status=1)
    finally:
        StopFlag.fitting = False  # fit may have left by an exception
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _print_summary(trained.summary, the_plan.run)
    if trained.cluster.writer:
        _write_results(the_plan, trained)
    return 0


if __name__ == "__main__":
    sys.exit(main())
