"""Turn a pytest-benchmark JSON file into the performance page's table.

    pytest benchmarks --benchmark-only --benchmark-json=benchmark.json
    python benchmarks/report.py benchmark.json                           # print it
    python benchmarks/report.py benchmark.json --write docs/performance.md

`--write` replaces what lies between the page's `<!-- report:start -->` and
`<!-- report:end -->` lines, through a temporary file renamed into place.

The first line names the machine and the run. Each row: group, size, contender,
median time, speed relative to the group's reference contender (the plain or
previous way; >1 means faster), and what the benchmark recorded beside the time
(a rate such as GB/s or chars/s, a loss, a peak RSS).
"""
import argparse
import json
import os
import tempfile
from pathlib import Path

START, END = "<!-- report:start -->", "<!-- report:end -->"

# The contender each group is compared with.
REFERENCE = {
    "batches: build one shuffled batch": "numpy-fancy-index",
    "batches: training throughput (400 steps of 128)": "in-memory-model.fit",
    "onehot: fresh output": "numpy-eye-sliding-window",
    "onehot: preallocated output": "numpy-take-out",
    "reduce: encode_reduced -> uint8 ids": "python-translate",
    "reduce: reduce_text -> str": "python-translate",
    "stream: 64 batched streams, characters/s in total": "keras",
    "stream: one stream, characters/s": "tutorial_repredict_window",
    "stream: process start to first character": "keras",
    "train: carried-state steps (32 streams x 16, LSTM 128)": "plain-fit",
}


def _contender(bench):
    info = bench.get("extra_info", {})
    params = bench.get("params") or {}
    name = (info.get("contender") or params.get("name") or params.get("backend")
            or bench["name"].split("[")[0].removeprefix("test_"))
    size = params.get("size", params.get("batch", ""))
    return name, str(size)


def _time(seconds):
    for unit, scale in (("s", 1), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def _speedup(bench, ref) -> float:
    """How many times faster than the reference: by the rate both recorded (their
    rounds may do different amounts of work), else by median time."""
    for unit, value in bench.get("extra_info", {}).items():
        if unit.endswith("/s") and ref.get("extra_info", {}).get(unit):
            return value / ref["extra_info"][unit]
    return ref["stats"]["median"] / bench["stats"]["median"]


def _recorded(bench) -> str:
    info = {k: v for k, v in bench.get("extra_info", {}).items() if k != "contender"}
    return ", ".join(f"{v:,.6g} {k}" if k.endswith("/s") or "MiB" in k else f"{k} {v:,.6g}"
                     for k, v in info.items())


def table(doc) -> str:
    refs = {}
    for bench in doc["benchmarks"]:
        name, size = _contender(bench)
        if REFERENCE.get(bench["group"]) == name:
            refs[(bench["group"], size)] = bench
    rows = []
    for bench in doc["benchmarks"]:
        name, size = _contender(bench)
        group = bench["group"]
        ref = refs.get((group, size)) or refs.get((group, ""))
        ratio = f"{_speedup(bench, ref):.2f}x" if ref else ""
        rows.append((group, size, name, _time(bench["stats"]["median"]), ratio, _recorded(bench)))
    rows.sort(key=lambda r: (r[0], r[1]))  # stable: contenders keep the suite's order
    info = doc.get("machine_info", {})
    cpu = info.get("cpu", {})
    out = [f"Machine: {cpu.get('brand_raw', 'unknown CPU')}, {cpu.get('count', '?')} cores, "
           f"Python {info.get('python_version', '?')}; one run, {doc.get('datetime', '')[:19]} UTC",
           "", "| group | size | contender | median | vs reference | recorded |",
           "|---|---|---|---|---|---|"]
    out += [f"| {' | '.join(r)} |" for r in rows]
    return "\n".join(out)


def write_into(page: Path, text: str) -> None:
    """Put `text` between the page's markers, atomically."""
    doc = page.read_text(encoding="utf-8")
    if START not in doc or END not in doc:
        raise SystemExit(f"{page}: no {START} ... {END} lines to write between")
    head, rest = doc.split(START, 1)
    tail = rest.split(END, 1)[1]
    fd, tmp = tempfile.mkstemp(dir=page.parent, prefix=f".{page.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(f"{head}{START}\n{text}\n{END}{tail}")
    os.replace(tmp, page)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="pytest-benchmark's --benchmark-json file")
    parser.add_argument("--write", type=Path, metavar="PAGE",
                        help="write the table into PAGE between its report markers")
    args = parser.parse_args()
    text = table(json.loads(args.json.read_text(encoding="utf-8")))
    if args.write:
        write_into(args.write, text)
    else:
        print(text)


if __name__ == "__main__":
    main()
