"""Peak memory of a whole training run, by corpus size.

    python benchmarks/memory.py [--scale 20] [--max-time 60s]   # about 5 minutes

Trains the default recipe on tiny Shakespeare and on a corpus `--scale` times
larger (made here by repetition in a temporary folder, never committed), each
as one `python -m charstream.train --max-time T` under `/usr/bin/time -v`, and
reports the process's peak resident set. The budget only shortens training: the
run still does everything a run does (reading and encoding the corpus, every
step of training up to the budget, validation after each epoch and at the end
over the whole held-out tail, checkpoints, model.keras, stream.npz, summary,
history plot), so the peak covers all of it but the final text sample. The
tutorial's pipeline would hold the whole one-hot tensor: `windows * 17 * 36` bytes.
"""
import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import corpus_text  # noqa: E402


def peak_rss(corpus: Path, out: Path, budget: str) -> tuple[int, dict]:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "charstream.train", "--data", str(corpus),
           "--max-time", budget, "--epochs", "100", "--out", str(out), "--sample-length", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    import json

    return int(match.group(1)) * 1024, json.loads((out / "summary.json").read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=20)
    parser.add_argument("--max-time", default="60s")
    args = parser.parse_args()
    text = corpus_text()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("| corpus | characters | peak RSS, whole run | trained | the tutorial's one-hot tensor |")
        print("|---|---|---|---|---|")
        for scale in (1, args.scale):
            corpus = tmp / f"corpus-{scale}x.txt"
            corpus.write_text(text * scale, encoding="utf-8")
            rss, summary = peak_rss(corpus, tmp / f"run-{scale}x", args.max_time)
            chars = len(text) * scale
            onehot = (chars - 16) * 17 * 36
            print(f"| tiny Shakespeare x{scale} | {chars:,} | {rss / 2**20:,.0f} MiB "
                  f"| {summary['epochs']} epoch(s) in {summary['seconds']:.0f} s, held-out "
                  f"{summary['val_targets']:,} characters | {onehot / 2**20:,.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()
