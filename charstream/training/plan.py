"""The plan of a training run: what `python -m charstream.train` was asked to do,
resolved and checked before anything is written.

`plan(args)` turns the parsed flags into a `Plan`: a new run (settings from the
defaults, a preset and the flags; a new run directory; the corpus read and
checked against the settings), or the run in `--resume DIR` (or in `--out DIR`
with `--auto-resume`): its own settings with the few flags a resume may change
laid over them, its corpus re-read and held to the recorded sha256 and
vocabulary, and its newest checkpoint. The plan carries what the later stages
need, worked out once: the run options, this process's task under
`--strategy multiworker` (the one reading of `TF_CONFIG`) and the split.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path
from typing import Optional

from .. import _cli
from ..config import PRESETS, ConfigError, TrainConfig, _setting
from ..data.corpus import Corpus, Split, split_corpus
from ..run import RunDir, RunError, read_corpus
from .distribute import Task, parse_tf_config
from .pipeline import check_fits

# Settings that --resume may change; the rest must match the run. --data may
# name the corpus at another path (another machine's mount) if its sha256 matches.
RESUMABLE = {"epochs", "patience", "strategy", "cpu_devices", "data", "max_time",
             "intra_op_threads"}


@dataclasses.dataclass
class RunOptions:
    """What one invocation does with its run directory, beside the settings: the
    flags of `python -m charstream.train` that are not `TrainConfig` fields,
    derived the same way. They are not settings of the model, so config.json does
    not hold them (summary.json records the sample's length and settings)."""

    out: Optional[str] = _setting(
        None, "run directory to create", metavar="DIR", default_text="runs/<timestamp>")
    resume: Optional[str] = _setting(
        None, "continue the run in DIR from its newest checkpoint (--epochs is the "
        "total to reach)", metavar="DIR", default_text="none")
    auto_resume: bool = _setting(
        False, "with --out DIR: continue the run already in DIR if there is one, else "
        "start it, so that the same command works after a crash or preemption (like "
        "Keras's BackupAndRestore)")
    preset: Optional[str] = _setting(
        None, "start from a named recipe (its settings, then the flags given); "
        "'tutorial' is the tutorial exactly", choices=sorted(PRESETS), default_text="none")
    sample_length: int = _setting(
        400, "characters streamed into sample.txt at the end", metavar="N")
    verbose: bool = _setting(
        False, "show TensorFlow's start-up messages too (or set CHARSTREAM_VERBOSE=1)")


def options_from_args(args: argparse.Namespace) -> RunOptions:
    return RunOptions(**_cli.given_fields(args, RunOptions))


def config_from_args(args: argparse.Namespace, validate: bool = True,
                     preset: str | None = None) -> tuple[TrainConfig, set]:
    """The config the flags ask for: defaults, then the preset (`preset`, else
    `args.preset`), then explicit flags.

    A resume validates later, once the flags are laid over the run's own settings.
    """
    given = _cli.given_fields(args, TrainConfig)
    config = TrainConfig()
    preset = preset or getattr(args, "preset", None)
    if preset:
        config = config.replace(**PRESETS[preset])
    config = config.replace(**given)
    return (config.validate() if validate else config), set(given)


@dataclasses.dataclass
class Plan:
    """What this process will do: train `config` on `corpus` into `run`, from
    `initial_epoch` (and `checkpoint`, when resuming)."""

    run: RunDir
    config: TrainConfig
    corpus: Corpus
    options: RunOptions = dataclasses.field(default_factory=RunOptions)
    task: Task | None = None    # this process's place under --strategy multiworker
    initial_epoch: int = 0
    checkpoint: Path | None = None
    history: list = dataclasses.field(default_factory=list)  # rows of the epochs done
    resuming: bool = False
    restart: str = ""           # the command that continues this run after a stop

    @functools.cached_property
    def split(self) -> Split:
        """The corpus cut into its training part and held-out tail (once)."""
        return split_corpus(self.corpus.ids, self.config.val_fraction)

    @property
    def writer(self) -> bool:
        """Whether this process writes the run directory (only the chief does)."""
        return self.task is None or self.task.is_chief


def plan(args: argparse.Namespace, prog: str = "python -m charstream.train") -> Plan:
    """Resolve the arguments into a `Plan`, checking everything a run needs
    before anything is written (`prog` names the command in the restart advice).

    Raises:
        ConfigError (RunError included): naming the setting, file or directory.
    """
    options = options_from_args(args)
    if options.auto_resume:
        if options.resume or not options.out:
            raise ConfigError("--auto-resume goes with --out DIR (not --resume)")
        if RunDir(options.out).config_file.exists():
            options.resume, options.out = options.out, None
    config, given = config_from_args(args, not options.resume, options.preset)
    if options.resume:
        if options.out:
            raise ConfigError("--out and --resume are exclusive: --resume writes into its DIR")
        result = _resume_plan(options, given, config)
    else:
        result = _new_plan(options, config)
    result.options = options
    result.restart = _restart_command(options, result, prog)
    return result


def _task(config: TrainConfig) -> Task | None:
    """This process's task, read from `TF_CONFIG`, under `--strategy multiworker`."""
    return parse_tf_config() if config.strategy == "multiworker" else None


def _new_plan(options: RunOptions, config: TrainConfig) -> Plan:
    task = _task(config)
    if task is not None and not options.out:
        raise ConfigError(
            "--strategy multiworker needs --out DIR: the same directory for every "
            "worker, on a filesystem they all share (only the chief writes it)")
    # Under multiworker the chief creates the run directory; the others must not
    # race it to the check.
    run = RunDir.new(options.out) if task is None or task.is_chief else RunDir(options.out)
    corpus = read_corpus(config)
    result = Plan(run, config, corpus, task=task)
    check_fits(config, result.split)
    return result


def _resume_plan(options: RunOptions, given: set, config: TrainConfig) -> Plan:
    run = RunDir(options.resume)
    record = run.read(against_alphabet=False)  # read_corpus checks it against the corpus
    saved = record.settings
    changed = sorted(name for name in given - RESUMABLE
                     if getattr(config, name) != getattr(saved, name))
    if changed or options.preset:
        what = ", ".join(_cli.flag(n) for n in changed) or "--preset"
        raise RunError(
            f"{run}: {what} cannot change on --resume (the run was trained with "
            "other settings); only --epochs, --max-time, --patience, --strategy, "
            "--cpu-devices and --data (the same corpus at another path) may")
    config = saved.replace(**{n: getattr(config, n) for n in given & RESUMABLE}).validate()
    # An explicit --data, else the corpus the run recorded, never whatever
    # $CHARSTREAM_DATA says today; either way its sha256 must be the run's.
    corpus = run.read_corpus(record, config.data if "data" in given else None)
    config = config.replace(data=str(corpus.path))
    done, checkpoint = run.newest_checkpoint()
    if done >= config.epochs:
        raise RunError(
            f"{run}: already trained for {done} epochs; pass --epochs N with N > {done} "
            "to train further")
    kept = [row for row in run.read_history() if row["epoch"] < done]
    spent = max((row.get("seconds", 0.0) for row in kept), default=0.0)
    if config.max_time is not None and spent >= config.max_time:
        raise RunError(
            f"{run}: already trained for {spent:.0f} s, the whole --max-time "
            f"{config.max_time:.0f} s; pass a larger --max-time (it counts the run's "
            "whole training time) to train further")
    return Plan(run, config, corpus, task=_task(config), initial_epoch=done,
                checkpoint=checkpoint, history=kept, resuming=True)


def _restart_command(options: RunOptions, plan: Plan, prog: str) -> str:
    if options.auto_resume:
        return "the same command (it has --auto-resume)"
    command = f"{prog} --resume {plan.run}"
    return f"{command} --strategy multiworker" if plan.config.strategy == "multiworker" else command
