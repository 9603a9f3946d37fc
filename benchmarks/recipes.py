"""Train the README's recipes and print its recipe table, one row per recipe.

    python benchmarks/recipes.py                        # every recipe (about an hour here)
    python benchmarks/recipes.py --only default tutorial
    python benchmarks/recipes.py --only default --repeat 5   # five runs, then their spread
    python benchmarks/recipes.py --list

Each recipe is `python -m charstream.train` with the flags below, in a fresh run
directory under --out (default: a temporary folder), on $CHARSTREAM_DATA (tiny
Shakespeare). The training time is the run's own (`summary.json`: the time in
`fit`, validation and checkpoints included; start-up, the final save and the
sample excluded). The held-out losses are `python -m charstream.generate RUN
--evaluate --backend native`: every 16-character window of the held-out tail from
a zero state ("windowed"), and the tail as one continuous stream ("stream"), in
nats and bits per character. Each row is printed as soon as its recipe ends.
Times on this project's 2-core machine (one run): tutorial about 8 min, windows
about 16 min, stream and default about 6.5 min each, large about 28 min: about an
hour and a quarter in all.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# name -> (what it is, the flags). `default` is `python -m charstream.train` as is.
RECIPES = {
    "tutorial": ("the tutorial exactly", ["--preset", "tutorial"]),
    "windows": ("the previous default: every window, shuffled",
                ["--mode", "windows", "--batch-size", "128", "--epochs", "8", "--dropout", "0",
                 "--learning-rate", "2e-3", "--lr-final", "0.1"]),
    "stream": ("carried state, no dropout",
               ["--mode", "stream", "--dropout", "0"]),
    "default": ("carried state, input dropout 0.05 (the default)", []),
    "large": ("--preset large", ["--preset", "large"]),
}


def describe(run: Path) -> str:
    """The recipe's settings that differ between recipes, from its config.json."""
    s = json.loads((run / "config.json").read_text())["settings"]
    parts = [s["mode"], f"{s['layers']}x{s['units']}", f"batch {s['batch_size']}",
             f"seq {s['seq_len']}", f"{s['epochs']} epochs",
             f"Adam {s['learning_rate']:g}"
             + (f" decayed to {s['lr_final']:g}x" if s["lr_decay"] else "")]
    if s["dropout"]:
        parts.append(f"dropout {s['dropout']:g}")
    if s.get("weight_drop"):
        parts.append(f"weight drop {s['weight_drop']:g}")
    if s["samples"]:
        parts.append(f"first {s['samples']:,} windows")
    if s["mode"] == "windows" and not s["shuffle"]:
        parts.append("in order")
    return ", ".join(parts)


def run_recipe(name: str, out: Path) -> tuple[str, dict]:
    """Train one recipe in `out`, evaluate it, and return its table row and
    its numbers (`seconds`, `stream_nats`)."""
    out.mkdir(parents=True, exist_ok=True)
    run = out / name
    flags = RECIPES[name][1]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "charstream.train", *flags, "--out", str(run),
                    "--sample-length", "0"], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    scores = json.loads(subprocess.run(
        [sys.executable, "-m", "charstream.generate", str(run), "--evaluate",
         "--backend", "native"], check=True, capture_output=True, text=True).stdout)
    summary = json.loads((run / "summary.json").read_text())
    nats = lambda key: f"{scores[key]:.3f} nats = {scores[key] / math.log(2):.3f} bits"
    row = (f"| `{name}` | {describe(run)} | {summary['seconds']:.0f} s ({wall:.0f} s in all) "
           f"| {summary['train_loss']:.3f} | {nats('window_nats')} | {nats('stream_nats')} |")
    return row, {"seconds": summary["seconds"], "stream_nats": scores["stream_nats"]}


def spread(name: str, runs: list[dict]) -> str:
    """One line on `runs` of one recipe: training times and whether the
    held-out losses are one and the same (the same seed, the same model)."""
    times = sorted(r["seconds"] for r in runs)
    losses = sorted({r["stream_nats"] for r in runs})
    same = (f"the same held-out loss in every run ({losses[0]:.4f} nats)" if len(losses) == 1
            else f"held-out losses {losses[0]:.4f} to {losses[-1]:.4f} nats")
    return (f"{name}: {len(runs)} runs, training {times[0]:.0f} s to {times[-1]:.0f} s "
            f"(median {times[len(times) // 2]:.0f} s); {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--out", type=Path, default=None,
                        help="keep the run directories here (default: a temporary folder)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="train each recipe N times (fresh run directories), then print "
                             "the spread of their training times and held-out losses")
    parser.add_argument("--list", action="store_true", help="print the recipes' flags and exit")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat: expected a positive integer, got {args.repeat}")
    if args.list:
        for name, (what, flags) in RECIPES.items():
            print(f"{name:9} {what}: python -m charstream.train {' '.join(flags)}")
        return
    if not os.environ.get("CHARSTREAM_DATA"):
        print("note: $CHARSTREAM_DATA is not set; the corpus is tiny Shakespeare, "
              "downloaded once", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        print("| recipe | settings | training time | train loss | held-out, windowed "
              "| held-out, one stream |")
        print("|---|---|---|---|---|---|")
        spreads = []
        for name in args.only:
            runs = []
            for k in range(args.repeat):
                row, numbers = run_recipe(name, out / f"{k + 1}" if args.repeat > 1 else out)
                print(row, flush=True)
                runs.append(numbers)
            spreads.append(spread(name, runs))
        if args.repeat > 1:
            print("\n".join(spreads))


if __name__ == "__main__":
    main()
