"""Run the training group several times and print every run's medians side by side.

    python benchmarks/train_rounds.py                     # 5 runs of the default contenders
    python benchmarks/train_rounds.py --runs 3 -k "torch or plain"
    python benchmarks/train_rounds.py --intra-op-threads 1   # as python -m charstream.train trains

One run is `pytest benchmarks/bench_train.py --benchmark-only -k EXPR` in a fresh
process (so TensorFlow's and PyTorch's start, their thread pools and the memory
they map are each run's own), its results written with `--benchmark-json`. A
single run's medians move by up to ±25% on a 2-core machine; what holds across
runs is what the README may say. Printed: per contender, the median seconds of
256 steps in each run, and its speed relative to PyTorch's in the same run
(PyTorch's seconds over the contender's: above 1 is faster than PyTorch), then
the spread of those ratios (min, median, max). Every run's correctness checks
(each contender's loss against plain `fit`'s) are bench_train.py's own: a run
whose checks fail stops this script. `--intra-op-threads N` runs every process
with `TF_NUM_INTRAOP_THREADS=N` (every Keras contender then uses it; the command
line's stream mode uses 1, `--intra-op-threads` in docs/training.md).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TORCH = "torch-nn.LSTM"
DEFAULT_K = "torch or plain or chunks"


def one_run(expr: str, out: Path, threads: int | None = None) -> dict[str, float]:
    """Median seconds of each contender of one pytest run."""
    env = dict(os.environ)
    if threads is not None:
        env["TF_NUM_INTRAOP_THREADS"] = str(threads)
    done = subprocess.run([sys.executable, "-m", "pytest", str(HERE / "bench_train.py"),
                           "--benchmark-only", "-q", "-k", expr, f"--benchmark-json={out}"],
                          stdout=subprocess.PIPE, text=True, env=env)
    if done.returncode != 0:   # a failed check: show pytest's report, not a traceback of ours
        sys.exit(f"pytest failed (exit {done.returncode}):\n{done.stdout[-4000:]}")
    found = json.loads(out.read_text())["benchmarks"]
    return {b["extra_info"]["contender"]: b["stats"]["median"] for b in found}


def table(runs: list[dict[str, float]]) -> list[str]:
    names = list(runs[0])
    lines = ["| contender | " + " | ".join(f"run {k + 1}" for k in range(len(runs)))
             + " | vs PyTorch: min, median, max |",
             "|---|" + "---|" * len(runs) + "---|"]
    for name in names:
        cells = [f"{run[name]:.2f} s" for run in runs]
        ratios = sorted(run[TORCH] / run[name] for run in runs if TORCH in run)
        spread = (f"{ratios[0]:.2f}, {statistics.median(ratios):.2f}, {ratios[-1]:.2f}"
                  if ratios else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {spread} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="pytest runs (default 5)")
    parser.add_argument("-k", dest="expr", default=DEFAULT_K,
                        help=f"which contenders, as pytest's -k (default {DEFAULT_K!r})")
    parser.add_argument("--intra-op-threads", type=int, default=None, metavar="N",
                        help="TensorFlow's intra-op threads in every run (default: its own)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs: expected a positive integer, got {args.runs}")
    if args.intra_op_threads is not None and args.intra_op_threads < 0:
        parser.error(f"--intra-op-threads: expected a non-negative integer, "
                     f"got {args.intra_op_threads}")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.runs):
            runs.append(one_run(args.expr, Path(tmp) / f"run{k}.json", args.intra_op_threads))
            print(f"run {k + 1} of {args.runs}: "
                  + ", ".join(f"{n} {s:.2f} s" for n, s in runs[-1].items()),
                  file=sys.stderr, flush=True)
    print("\n".join(table(runs)))


if __name__ == "__main__":
    main()
