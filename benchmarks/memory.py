"""Peak memory of `python -m charstream.train --samples all`, by corpus size.

    python benchmarks/memory.py [--scale 20] [--seconds 60]

Trains on tiny Shakespeare and on a corpus `--scale` times larger (made here by
repetition in a temporary folder, never committed), each under `/usr/bin/time -v`,
lets each run train for `--seconds` after its first epoch starts (memory is
allocated up front: the id array, the permutation, TensorFlow), then stops it with
SIGINT and reports the peak resident set. The tutorial's pipeline would hold the
whole one-hot tensor: `windows * 17 * 36` bytes.
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import _corpus_text  # noqa: E402


def peak_rss(corpus: Path, out: Path, seconds: float) -> tuple[int, str]:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "charstream.train", "--data", str(corpus),
           "--samples", "all", "--epochs", "1", "--out", str(out), "--sample-length", "0"]
    # SIGINT at its default in the child (a background shell leaves it ignored), so
    # training stops on it; GNU time itself ignores SIGINT and reports.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:  # wait for training to start
        if line.startswith("training on"):
            break
    time.sleep(seconds)
    os.killpg(proc.pid, signal.SIGINT)  # GNU time ignores it; python stops cleanly
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    return int(match.group(1)) * 1024, line.strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    text = _corpus_text()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("| corpus | characters | peak RSS | tutorial one-hot tensor |")
        print("|---|---|---|---|")
        for scale in (1, args.scale):
            corpus = tmp / f"corpus-{scale}x.txt"
            corpus.write_text(text * scale, encoding="utf-8")
            rss, started = peak_rss(corpus, tmp / f"run-{scale}x", args.seconds)
            chars = len(text) * scale
            onehot = (chars - 16) * 17 * 36
            print(f"| tiny Shakespeare x{scale} | {chars:,} | {rss / 2**20:,.0f} MiB "
                  f"| {onehot / 2**20:,.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()
