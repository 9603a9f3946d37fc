"""Turn a pytest-benchmark JSON file into the README's performance table.

    python benchmarks/report.py benchmark.json > table.md

Each row: group, size, contender, median time, speed relative to the group's
reference contender (the best plain alternative; >1 means faster), and the rate
the benchmark recorded (GB/s, chars/s, ...).
"""
import json
import sys

# The contender each group is compared with.
REFERENCES = {
    "python-translate", "numpy-eye-sliding-window", "numpy-take-out", "numpy-fancy-index",
    "in-memory-model.fit", "tutorial_repredict_window", "keras", "plain-fit",
}


def _contender(bench):
    params = bench.get("params") or {}
    name = (params.get("name") or params.get("backend")
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


def table(doc) -> str:
    rows = []
    refs = {}
    for bench in doc["benchmarks"]:
        name, size = _contender(bench)
        if name in REFERENCES:
            refs[(bench["group"], size)] = bench
    for bench in doc["benchmarks"]:
        name, size = _contender(bench)
        group, median = bench["group"], bench["stats"]["median"]
        ref = refs.get((group, size)) or refs.get((group, ""))
        ratio = f"{_speedup(bench, ref):.2f}x" if ref else ""
        rate = ", ".join(f"{v:,.6g} {k}" for k, v in bench.get("extra_info", {}).items())
        rows.append((group, size, name, _time(median), ratio, rate))
    rows.sort(key=lambda r: (r[0], r[1]))  # stable: contenders keep the suite's order
    info = doc.get("machine_info", {})
    cpu = info.get("cpu", {}).get("brand_raw", "unknown CPU")
    out = [f"Machine: {cpu}, {info.get('cpu', {}).get('count', '?')} cores, "
           f"Python {info.get('python_version', '?')}; {doc.get('datetime', '')}", "",
           "| group | size | contender | median | vs reference | rate |",
           "|---|---|---|---|---|---|"]
    out += [f"| {' | '.join(r)} |" for r in rows]
    return "\n".join(out)


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as fh:
        print(table(json.load(fh)))
